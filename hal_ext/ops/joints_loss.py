"""hal_ext::joints_mse_loss and hal_ext::joints_kl_loss: tllib's keypoint heatmap losses, one fused
row-wise kernel forward and one backward (gradient to ``output``)."""
import torch

from .. import _native
from .._validation import check_float_tensor, check_paired, result_dtype, same_dtype
from ..reference import keypoint_detection as reference

KEYPOINT_REDUCTIONS = {"none": 0, "mean": 1}

if _native.native_available():

    def _loss_like(output, reduction, out_dtype):
        shape = (output.shape[0], output.shape[1]) if reduction == 0 else ()
        return output.new_empty(shape, dtype=result_dtype(out_dtype, output.dtype))

    def _stats_like(output):
        acc = torch.float64 if output.dtype == torch.float64 else torch.float32
        return output.new_empty((output.shape[0], output.shape[1], 2), dtype=acc)

    @torch.library.register_fake("hal_ext::joints_mse_loss")
    def _(output, target, target_weight, reduction, out_dtype=None):
        return _loss_like(output, reduction, out_dtype)

    @torch.library.register_fake("hal_ext::_joints_mse_loss_backward")
    def _(grad, output, target, target_weight, reduction):
        return output.new_empty(output.shape)

    @torch.library.register_fake("hal_ext::_joints_mse_loss_with_grad")
    def _(output, target, target_weight, reduction, out_dtype=None):
        return _loss_like(output, reduction, out_dtype), output.new_empty(output.shape)

    @torch.library.register_fake("hal_ext::joints_kl_loss")
    def _(output, target, target_weight, reduction, epsilon, out_dtype=None):
        return _loss_like(output, reduction, out_dtype)

    @torch.library.register_fake("hal_ext::_joints_kl_loss_forward")
    def _(output, target, target_weight, reduction, epsilon, out_dtype=None):
        return _loss_like(output, reduction, out_dtype), _stats_like(output)

    @torch.library.register_fake("hal_ext::_joints_kl_loss_backward")
    def _(grad, output, target, target_weight, stats, reduction, epsilon):
        return output.new_empty(output.shape)

    @torch.library.register_fake("hal_ext::_joints_kl_loss_with_grad")
    def _(output, target, target_weight, reduction, epsilon, out_dtype=None):
        return _loss_like(output, reduction, out_dtype), output.new_empty(output.shape)


def keypoint_reduction_code(reduction):
    """'none' | 'mean' -> the operators' integer (tllib's keypoint losses have no 'sum': it returns None)."""
    try:
        return KEYPOINT_REDUCTIONS[reduction]
    except (KeyError, TypeError):
        raise ValueError(f"reduction must be 'none' or 'mean', got {reduction!r}") from None


def check_inputs(output, target, target_weight):
    """Raises on what tllib would crash on or silently broadcast; returns (output, target, target_weight)
    in their promoted dtype."""
    check_float_tensor(output, "output")
    if output.dim() != 4:
        raise ValueError(f"output must have 4 dimensions (B, K, H, W), got shape {tuple(output.shape)}")
    check_paired(output, "output", target, "target")
    if target_weight is not None:
        check_float_tensor(target_weight, "target_weight")
        if target_weight.device != output.device:
            raise ValueError(f"target_weight must be on the device of output ({output.device}), "
                             f"got {target_weight.device}")
        B, K = output.shape[0], output.shape[1]
        if target_weight.numel() != B * K:
            raise ValueError(f"target_weight must have shape (B, K) = ({B}, {K}), got shape "
                             f"{tuple(target_weight.shape)}")
        # tllib multiplies by the weight, so the loss has the promoted dtype of all three.
        return same_dtype(output, target, target_weight)
    return (*same_dtype(output, target), None)


def _fused(output, target, target_weight):
    """The fused ops give a gradient to `output` only; a target or weight that needs one goes to the
    reference composition (tllib's gradients for them)."""
    if not _native.native_route():
        return False
    if torch.is_grad_enabled() and (target.requires_grad
                                    or (target_weight is not None and target_weight.requires_grad)):
        return False
    return True


def joints_mse_loss(output, target, target_weight=None, reduction="mean"):
    code = keypoint_reduction_code(reduction)
    direct = _native.direct_calls()
    if direct is not None:
        loss = direct.joints_mse_loss(output, target, target_weight, code)
        if loss is not None:  # the common call; the rest is validated and routed below
            return loss
    output, target, target_weight = check_inputs(output, target, target_weight)
    if _fused(output, target, target_weight):
        return torch.ops.hal_ext.joints_mse_loss(output, target, target_weight, code)
    return reference.joints_mse_loss(output, target, target_weight, reduction)


def joints_kl_loss(output, target, target_weight=None, reduction="mean", epsilon=0.0):
    code = keypoint_reduction_code(reduction)
    direct = _native.direct_calls()
    if direct is not None:
        loss = direct.joints_kl_loss(output, target, target_weight, code, epsilon)
        if loss is not None:  # the common call; the rest is validated and routed below
            return kl_per_sample(loss) if code == 0 else loss
    output, target, target_weight = check_inputs(output, target, target_weight)
    if _fused(output, target, target_weight):
        loss = torch.ops.hal_ext.joints_kl_loss(output, target, target_weight, code, float(epsilon))
        return kl_per_sample(loss) if code == 0 else loss
    return reference.joints_kl_loss(output, target, target_weight, reduction, epsilon)


def kl_per_sample(per_keypoint):
    """JointsKLLoss's 'none': the operators return the (B, K) per-keypoint losses; tllib's code returns their
    mean over the keypoints, (B,) (its docstring says (B, K); the code is what users get)."""
    return per_keypoint.mean(dim=-1)
