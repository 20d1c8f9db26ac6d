"""Keypoint losses, as tllib.vision.models.keypoint_detection.loss computes them (SPEC "Keypoint
losses"), in the dtype of the inputs.

``JointsKLLoss`` with ``reduction='none'`` returns what tllib's code returns: the per-keypoint losses
averaged over K, ``(B,)`` (tllib's docstring says ``(B, K)``); ``JointsMSELoss``'s ``'none'`` is ``(B, K)``.
"""
import torch
import torch.nn.functional as F


def _rows(t):
    # (B, K, H*W); flatten(2) also works for an empty batch, where tllib's reshape(B, K, -1) fails.
    return t.flatten(2)


def joints_mse_loss(output, target, target_weight=None, reduction="mean"):
    B, K = output.shape[0], output.shape[1]
    # tllib's nn.MSELoss(reduction='none') * 0.5 (float32 under torch.autocast, as tllib's), on inputs
    # of one dtype (torch 2.11's mse_loss backward fails on mixed dtypes)
    dtype = torch.promote_types(output.dtype, target.dtype)
    loss = F.mse_loss(_rows(output).to(dtype), _rows(target).to(dtype), reduction='none') * 0.5
    if target_weight is not None:
        loss = loss * target_weight.reshape(B, K, 1)
    if reduction == "mean":
        return loss.mean()
    if reduction == "none":
        return loss.mean(dim=-1)
    raise ValueError(f"reduction must be 'none' or 'mean', got {reduction!r}")


def joints_kl_loss(output, target, target_weight=None, reduction="mean", epsilon=0.0):
    B, K = output.shape[0], output.shape[1]
    log_q = F.log_softmax(_rows(output), dim=-1)
    t = _rows(target) + epsilon
    t = t / t.sum(dim=-1, keepdim=True)
    # tllib's nn.KLDivLoss(reduction='none'): xlogy(t, t) - t * log_q, so 0 log 0 = 0 (float32 under
    # torch.autocast, as tllib's)
    loss = F.kl_div(log_q, t, reduction='none').sum(dim=-1)
    if target_weight is not None:
        loss = loss * target_weight.reshape(B, K)
    if reduction == "mean":
        return loss.mean()
    if reduction == "none":
        return loss.mean(dim=-1)
    raise ValueError(f"reduction must be 'none' or 'mean', got {reduction!r}")
