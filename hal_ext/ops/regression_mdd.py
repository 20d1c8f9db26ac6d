"""hal_ext::regression_mdd: the regression margin disparity discrepancy for F.l1_loss and F.mse_loss as
one fused elementwise operator with a deterministic reduction, and one fused backward that writes the
gradients of y_s_adv and y_t_adv. Other loss functions take the generic composition."""
import torch
import torch.nn.functional as F

from .. import _native
from .._validation import reduction_code, result_dtype
from ..reference import mdd as reference
from . import _mdd_routing

# loss_function -> the operator's loss_kind
LOSS_KINDS = {F.l1_loss: 0, F.mse_loss: 1}

if _native.native_available():

    @torch.library.register_fake("hal_ext::regression_mdd")
    def _(y_s, y_s_adv, y_t, y_t_adv, w_s, w_t, margin, loss_kind, reduction, out_dtype=None):
        _mdd_routing.check_devices(y_s, y_s_adv, y_t, y_t_adv)
        return y_s_adv.new_empty(y_s_adv.shape if reduction == 0 else (),
                                 dtype=result_dtype(out_dtype, y_s_adv.dtype))

    @torch.library.register_fake("hal_ext::_regression_mdd_backward")
    def _(grad, y_s, y_s_adv, y_t, y_t_adv, w_s, w_t, margin, loss_kind, reduction):
        return y_s_adv.new_empty(y_s_adv.shape), y_t_adv.new_empty(y_t_adv.shape)

    _OP = torch.ops.hal_ext.regression_mdd.default
else:
    _OP = None


def regression_mdd(y_s, y_s_adv, y_t, y_t_adv, w_s=None, w_t=None, margin=1., loss_function=F.l1_loss,
                   reduction='mean'):
    """``-margin * L(y_s_adv, y_s) * w_s + L(y_t_adv, y_t) * w_t`` elementwise, ``L = loss_function(...,
    reduction='none')``, reduced. See :class:`hal_ext.alignment.mdd.RegressionMarginDisparityDiscrepancy`."""
    code = reduction_code(reduction)
    kind = LOSS_KINDS.get(loss_function)
    direct = _native.direct_calls()
    if direct is not None and kind is not None and w_s is None and w_t is None:
        loss = direct.regression_mdd(y_s, y_s_adv, y_t, y_t_adv, margin, kind, code)
        if loss is not None:  # the common call; the rest is validated and routed below
            return loss
    fused = _mdd_routing.route(y_s, y_s_adv, y_t, y_t_adv, w_s, w_t, margin, classification=False)
    if fused and kind is not None and _native.native_route():
        return _OP(y_s, y_s_adv, y_t, y_t_adv, w_s, w_t, float(margin), kind, code)
    return reference.regression_mdd(y_s, y_s_adv, y_t, y_t_adv, w_s, w_t, margin, loss_function, reduction)
