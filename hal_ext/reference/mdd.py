"""MDD losses, as tllib.alignment.mdd computes them."""
import torch


def shift_log(x: torch.Tensor, offset: float = 1e-6) -> torch.Tensor:
    return torch.log(torch.clamp(x + offset, max=1.0))
