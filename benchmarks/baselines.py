"""tllib-semantics eager baselines for the ops whose pure-torch reference is not (yet) in
`hal_ext.reference`: the same torch calls tllib makes (so the same kernels and the same cost), written
from SPEC.md. `TableGenerator2d` reproduces the cost profile of tllib's `PseudoLabelGenerator2d`
(a W*H*H*W float32 table, a device -> host copy, NumPy argmax and fancy indexing, a matrix product
for ground_false, a host -> device copy back) without tllib's `np.int` crash on NumPy >= 1.24.
"""
import functools

import numpy as np
import torch
import torch.nn.functional as F

from hal_ext.reference.regda import heatmap_table


def shift_log(x, offset=1e-6):
    return torch.log(torch.clamp(x + offset, max=1.0))


# ---- MDD ---------------------------------------------------------------------------------------

def mdd_combine(source_loss, target_loss, margin, reduction="mean", w_s=None, w_t=None):
    source_loss = -margin * source_loss
    source_loss = source_loss * (torch.ones_like(source_loss) if w_s is None else w_s)
    target_loss = target_loss * (torch.ones_like(target_loss) if w_t is None else w_t)
    loss = source_loss + target_loss
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def classification_mdd(y_s, y_s_adv, y_t, y_t_adv, margin=4.0):
    """tllib ClassificationMarginDisparityDiscrepancy(margin)(y_s, y_s_adv, y_t, y_t_adv)."""
    _, h_s = y_s.max(dim=1)
    source = F.cross_entropy(y_s_adv, h_s, reduction="none")
    _, h_t = y_t.max(dim=1)
    target = -F.nll_loss(shift_log(1.0 - F.softmax(y_t_adv, dim=1)), h_t, reduction="none")
    return mdd_combine(source, target, margin)


def regression_mdd(y_s, y_s_adv, y_t, y_t_adv, margin=1.0, loss_function=F.l1_loss):
    """tllib RegressionMarginDisparityDiscrepancy(margin, loss_function)(y_s, y_s_adv, y_t, y_t_adv)."""
    source = loss_function(y_s_adv, y_s.detach(), reduction="none")
    target = loss_function(y_t_adv, y_t.detach(), reduction="none")
    return mdd_combine(source, target, margin)


# ---- keypoint losses ---------------------------------------------------------------------------

def joints_mse(output, target, target_weight=None, reduction="mean"):
    B, K = output.shape[:2]
    loss = F.mse_loss(output.reshape(B, K, -1), target.reshape(B, K, -1), reduction="none") * 0.5
    if target_weight is not None:
        loss = loss * target_weight.view(B, K, 1)
    return loss.mean() if reduction == "mean" else loss.mean(dim=-1)


def joints_kl(output, target, target_weight=None, reduction="mean", epsilon=0.0):
    B, K = output.shape[:2]
    log_q = F.log_softmax(output.reshape(B, K, -1), dim=-1)
    t = target.reshape(B, K, -1) + epsilon
    t = t / t.sum(dim=-1, keepdim=True)
    loss = F.kl_div(log_q, t, reduction="none").sum(dim=-1)
    if target_weight is not None:
        loss = loss * target_weight.view(B, K)
    return loss.mean() if reduction == "mean" else loss.mean(dim=-1)


# ---- RegDA pseudo labels -----------------------------------------------------------------------

def fast_pseudo_label_2d(heatmap, sigma=2):
    """tllib FastPseudoLabelGenerator2d(sigma)(heatmap)."""
    heatmap = heatmap.detach()
    H, W = heatmap.shape[-2:]
    idx = heatmap.flatten(-2).argmax(dim=-1)
    row, col = idx.div(W, rounding_mode="floor"), idx.remainder(W)
    dr = torch.arange(H, device=heatmap.device) - row.unsqueeze(-1)
    dc = torch.arange(W, device=heatmap.device) - col.unsqueeze(-1)
    g = (dr.square().unsqueeze(-1) + dc.square().unsqueeze(-2)).div(-2 * sigma * sigma).exp()
    ground_truth = F.threshold(g, threshold=1e-2, value=0.0)
    ground_false = (ground_truth.sum(dim=1, keepdim=True) - ground_truth).clamp(0.0, 1.0)
    return ground_truth, ground_false


_gaussian_table = functools.lru_cache(maxsize=4)(heatmap_table)  # (W, H, H, W): 64 MiB at 64x64


class TableGenerator2d:
    """tllib PseudoLabelGenerator2d's algorithm and costs (see the module docstring)."""

    def __init__(self, num_keypoints, height=64, width=64, sigma=2):
        self.heatmaps = _gaussian_table(height, width, sigma)
        self.false_matrix = 1.0 - np.eye(num_keypoints, dtype=np.float32)

    def __call__(self, y):
        B, K, H, W = y.shape
        y = y.detach()
        host = y.cpu()
        if host.dtype == torch.bfloat16:  # NumPy has no bfloat16 (tllib would crash here)
            host = host.float()
        flat = host.numpy().reshape(B, K, -1)
        idx = np.argmax(flat, 2)
        maxvals = np.amax(flat, 2)
        xs = (idx % W).astype(np.float32)
        ys = np.floor(idx / W).astype(np.float32)
        positive = maxvals > 0
        xs, ys = (xs * positive).astype(np.int64).reshape(-1), (ys * positive).astype(np.int64).reshape(-1)
        ground_truth = self.heatmaps[xs, ys, :, :].copy().reshape(B, K, H, W).copy()
        ground_false = ground_truth.reshape(B, K, -1).transpose((0, 2, 1))
        ground_false = ground_false.dot(self.false_matrix).clip(max=1.0, min=0.0).transpose((0, 2, 1))
        ground_false = ground_false.reshape(B, K, H, W).copy()
        return torch.from_numpy(ground_truth).to(y.device), torch.from_numpy(ground_false).to(y.device)


def regression_disparity(generator, criterion):
    """tllib RegressionDisparity(generator, criterion) as a function of (y, y_adv, weight, mode)."""
    def run(y, y_adv, weight=None, mode="min"):
        ground_truth, ground_false = generator(y.detach())
        return criterion(y_adv, ground_truth if mode == "min" else ground_false, weight)
    return run
