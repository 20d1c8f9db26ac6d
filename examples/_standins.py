"""TEMPORARY pure-torch stand-ins (tllib semantics, SPEC.md) for the keypoint losses, which have not
landed on main yet (hal_ext.keypoint_detection, hal_ext.reference.keypoint_detection). Delete once
main has them; _losses.py falls back here only on ImportError."""
import torch.nn as nn
import torch.nn.functional as F


class JointsKLLoss(nn.Module):
    def __init__(self, reduction="mean", epsilon=0.):
        super().__init__()
        self.reduction, self.epsilon = reduction, epsilon

    def forward(self, output, target, target_weight=None):
        B, K = output.shape[:2]
        q = output.reshape(B, K, -1).log_softmax(-1)
        t = target.reshape(B, K, -1) + self.epsilon
        t = t / t.sum(-1, keepdim=True)
        loss = F.kl_div(q, t, reduction="none").sum(-1)
        if target_weight is not None:
            loss = loss * target_weight.view(B, K)
        return loss.mean() if self.reduction == "mean" else loss


class JointsMSELoss(nn.Module):
    def __init__(self, reduction="mean"):
        super().__init__()
        self.reduction = reduction

    def forward(self, output, target, target_weight=None):
        B, K = output.shape[:2]
        loss = 0.5 * (output.reshape(B, K, -1) - target.reshape(B, K, -1)) ** 2
        if target_weight is not None:
            loss = loss * target_weight.view(B, K, 1)
        return loss.mean() if self.reduction == "mean" else loss.mean(-1)
