"""hal_ext::classification_mdd: the classification margin disparity discrepancy as one fused row-wise
operator (first argmax of y, logsumexp/softmax of y_adv, both terms, margin, weights, reduction) and
one fused backward that writes the gradients of y_s_adv and y_t_adv."""
import torch

from .. import _native
from .._validation import reduction_code, result_dtype
from ..reference import mdd as reference
from . import _mdd_routing

if _native.native_available():

    @torch.library.register_fake("hal_ext::classification_mdd")
    def _(y_s, y_s_adv, y_t, y_t_adv, w_s, w_t, margin, reduction, out_dtype=None):
        _mdd_routing.check_devices(y_s, y_s_adv, y_t, y_t_adv)
        sample = (y_s.shape[0],) + tuple(y_s.shape[2:])
        rows = 1
        for s in sample:
            rows = rows * s
        acc = torch.float32 if y_s_adv.dtype in (torch.float16, torch.bfloat16) else y_s_adv.dtype
        loss = y_s_adv.new_empty(sample if reduction == 0 else (), dtype=result_dtype(out_dtype, y_s_adv.dtype))
        return loss, y_s_adv.new_empty((8, rows), dtype=acc), y_s_adv.new_empty((2, rows), dtype=torch.int64)

    @torch.library.register_fake("hal_ext::_classification_mdd_with_grad")
    def _(y_s, y_s_adv, y_t, y_t_adv, w_s, w_t, margin, reduction):
        loss, stats, argmax = torch.ops.hal_ext.classification_mdd(y_s, y_s_adv, y_t, y_t_adv, w_s, w_t, margin,
                                                                    reduction)
        return loss, stats, argmax, y_s_adv.new_empty(y_s_adv.shape), y_t_adv.new_empty(y_t_adv.shape)

    @torch.library.register_fake("hal_ext::_classification_mdd_backward")
    def _(grad, y_s_adv, y_t_adv, stats, argmax, reduction):
        return y_s_adv.new_empty(y_s_adv.shape), y_t_adv.new_empty(y_t_adv.shape)

    _OP = torch.ops.hal_ext.classification_mdd.default
else:
    _OP = None


def classification_mdd(y_s, y_s_adv, y_t, y_t_adv, w_s=None, w_t=None, margin=4., reduction='mean'):
    """``-margin * CE(y_s_adv, argmax y_s) * w_s + shift_log(1 - softmax(y_t_adv)[argmax y_t]) * w_t``,
    reduced. See :class:`hal_ext.alignment.mdd.ClassificationMarginDisparityDiscrepancy`."""
    code = reduction_code(reduction)
    direct = _native.direct_calls()
    if direct is not None and w_s is None and w_t is None:
        loss = direct.classification_mdd(y_s, y_s_adv, y_t, y_t_adv, margin, code)
        if loss is not None:  # the common call; the rest is validated and routed below
            return loss
    fused = _mdd_routing.route(y_s, y_s_adv, y_t, y_t_adv, w_s, w_t, margin, classification=True)
    if fused and _native.native_route():
        return _OP(y_s, y_s_adv, y_t, y_t_adv, w_s, w_t, float(margin), code)[0]
    return reference.classification_mdd(y_s, y_s_adv, y_t, y_t_adv, w_s, w_t, margin, reduction)
