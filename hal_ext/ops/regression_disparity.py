"""hal_ext::regression_disparity: RegDA's RegressionDisparity with hal_ext's own pseudo-label generator
and keypoint loss, fused: the peaks of y are found and each (b, k) row's loss against y_adv is computed
from them, without writing the B*K*H*W pseudo-label maps; the backward writes only grad_y_adv."""
import torch

from .. import _native
from .._validation import check_float_tensor, check_paired
from .joints_loss import kl_per_sample

MODES = {"min": 0, "max": 1}
GENERATORS = {"truncated": 0, "fast": 1}
CRITERIA = {"mse": 0, "kl": 1}

if _native.native_available():

    def _acc(t):
        return torch.float64 if t.dtype == torch.float64 else torch.float32

    def _loss_like(y_adv, reduction):
        shape = (y_adv.shape[0], y_adv.shape[1]) if reduction == 0 else ()
        return y_adv.new_empty(shape, dtype=_acc(y_adv))

    @torch.library.register_fake("hal_ext::regression_disparity")
    def _(y, y_adv, weight, mode, sigma, generator, criterion, reduction, epsilon):
        return _loss_like(y_adv, reduction)

    @torch.library.register_fake("hal_ext::_regression_disparity_forward")
    def _(y, y_adv, weight, mode, sigma, generator, criterion, reduction, epsilon):
        B, K = y_adv.shape[0], y_adv.shape[1]
        return (_loss_like(y_adv, reduction), y.new_empty((B, K, 2), dtype=torch.int64),
                y.new_empty((B, K, 2), dtype=_acc(y_adv)))

    @torch.library.register_fake("hal_ext::_regression_disparity_backward")
    def _(grad, y_adv, weight, peaks, stats, mode, sigma, generator, criterion, reduction, epsilon):
        return y_adv.new_empty(y_adv.shape)

    @torch.library.register_fake("hal_ext::_regression_disparity_with_grad")
    def _(y, y_adv, weight, mode, sigma, generator, criterion, reduction, epsilon):
        return _loss_like(y_adv, reduction), y_adv.new_empty(y_adv.shape)


def regression_disparity(y, y_adv, weight, mode, sigma, generator, criterion, reduction, epsilon=0.0):
    """The fused op (native library required). `y` has been checked by the generator's rules; the loss
    has the dtype tllib's composition gives: float32 for float16/bfloat16/float32 inputs, else float64."""
    check_float_tensor(y_adv, "y_adv")
    check_paired(y, "y", y_adv, "y_adv")
    if weight is not None:
        check_float_tensor(weight, "weight")
        if weight.device != y_adv.device:
            raise ValueError(f"weight must be on the device of y_adv ({y_adv.device}), got {weight.device}")
        B, K = y_adv.shape[0], y_adv.shape[1]
        if weight.numel() != B * K:
            raise ValueError(f"weight must have shape (B, K) = ({B}, {K}), got shape {tuple(weight.shape)}")
    if y.requires_grad:
        y = y.detach()  # y's peaks are pseudo labels: no gradient flows into y (nor through the graph it hangs on)
    loss = torch.ops.hal_ext.regression_disparity(y, y_adv, weight, MODES[mode], float(sigma),
                                                  GENERATORS[generator], CRITERIA[criterion], reduction,
                                                  float(epsilon))
    return kl_per_sample(loss) if criterion == "kl" and reduction == 0 else loss


def direct_regression_disparity(y, y_adv, weight, mode, sigma, generator, criterion, reduction, epsilon, shape):
    """The common call of `regression_disparity` through hal_ext._C, which checks it in C++ (exact tensors of
    one dtype and device, 4-d, y of the `shape` (K, H, W) the generator requires, -1: any; a weight that is
    None or needs no gradient; a finite sigma > 0), or None for any other call, which the caller routes."""
    direct = _native.direct_calls()
    if direct is None:
        return None
    loss = direct.regression_disparity(y, y_adv, weight, MODES[mode], sigma, GENERATORS[generator],
                                       CRITERIA[criterion], reduction, epsilon, *shape)
    if loss is None:
        return None
    return kl_per_sample(loss) if criterion == "kl" and reduction == 0 else loss
