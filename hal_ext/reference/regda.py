"""RegDA pseudo labels in plain torch, with tllib's semantics (SPEC "RegDA").

tllib's ``PseudoLabelGenerator2d`` indexes a precomputed ``W*H*H*W`` float32 table with the peaks
that numpy finds on the host; these functions compute the same maps directly and vectorised on y's
device, without the table and without numpy. Outputs are float32 whatever y's dtype, and never
require grad.

``ground_false`` is ``clamp(sum_{j != k} ground_truth_j, 0, 1)``, computed as the exact float64
sum of the float32 maps minus the map's own term, rounded once to float32 (tllib's float32 sums
may differ from this by one float32 rounding of the sum).
"""
import math

import torch

__all__ = ["peaks", "pseudo_label_2d", "fast_pseudo_label_2d", "heatmap_table"]


def peaks(y, max_rule):
    """First-argmax positions ``(x, y)`` (int64, shape ``(B, K)``) of each flat ``H*W`` map of ``y``;
    NaN counts as the maximum. With ``max_rule`` (tllib's ``get_max_preds``), maps whose maximum is
    not ``> 0`` (NaN included) get ``x = y = 0``."""
    B, K, H, W = y.shape
    flat = y.detach().reshape(B, K, H * W)
    if H * W == 0:
        zeros = torch.zeros(B, K, dtype=torch.int64, device=y.device)
        return zeros, zeros.clone()
    values, index = flat.max(dim=-1)
    px, py = index % W, torch.div(index, W, rounding_mode="floor")
    if max_rule:
        keep = values > 0
        px, py = px * keep, py * keep
    return px, py


def _ground_false(ground_truth):
    total = ground_truth.double().sum(dim=1, keepdim=True)
    return (total - ground_truth.double()).float().clamp(0.0, 1.0)


def _truncated_axis(pos, sigma, extent):
    """tllib's window along one axis: in-window mask (B, K, extent) and the float32 offset from the
    Gaussian's centre, ``(P - ul) - c`` (P the pixel coordinate)."""
    t = sigma * 3
    p = pos.double()
    ul = (p - t).trunc().long()
    br = ((p + t) + 1).trunc().long()
    c = math.floor((2 * t + 1) / 2)
    P = torch.arange(extent, device=pos.device)
    inside = (P >= ul.unsqueeze(-1)) & (P < br.unsqueeze(-1))
    offset = (P - ul.unsqueeze(-1)).float() - torch.tensor(float(c), dtype=torch.float32, device=pos.device)
    return inside, offset


def pseudo_label_2d(y, sigma=2):
    """tllib's ``PseudoLabelGenerator2d`` maps for ``y (B, K, H, W)``: ``(ground_truth, ground_false)``.

    ``ground_truth[b, k]`` is the truncated Gaussian of SPEC at the first argmax (``m > 0`` rule):
    ``exp(-(dx^2 + dy^2) / (2 sigma^2))`` in float32 inside tllib's window, exactly 0 outside."""
    B, K, H, W = y.shape
    px, py = peaks(y, max_rule=True)
    in_x, dx = _truncated_axis(px, sigma, W)    # (B, K, W)
    in_y, dy = _truncated_axis(py, sigma, H)    # (B, K, H)
    den = torch.tensor(2 * sigma ** 2, dtype=torch.float32, device=y.device)
    d = dx.square().unsqueeze(-2) + dy.square().unsqueeze(-1)  # (B, K, H, W)
    value = torch.exp(-d / den)
    inside = in_y.unsqueeze(-1) & in_x.unsqueeze(-2)
    ground_truth = torch.where(inside, value, torch.zeros((), dtype=torch.float32, device=y.device))
    return ground_truth, _ground_false(ground_truth)


def fast_pseudo_label_2d(y, sigma=2):
    """tllib's ``FastPseudoLabelGenerator2d`` maps: the Gaussian over the whole map at the first
    argmax (no ``m > 0`` rule), ``exp(-((X-x)^2 + (Y-y)^2) / (2 sigma^2))`` in float32, zeroed where
    not ``> 1e-2``."""
    B, K, H, W = y.shape
    px, py = peaks(y, max_rule=False)
    dh = torch.arange(H, device=y.device) - py.unsqueeze(-1)  # (B, K, H)
    dw = torch.arange(W, device=y.device) - px.unsqueeze(-1)  # (B, K, W)
    d = (dh.square().unsqueeze(-1) + dw.square().unsqueeze(-2)).float()
    den = torch.tensor(-2 * sigma * sigma, dtype=torch.float32, device=y.device)
    ground_truth = torch.nn.functional.threshold(torch.exp(d / den), threshold=1e-2, value=0.0)
    return ground_truth, _ground_false(ground_truth)


def heatmap_table(height, width, sigma):
    """tllib's ``PseudoLabelGenerator2d.heatmaps``: a NumPy float32 array of shape ``(W, H, H, W)``
    whose ``[x][y]`` is the ``(H, W)`` ground-truth map of a peak at column ``x``, row ``y`` (SPEC's
    truncated Gaussian; 64 MiB at 64x64). Built vectorised: one window per axis, then their sum."""
    import numpy as np

    t = 3 * sigma
    c = np.floor((2 * t + 1) / 2)

    def window(n):  # (n peak positions, n pixels): squared offset to the window centre, or inf outside
        mu = np.arange(n)
        ul = np.trunc(mu - t).astype(np.int64)
        br = np.trunc(mu + t + 1).astype(np.int64)
        pix = np.arange(n)
        d2 = ((pix[None, :] - ul[:, None]) - c) ** 2
        inside = (pix[None, :] >= np.maximum(ul, 0)[:, None]) & (pix[None, :] < np.minimum(br, n)[:, None])
        return np.where(inside, d2, np.inf).astype(np.float32)

    dx, dy = window(width), window(height)  # (W, W), (H, H)
    return np.exp(-(dy[None, :, :, None] + dx[:, None, None, :]) / np.float32(2 * sigma ** 2)).astype(np.float32)
