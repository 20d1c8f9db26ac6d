"""Input checks and routing shared by the fused MDD entry points (classification and regression).

`route` validates every argument (TypeError/ValueError naming it) and says whether the fused operator
applies: four logits of one dtype and shape, weights that are constant tensors of that dtype which
broadcast to the per-sample loss shape, a plain number as margin. Anything else that tllib accepts
takes the generic composition (same values, same broadcasting, gradients to the weights too)."""
import numbers

import torch

from .._validation import SUPPORTED_DTYPES, check_float_tensor, check_paired

_NAMES = ("y_s", "y_s_adv", "y_t", "y_t_adv")


def _sample_shape(y, classification):
    return (y.shape[0],) + tuple(y.shape[2:]) if classification else tuple(y.shape)


def _check_weight(w, name, like, loss_shape):
    """Returns True when `w` can go to the fused operator."""
    if w is None:
        return True
    if isinstance(w, numbers.Real) and not isinstance(w, bool):
        return False
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(w).__name__}")
    if w.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name} must be a float16, bfloat16, float32 or float64 tensor, got {w.dtype}")
    if w.device != like.device:
        raise ValueError(f"{name} must be on the device of y_s ({like.device}), got {w.device}")
    try:
        shape = torch.broadcast_shapes(tuple(w.shape), loss_shape)
    except RuntimeError:
        raise ValueError(f"{name} must broadcast to the per-sample loss shape {loss_shape}, "
                         f"got shape {tuple(w.shape)}") from None
    return tuple(shape) == loss_shape and w.dtype == like.dtype and not (w.requires_grad and torch.is_grad_enabled())


def route(y_s, y_s_adv, y_t, y_t_adv, w_s, w_t, margin, classification):
    """Validates the MDD arguments; returns True when the fused operator applies."""
    for t, name in zip((y_s, y_s_adv, y_t, y_t_adv), _NAMES):
        check_float_tensor(t, name)
    if classification:
        for t, name in ((y_s, "y_s"), (y_t, "y_t")):
            if t.dim() < 2:
                raise ValueError(f"{name} must have at least 2 dimensions (N, C) or (N, C, d1, ..., dk), "
                                 f"got shape {tuple(t.shape)}")
            if t.shape[1] == 0:
                raise ValueError(f"{name} must have at least one class (dimension 1), got shape {tuple(t.shape)}")
    check_paired(y_s, "y_s", y_s_adv, "y_s_adv")
    check_paired(y_t, "y_t", y_t_adv, "y_t_adv")
    if y_t.device != y_s.device:
        raise ValueError(f"y_t must be on the device of y_s ({y_s.device}), got {y_t.device}")
    source_shape = _sample_shape(y_s, classification)
    target_shape = _sample_shape(y_t, classification)
    try:
        loss_shape = tuple(torch.broadcast_shapes(source_shape, target_shape))
    except RuntimeError:
        raise ValueError(f"y_t must give per-sample losses of the shape of y_s's {source_shape}, "
                         f"got {target_shape} (y_t shape {tuple(y_t.shape)})") from None
    fused = _check_weight(w_s, "w_s", y_s_adv, loss_shape)
    fused = _check_weight(w_t, "w_t", y_s_adv, loss_shape) and fused
    if not isinstance(margin, numbers.Real) or isinstance(margin, bool):
        if not isinstance(margin, torch.Tensor):
            raise TypeError(f"margin must be a number, got {type(margin).__name__}")
        fused = False
    dtype = y_s.dtype
    return (fused and y_s.shape == y_t.shape
            and y_s_adv.dtype == dtype and y_t.dtype == dtype and y_t_adv.dtype == dtype)


def check_devices(*tensors):
    """The fake kernels' device check (the native kernels check devices themselves)."""
    for t, name in zip(tensors[1:], _NAMES[1:]):
        if t.device != tensors[0].device:
            raise ValueError(f"{name} must be on the device of y_s ({tensors[0].device}), got {t.device}")
