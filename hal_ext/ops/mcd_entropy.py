"""hal_ext::mcd_entropy: -mean_k log(mean_i p[i, k] + 1e-6), fused forward (which also returns the
column means) and a backward that writes one gradient row, which autograd broadcasts over the batch."""
import torch

from .. import _native
from .._validation import check_float_tensor, check_min_dim, result_dtype
from ..reference import mcd as reference

_ACC_DTYPE = {torch.float16: torch.float32, torch.bfloat16: torch.float32}

if _native.native_available():

    @torch.library.register_fake("hal_ext::mcd_entropy")
    def _(predictions, out_dtype=None):
        acc = _ACC_DTYPE.get(predictions.dtype, predictions.dtype)
        return (predictions.new_empty((), dtype=result_dtype(out_dtype, predictions.dtype)),
                predictions.new_empty(predictions.shape[1:], dtype=acc))

    @torch.library.register_fake("hal_ext::_mcd_entropy_backward")
    def _(grad, column_means, batch_size, out_dtype=None):
        return column_means.new_empty(column_means.shape, dtype=grad.dtype if out_dtype is None else out_dtype)

    _OP = torch.ops.hal_ext.mcd_entropy.default
else:
    _OP = None


def mcd_entropy(predictions: torch.Tensor) -> torch.Tensor:
    direct = _native.direct_calls()
    if direct is not None:
        loss = direct.mcd_entropy(predictions)
        if loss is not None:  # the common call; the rest is validated and routed below
            return loss
    check_float_tensor(predictions, "predictions")
    check_min_dim(predictions, "predictions", 1, "(N, *)")
    if _native.native_route():
        return _OP(predictions)[0]
    return reference.entropy(predictions)
