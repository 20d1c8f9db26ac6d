"""MCD: Maximum Classifier Discrepancy (Saito et al., CVPR 2018), as ``tllib.alignment.mcd``."""
from typing import Optional

import torch
import torch.nn as nn

from ..ops.classifier_discrepancy import classifier_discrepancy as _classifier_discrepancy
from ..ops.mcd_entropy import mcd_entropy as _mcd_entropy

__all__ = ["classifier_discrepancy", "entropy", "ImageClassifierHead"]


def classifier_discrepancy(predictions1: torch.Tensor, predictions2: torch.Tensor) -> torch.Tensor:
    r"""The classifier discrepancy of MCD: the mean absolute difference of two predictions,

    .. math:: d(p_1, p_2) = \frac{1}{n} \sum | p_1 - p_2 |

    over **all** n elements (as tllib computes it), in one fused kernel forward and one backward.

    Args:
        predictions1 (torch.Tensor): classifier predictions :math:`p_1`, any shape, e.g. :math:`(N, C)`
            softmax outputs.
        predictions2 (torch.Tensor): classifier predictions :math:`p_2`, same shape and device.

    Returns:
        A scalar tensor of the inputs' dtype. Gradient: ``g * sign(p1 - p2) / n`` to ``p1`` and its
        negative to ``p2``.

    Example::

        >>> p1 = torch.randn(32, 31).softmax(1)
        >>> p2 = torch.randn(32, 31).softmax(1)
        >>> loss = classifier_discrepancy(p1, p2)
    """
    return _classifier_discrepancy(predictions1, predictions2)


def entropy(predictions: torch.Tensor) -> torch.Tensor:
    r"""The entropy term of MCD: minus the mean log of the mean prediction over the batch,

    .. math:: d(p) = -\frac{1}{M} \sum_{k=1}^{M} \log \Big( \frac{1}{N} \sum_{i=1}^{N} p_{i,k} + \epsilon \Big)

    with :math:`\epsilon = 10^{-6}` and M the number of elements per sample (the classes C for
    :math:`(N, C)` predictions). This is tllib's MCD ``entropy`` (not a per-sample Shannon entropy),
    computed in one fused kernel forward and one backward.

    Args:
        predictions (torch.Tensor): classifier predictions :math:`(N, *)`, e.g. :math:`(N, C)` softmax
            outputs; at least 1-D (a 1-D input is N samples of one element).

    Returns:
        A scalar tensor of the input's dtype (NaN for an empty batch, as ``torch.mean``). Gradient:
        ``-g / (M * N * (m_k + 1e-6))`` to every :math:`p_{i,k}`, with :math:`m_k` the column mean.

    Example::

        >>> predictions = torch.randn(32, 31).softmax(1)
        >>> loss = entropy(predictions)
    """
    return _mcd_entropy(predictions)


class ImageClassifierHead(nn.Module):
    r"""Classifier head for MCD (tllib's layer structure and attribute names, so state dicts load
    across both libraries).

    Args:
        in_features (int): dimension of the input features
        num_classes (int): number of classes
        bottleneck_dim (int, optional): feature dimension of the bottleneck layer. Default: 1024
        pool_layer (nn.Module, optional): pooling applied first. Default: ``AdaptiveAvgPool2d(1)`` then
            ``Flatten``.

    Shape:
        - Inputs: :math:`(minibatch, F)` where F = in_features (or a feature map for ``pool_layer``).
        - Output: :math:`(minibatch, C)` where C = num_classes.

    Example::

        >>> head = ImageClassifierHead(512, 31, bottleneck_dim=256)
        >>> logits = head(torch.randn(8, 512, 7, 7))
    """

    def __init__(self, in_features: int, num_classes: int, bottleneck_dim: Optional[int] = 1024,
                 pool_layer=None):
        super().__init__()
        self.num_classes = num_classes
        if pool_layer is None:
            self.pool_layer = nn.Sequential(nn.AdaptiveAvgPool2d(output_size=(1, 1)), nn.Flatten())
        else:
            self.pool_layer = pool_layer
        self.head = nn.Sequential(
            nn.Dropout(0.5),
            nn.Linear(in_features, bottleneck_dim),
            nn.BatchNorm1d(bottleneck_dim),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(bottleneck_dim, bottleneck_dim),
            nn.BatchNorm1d(bottleneck_dim),
            nn.ReLU(),
            nn.Linear(bottleneck_dim, num_classes),
        )

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool_layer(inputs))
