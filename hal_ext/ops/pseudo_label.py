"""hal_ext::pseudo_label_2d and hal_ext::fast_pseudo_label_2d: RegDA's pseudo-label heatmaps (tllib's
PseudoLabelGenerator2d / FastPseudoLabelGenerator2d) in one kernel per device, forward only."""
import math

import torch

from .. import _native
from .._validation import check_float_tensor
from ..reference import regda as reference

if _native.native_available():

    @torch.library.register_fake("hal_ext::pseudo_label_2d")
    def _(y, sigma):
        return y.new_empty(y.shape, dtype=torch.float32), y.new_empty(y.shape, dtype=torch.float32)

    @torch.library.register_fake("hal_ext::fast_pseudo_label_2d")
    def _(y, sigma):
        return y.new_empty(y.shape, dtype=torch.float32), y.new_empty(y.shape, dtype=torch.float32)


def check_heatmaps(y, name="y"):
    """``y`` must be a float tensor of shape (B, K, H, W)."""
    check_float_tensor(y, name)
    if y.dim() != 4:
        raise ValueError(f"{name} must be a 4-d heatmap tensor (B, K, H, W), got shape {tuple(y.shape)}")


def check_sigma(sigma):
    """``sigma`` must be a finite real number > 0."""
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)):
        raise TypeError(f"sigma must be a real number, got {type(sigma).__name__}")
    if not (sigma > 0 and math.isfinite(sigma)):
        raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")


def pseudo_label_2d(y: torch.Tensor, sigma: float = 2):
    """(ground_truth, ground_false) of tllib's PseudoLabelGenerator2d for y (B, K, H, W); float32."""
    check_heatmaps(y)
    check_sigma(sigma)
    if _native.native_available():
        return torch.ops.hal_ext.pseudo_label_2d(y, float(sigma))
    with torch.no_grad():
        return reference.pseudo_label_2d(y.detach(), sigma)


def fast_pseudo_label_2d(y: torch.Tensor, sigma: float = 2):
    """(ground_truth, ground_false) of tllib's FastPseudoLabelGenerator2d for y (B, K, H, W); float32."""
    check_heatmaps(y)
    check_sigma(sigma)
    if _native.native_available():
        return torch.ops.hal_ext.fast_pseudo_label_2d(y, float(sigma))
    with torch.no_grad():
        return reference.fast_pseudo_label_2d(y.detach(), sigma)
