"""Loads the compiled library (hal_ext/_C*.so) that registers the ``torch.ops.hal_ext`` operators.

If it is missing, or was built against another torch/CUDA than the one running, hal_ext still
imports: it warns once and every function uses the pure-torch reference in ``hal_ext.reference``.
Set ``HAL_EXT_DISABLE_NATIVE=1`` to force the reference path.
"""
import importlib.util
import os
import warnings

import torch

_LOADED = False
_REASON = None
_CONFIG = None


def _load():
    try:
        from . import _build_config as config
    except ImportError:
        return None, "the native library was never built (run `make build` or `pip install --no-build-isolation .`)"
    if os.environ.get("HAL_EXT_DISABLE_NATIVE", "0") == "1":
        return config, "disabled by HAL_EXT_DISABLE_NATIVE=1"
    if config.TORCH_VERSION != torch.__version__:
        return config, f"built against torch {config.TORCH_VERSION} but torch {torch.__version__} is running; rebuild hal_ext"
    if config.WITH_CUDA and config.CUDA_VERSION != torch.version.cuda:
        return config, f"built against CUDA {config.CUDA_VERSION} but torch uses CUDA {torch.version.cuda}; rebuild hal_ext"
    spec = importlib.util.find_spec("hal_ext._C")
    if spec is None or spec.origin is None:
        return config, "hal_ext/_C library file not found (the build did not complete)"
    try:
        torch.ops.load_library(spec.origin)
    except OSError as error:
        return config, f"loading {spec.origin} failed: {error}"
    return config, None


_CONFIG, _REASON = _load()
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
    """How hal_ext was built and whether its native kernels are in use.

    Returns a dict with ``compiled`` (native library loaded), ``cuda`` (CUDA kernels compiled in and
    registered), ``cuda_arch_list``, ``torch`` (the version built against), ``torch_running``,
    ``cuda_version`` and, when not compiled, ``reason``.

    >>> import hal_ext
    >>> hal_ext.build_info()["compiled"]
    True
    """
    info = {
        "compiled": _LOADED,
        "cuda": _has_cuda_kernels(),
        "cuda_arch_list": getattr(_CONFIG, "CUDA_ARCH_LIST", None),
        "torch": getattr(_CONFIG, "TORCH_VERSION", None),
        "torch_running": torch.__version__,
        "cuda_version": getattr(_CONFIG, "CUDA_VERSION", None),
    }
    if not _LOADED:
        info["reason"] = _REASON
    return info
