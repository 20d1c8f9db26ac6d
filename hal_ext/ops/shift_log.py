"""hal_ext::shift_log: log(min(x + offset, 1)), elementwise, fused forward and backward."""
import torch

from .. import _native
from .._validation import check_float_tensor, result_dtype
from ..reference import mdd as reference

if _native.native_available():

    @torch.library.register_fake("hal_ext::shift_log")
    def _(x, offset, out_dtype=None):
        return x.new_empty(x.shape, dtype=result_dtype(out_dtype, x.dtype))

    @torch.library.register_fake("hal_ext::_shift_log_backward")
    def _(grad, x, offset):
        return x.new_empty(x.shape)


def shift_log(x: torch.Tensor, offset: float = 1e-6) -> torch.Tensor:
    r"""First shift, then take the log, clamped at 0:

    .. math:: y = \log(\min(x + \text{offset}, 1))

    (tllib's docstring says ``max``; its code, and hal_ext, take the minimum.) Used to avoid the
    gradient explosion of :math:`\log(x)` at :math:`x = 0`.

    Args:
        x (torch.Tensor): input tensor, any shape, values expected in [0, 1]
        offset (float, optional): offset size, must be > 0. Default: 1e-6

    Returns:
        A tensor of x's shape and dtype with values in :math:`[\log(\text{offset}), 0]`. Gradient:
        ``g / (x + offset)`` where ``x + offset < 1``, else 0 (0 at the bound itself).

    Example::

        >>> y = shift_log(torch.rand(8, 5))
    """
    check_float_tensor(x, "x")
    if not offset > 0:
        raise ValueError(f"offset must be > 0, got {offset!r}")
    if _native.native_route():
        return torch.ops.hal_ext.shift_log.default(x, float(offset))
    return reference.shift_log(x, offset)
