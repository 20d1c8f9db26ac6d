"""hal_ext::classifier_discrepancy: mean(|p1 - p2|) over all elements, fused forward and backward."""
import torch

from .. import _native
from .._validation import check_float_tensor, check_paired, same_dtype
from ..reference import mcd as reference

if _native.native_available():

    @torch.library.register_fake("hal_ext::classifier_discrepancy")
    def _(predictions1, predictions2):
        check_paired(predictions1, "predictions1", predictions2, "predictions2")  # e.g. a CPU and a meta tensor
        return predictions1.new_empty(())

    @torch.library.register_fake("hal_ext::_classifier_discrepancy_backward")
    def _(grad, predictions1, predictions2):
        return predictions1.new_empty(predictions1.shape), predictions2.new_empty(predictions2.shape)

    @torch.library.register_fake("hal_ext::_classifier_discrepancy_with_grad")
    def _(predictions1, predictions2):
        check_paired(predictions1, "predictions1", predictions2, "predictions2")
        return (predictions1.new_empty(()), predictions1.new_empty(predictions1.shape),
                predictions2.new_empty(predictions2.shape))

    _OP = torch.ops.hal_ext.classifier_discrepancy.default
else:
    _OP = None


def classifier_discrepancy(predictions1: torch.Tensor, predictions2: torch.Tensor) -> torch.Tensor:
    direct = _native.direct_calls()
    if direct is not None:
        loss = direct.classifier_discrepancy(predictions1, predictions2)
        if loss is not None:  # the common call; the rest is validated and routed below
            return loss
    check_float_tensor(predictions1, "predictions1")
    check_paired(predictions1, "predictions1", predictions2, "predictions2")
    predictions1, predictions2 = same_dtype(predictions1, predictions2)
    if _native.native_route():
        return _OP(predictions1, predictions2)
    return reference.classifier_discrepancy(predictions1, predictions2)
