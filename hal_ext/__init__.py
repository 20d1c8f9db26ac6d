"""hal_ext: fused C++/CUDA kernels for tllib's hypothesis-adversarial domain-adaptation losses.

Switch ``from tllib.alignment.mdd import ...`` to ``from hal_ext.alignment.mdd import ...`` (likewise
``mcd``, ``regda``, ``modules.grl``, ``modules.gl``, ``keypoint_detection``) and get the same numbers
from fused kernels. ``build_info()`` tells whether the native library is in use.
"""
from ._native import build_info, native_available
from . import ops  # registers every op's fake kernel

__version__ = "0.1.0"
__all__ = ["build_info", "native_available", "__version__"]
