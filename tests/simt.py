"""The `simt` device of the tests: hal_ext's CUDA launchers, compiled for the SIMT emulator
(scripts/build_simt.py), called on CPU tensors as torch.ops.hal_ext_simt.<op> with the schemas of
torch.ops.hal_ext.<op>. Built on first use (a few minutes the first time, then only what changed).

HAL_EXT_SIMT_VARIANT=asan|tsan selects a sanitizer build (make test-simt-sanitize, which also preloads
the sanitizer runtime); HAL_EXT_SIMT_LIB names a prebuilt library (scripts/simt_mutants.py)."""
import contextlib
import importlib.util
import os
import pathlib

import torch

import hal_ext  # noqa: F401  (defines torch.ops.hal_ext, whose schemas the emulated ops reuse)

ROOT = pathlib.Path(__file__).resolve().parent.parent
_state = {}


def _build_script():
    spec = importlib.util.spec_from_file_location("build_simt", ROOT / "scripts" / "build_simt.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load():
    """Builds and loads the emulated kernels once per process; returns torch.ops.hal_ext_simt."""
    if "ops" in _state:
        return _state["ops"]
    lib = os.environ.get("HAL_EXT_SIMT_LIB")
    if not lib:
        lib = _build_script().build(os.environ.get("HAL_EXT_SIMT_VARIANT", "plain"), quiet=True)
    torch.ops.load_library(str(lib))
    names = sorted(r.split("::", 1)[1] for r in torch._C._dispatch_get_registrations_for_dispatch_key("CPU")
                   if r.startswith("hal_ext_simt::"))
    definitions = torch.library.Library("hal_ext_simt", "DEF")
    for name in names:
        schema = str(getattr(torch.ops.hal_ext, name).default._schema)
        definitions.define(schema.split("::", 1)[1])
    _state["library"] = definitions  # keeps the definitions alive
    _state["ops"] = torch.ops.hal_ext_simt
    return _state["ops"]


def launch_count():
    return torch.ops.hal_simt.launch_count()


@contextlib.contextmanager
def launches(expected, what):
    """Asserts that the block makes exactly `expected` kernel launches."""
    before = launch_count()
    yield
    made = launch_count() - before
    assert made == expected, f"{what}: {made} kernel launches, expected {expected}"


DEFAULT_LIMITS = dict(max_grid_x=2**31 - 1, max_grid_yz=65535, max_dynamic_shared=48 * 1024,
                      max_dynamic_shared_optin=227 * 1024, multiprocessors=132)


@contextlib.contextmanager
def device_limits(**overrides):
    """Runs the block on an emulated device with smaller limits (grid size, shared memory, SMs), so
    the paths that huge shapes take on a GPU run with small shapes."""
    torch.ops.hal_simt.set_limits(**{**DEFAULT_LIMITS, **overrides})
    try:
        yield
    finally:
        torch.ops.hal_simt.reset_limits()
