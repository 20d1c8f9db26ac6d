"""Loads the compiled library (hal_ext/_C*.so) that registers the ``torch.ops.hal_ext`` operators.

What the library was built with is read from the library file itself (setup.py compiles a build
record into it) before the file is loaded. If the library is missing, or was built against another
torch/CUDA than the one running, hal_ext still imports: it warns once and every function uses the
pure-torch reference in ``hal_ext.reference``. Set ``HAL_EXT_DISABLE_NATIVE=1`` to force the
reference path.
"""
import importlib.util
import json
import mmap
import os
import warnings

import torch

# setup.py compiles this prefix and a JSON object into the library (build/temp-*/generated/build_info.cpp).
_BUILD_INFO_MARKER = b"HAL_EXT_BUILD_INFO:"


def _library_path():
    spec = importlib.util.find_spec("hal_ext._C")
    return spec.origin if spec is not None else None


def read_build_info(path):
    """What the library at `path` was built with (the dict setup.py compiled into it), read from the
    file without loading it; None for a library without that record."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        start = data.find(_BUILD_INFO_MARKER)
        if start < 0:
            return None
        start += len(_BUILD_INFO_MARKER)
        return json.loads(data[start:data.find(b"\0", start)])


def _load():
    path = _library_path()
    config = read_build_info(path) if path else None
    if os.environ.get("HAL_EXT_DISABLE_NATIVE", "0") == "1":
        return config, path, "disabled by HAL_EXT_DISABLE_NATIVE=1"
    if path is None:
        return None, None, "the native library was never built (run `make build` or `pip install --no-build-isolation .`)"
    if config is None:
        return None, path, f"{path} has no build record (built by an older setup.py); rebuild hal_ext"
    if config["torch"] != torch.__version__:
        return config, path, f"built against torch {config['torch']} but torch {torch.__version__} is running; rebuild hal_ext"
    if config["cuda"] and config["cuda_version"] != torch.version.cuda:
        return config, path, f"built against CUDA {config['cuda_version']} but torch uses CUDA {torch.version.cuda}; rebuild hal_ext"
    try:
        torch.ops.load_library(path)
    except OSError as error:
        return config, path, f"loading {path} failed: {error}"
    return config, path, None


_CONFIG, _LIBRARY, _REASON = _load()
_LOADED = _REASON is None
if not _LOADED:
    warnings.warn(f"hal_ext: native kernels unavailable ({_REASON}); using the pure-torch reference implementation",
                  RuntimeWarning, stacklevel=2)

_DIRECT = None
if _LOADED:
    # The same library is also a Python module of direct entry points (csrc/python/direct_calls.cpp);
    # a library from before they existed still serves every op through torch.ops.
    try:
        from . import _C as _DIRECT
    except ImportError:
        pass

_is_compiling = torch.compiler.is_compiling
_torch_function_mode_enabled = torch._C._is_torch_function_mode_enabled
_functorch_transforms_active = torch._C._are_functorch_transforms_active


def native_route():
    """Whether the call at hand may use the native operators: the library is loaded and no ``torch.func``
    transform (grad, vjp, jacrev, vmap...) is active. The C++ autograd kernels cannot run under those
    transforms; the pure-torch reference gives them the gradients and batching rules they need.
    (torch.compile, which cannot trace the functorch query, sees the native operators.)"""
    if _is_compiling():
        return _LOADED
    return _LOADED and not _functorch_transforms_active()


def direct_calls():
    """The module of direct entry points of the overhead-bound ops (``hal_ext._C``) when the call at hand
    may use it, else None: the native library must be loaded, torch.compile must not be tracing (it
    needs the ``torch.ops`` route to see the operator), no torch-function mode may be active (the
    ``torch.ops`` route is what honours them) and no ``torch.func`` transform (see `native_route`).
    The entry points themselves take only exact ``torch.Tensor`` arguments (csrc/python/direct_calls.cpp)."""
    if _DIRECT is None or _is_compiling() or _torch_function_mode_enabled() or _functorch_transforms_active():
        return None
    return _DIRECT


def native_available():
    """True when the compiled ``torch.ops.hal_ext`` operators are loaded."""
    return _LOADED


def _has_cuda_kernels():
    if not _LOADED:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key("hal_ext::classifier_discrepancy", "CUDA")


def build_info():
    """How hal_ext's native library was built (read from the library file itself) and whether it is in use.

    Returns a dict with ``compiled`` (native library loaded), ``cuda`` (CUDA kernels registered),
    ``cuda_arch_list``, ``cuda_version``, ``torch`` (the version built against), ``cxx_flags``,
    ``library`` (the file), ``version``, ``torch_running`` and, when not compiled, ``reason``. The
    build fields are None when there is no library, or it has no build record.

    >>> import hal_ext
    >>> hal_ext.build_info()["compiled"]
    True
    """
    built = _CONFIG or {}
    info = {
        "compiled": _LOADED,
        "cuda": _has_cuda_kernels(),
        "cuda_arch_list": built.get("cuda_arch_list"),
        "cuda_version": built.get("cuda_version"),
        "torch": built.get("torch"),
        "torch_running": torch.__version__,
        "cxx_flags": built.get("cxx_flags"),
        "library": _LIBRARY,
        "version": built.get("version"),
    }
    if not _LOADED:
        info["reason"] = _REASON
    return info
