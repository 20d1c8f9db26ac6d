"""Keypoint-detection losses, as ``tllib.vision.models.keypoint_detection.loss``, with fused kernels.

``from hal_ext.keypoint_detection import JointsMSELoss, JointsKLLoss`` replaces
``from tllib.vision.models.keypoint_detection.loss import JointsMSELoss, JointsKLLoss``.
"""
from typing import Optional

import torch
import torch.nn as nn

from .ops.joints_loss import joints_kl_loss, joints_mse_loss, keypoint_reduction_code

__all__ = ["JointsMSELoss", "JointsKLLoss", "joints_mse_loss", "joints_kl_loss"]


class JointsMSELoss(nn.Module):
    r"""Typical MSE loss for keypoint detection:

    .. math:: \ell_{b,k} = \frac{1}{HW} \sum_{p} \tfrac{1}{2} (\text{output}_{b,k,p} - \text{target}_{b,k,p})^2
              \cdot w_{b,k}

    computed by one fused kernel (one pass forward, one pass backward).

    Args:
        reduction (str, optional): Specifies the reduction to apply to the output:
          ``'none'`` | ``'mean'``. ``'none'``: no reduction will be applied (per-keypoint losses),
          ``'mean'``: the sum of the output will be divided by the number of
          elements in the output. Default: ``'mean'``

    Inputs:
        - output (tensor): heatmap predictions
        - target (tensor): heatmap labels
        - target_weight (tensor): whether the keypoint is visible. All keypoint is visible if None. Default: None.

    Shape:
        - output: :math:`(minibatch, K, H, W)` where K means the number of keypoints,
          H and W is the height and width of the heatmap respectively.
        - target: :math:`(minibatch, K, H, W)`.
        - target_weight: :math:`(minibatch, K)` (any shape with :math:`minibatch \times K` elements,
          e.g. :math:`(minibatch, K, 1)`).
        - Output: scalar by default. If :attr:`reduction` is ``'none'``, then :math:`(minibatch, K)`.

    Example::

        >>> loss = JointsMSELoss()
        >>> output, target = torch.randn(8, 21, 64, 64, requires_grad=True), torch.rand(8, 21, 64, 64)
        >>> loss(output, target).backward()
    """

    def __init__(self, reduction: str = 'mean'):
        super(JointsMSELoss, self).__init__()
        keypoint_reduction_code(reduction)
        self.criterion = nn.MSELoss(reduction='none')  # tllib's attribute; the fused kernel does its work
        self.reduction = reduction

    def forward(self, output: torch.Tensor, target: torch.Tensor,
                target_weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        return joints_mse_loss(output, target, target_weight, self.reduction)


class JointsKLLoss(nn.Module):
    r"""KL Divergence for keypoint detection proposed by
    `Regressive Domain Adaptation for Unsupervised Keypoint Detection <https://arxiv.org/abs/2103.06175>`_.

    For every heatmap :math:`(b, k)` with pixels :math:`p`:

    .. math::
        q = \text{log\_softmax}(\text{output}_{b,k}), \quad
        t = \frac{\text{target}_{b,k} + \epsilon}{\sum_p (\text{target}_{b,k,p} + \epsilon)}, \quad
        \ell_{b,k} = w_{b,k} \sum_p t_p (\log t_p - q_p)

    with :math:`0 \log 0 = 0`, computed row by row in one fused kernel (two passes over each row
    forward, one backward; nothing of size :math:`B \times K \times H \times W` besides the gradient).

    Args:
        reduction (str, optional): Specifies the reduction to apply to the output:
          ``'none'`` | ``'mean'``. ``'none'``: the per-keypoint losses averaged over the keypoints,
          :math:`(minibatch,)`, as tllib's code returns (its docstring says :math:`(minibatch, K)`),
          ``'mean'``: the sum of the output will be divided by the number of
          elements in the output. Default: ``'mean'``
        epsilon (float, optional): added to the target before it is normalised. Default: 0.

    Inputs:
        - output (tensor): heatmap predictions
        - target (tensor): heatmap labels
        - target_weight (tensor): whether the keypoint is visible. All keypoint is visible if None. Default: None.

    Shape:
        - output: :math:`(minibatch, K, H, W)` where K means the number of keypoints,
          H and W is the height and width of the heatmap respectively.
        - target: :math:`(minibatch, K, H, W)`.
        - target_weight: :math:`(minibatch, K)` (any shape with :math:`minibatch \times K` elements).
        - Output: scalar by default. If :attr:`reduction` is ``'none'``, then :math:`(minibatch,)`.

    Example::

        >>> loss = JointsKLLoss()
        >>> output, target = torch.randn(8, 21, 64, 64, requires_grad=True), torch.rand(8, 21, 64, 64)
        >>> loss(output, target).backward()
    """

    def __init__(self, reduction: str = 'mean', epsilon: float = 0.):
        super(JointsKLLoss, self).__init__()
        keypoint_reduction_code(reduction)
        self.criterion = nn.KLDivLoss(reduction='none')  # tllib's attribute; the fused kernel does its work
        self.reduction = reduction
        self.epsilon = epsilon

    def forward(self, output: torch.Tensor, target: torch.Tensor,
                target_weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        return joints_kl_loss(output, target, target_weight, self.reduction, self.epsilon)
