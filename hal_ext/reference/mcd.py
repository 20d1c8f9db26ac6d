"""MCD losses, as tllib.alignment.mcd computes them."""
import torch


def classifier_discrepancy(predictions1: torch.Tensor, predictions2: torch.Tensor) -> torch.Tensor:
    return torch.mean(torch.abs(predictions1 - predictions2))


def entropy(predictions: torch.Tensor) -> torch.Tensor:
    return -torch.mean(torch.log(torch.mean(predictions, 0) + 1e-6))
