"""RegDA: Regressive Domain Adaptation for Unsupervised Keypoint Detection (Jiang et al., CVPR 2021),
as ``tllib.alignment.regda``.

The pseudo-label generators run one kernel per device (no ``W*H*H*W`` table, no host round trip, no
synchronisation, so they can be captured in a CUDA graph) and return float32 maps on ``y``'s device.
"""
import numbers
from typing import Optional

import torch
import torch.nn as nn

from .. import _native
from ..keypoint_detection import JointsKLLoss, JointsMSELoss
from ..modules.gl import WarmStartGradientLayer
from ..ops.joints_loss import keypoint_reduction_code
from ..ops.pseudo_label import check_heatmaps, check_sigma
from ..ops.pseudo_label import fast_pseudo_label_2d as _fast_pseudo_label_2d
from ..ops.pseudo_label import pseudo_label_2d as _pseudo_label_2d
from ..ops.regression_disparity import direct_regression_disparity as _direct_regression_disparity
from ..ops.regression_disparity import regression_disparity as _regression_disparity
from ..reference.regda import heatmap_table

__all__ = ["FastPseudoLabelGenerator2d", "PseudoLabelGenerator2d", "RegressionDisparity", "PoseResNet2d"]


class FastPseudoLabelGenerator2d(nn.Module):
    r"""Generate ground truth heatmap and ground false heatmap from a prediction (tllib's vectorised
    variant, used by its fast RegDA script).

    For each map, at its first argmax :math:`(x, y)` (no ``max > 0`` rule):

    .. math:: \text{ground\_truth}(X, Y) = g \cdot [g > 10^{-2}], \quad
              g = \exp\left(-\frac{(X - x)^2 + (Y - y)^2}{2\sigma^2}\right)

    and :math:`\text{ground\_false}_k = \text{clamp}(\sum_{j \ne k} \text{ground\_truth}_j, 0, 1)`.

    Args:
        sigma (float): sigma parameter when generate the heatmap, > 0. Default: 2

    Inputs:
        - y: predicted heatmap (any float dtype; no gradient flows through the pseudo labels)

    Outputs:
        - ground_truth: heatmap conforming to Gaussian distribution
        - ground_false: ground false heatmap

    Shape:
        - y: :math:`(minibatch, K, H, W)` where K means the number of keypoints,
          H and W is the height and width of the heatmap respectively (any K, H, W).
        - ground_truth: :math:`(minibatch, K, H, W)`, float32
        - ground_false: :math:`(minibatch, K, H, W)`, float32

    Example::

        >>> generator = FastPseudoLabelGenerator2d(sigma=2)
        >>> ground_truth, ground_false = generator(torch.randn(8, 21, 64, 64))
    """

    def __init__(self, sigma=2):
        super().__init__()
        check_sigma(sigma)
        self.sigma = sigma

    def check_input(self, y):
        """Raises on a ``y`` (or a ``sigma`` set since construction) that ``forward`` rejects."""
        check_heatmaps(y)
        check_sigma(self.sigma)

    def forward(self, heatmap: torch.Tensor):
        return _fast_pseudo_label_2d(heatmap, self.sigma)


class PseudoLabelGenerator2d(nn.Module):
    r"""Generate ground truth heatmap and ground false heatmap from a prediction.

    For each map, :math:`(x, y)` is its first argmax, or :math:`(0, 0)` when the maximum is not
    :math:`> 0`. ``ground_truth`` is tllib's truncated Gaussian: with :math:`t = 3\sigma`,
    :math:`ul = \text{int}(x - t)`, :math:`br = \text{int}(x + t + 1)`, :math:`c = \lfloor (2t + 1) / 2 \rfloor`
    (likewise along rows), pixels :math:`ul \le X < br`, :math:`ul_y \le Y < br_y` get

    .. math:: \exp\left(-\frac{((X - ul) - c)^2 + ((Y - ul_y) - c)^2}{2\sigma^2}\right)

    and all others 0; :math:`\text{ground\_false}_k = \text{clamp}(\sum_{j \ne k} \text{ground\_truth}_j, 0, 1)`.
    The maps equal tllib's (no ``W*H*H*W`` table is built, nothing goes through the host).

    Args:
        num_keypoints (int): Number of keypoints
        height (int): height of the heatmap. Default: 64
        width (int): width of the heatmap. Default: 64
        sigma (int): sigma parameter when generate the heatmap. Default: 2

    Inputs:
        - y: predicted heatmap (any float dtype; no gradient flows through the pseudo labels)

    Outputs:
        - ground_truth: heatmap conforming to Gaussian distribution
        - ground_false: ground false heatmap

    Shape:
        - y: :math:`(minibatch, K, H, W)` where K means the number of keypoints,
          H and W is the height and width of the heatmap respectively.
        - ground_truth: :math:`(minibatch, K, H, W)`, float32
        - ground_false: :math:`(minibatch, K, H, W)`, float32

    Example::

        >>> generator = PseudoLabelGenerator2d(num_keypoints=21)
        >>> ground_truth, ground_false = generator(torch.randn(8, 21, 64, 64))
    """

    def __init__(self, num_keypoints, height=64, width=64, sigma=2):
        super().__init__()
        for name, value in (("num_keypoints", num_keypoints), ("height", height), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        check_sigma(sigma)
        self.num_keypoints = num_keypoints
        self.height = height
        self.width = width
        self.sigma = sigma
        self._heatmaps = None

    @property
    def heatmaps(self):
        """tllib's table (NumPy float32, ``(W, H, H, W)``, ``heatmaps[x][y]`` the map of a peak at column
        ``x``, row ``y``), for code that reads it; built on first access (64 MiB at 64x64). The forward
        never uses it."""
        if self._heatmaps is None:
            self._heatmaps = heatmap_table(self.height, self.width, self.sigma)
        return self._heatmaps

    @property
    def false_matrix(self):
        """tllib's ``1 - eye(num_keypoints)`` (NumPy float32): ``ground_false`` is ``ground_truth`` times it
        over the keypoints, clamped to [0, 1]."""
        import numpy as np

        return 1. - np.eye(self.num_keypoints, dtype=np.float32)

    def check_input(self, y):
        """Raises on a ``y`` (or a ``sigma`` set since construction) that ``forward`` rejects."""
        check_heatmaps(y)
        check_sigma(self.sigma)
        B, K, H, W = y.shape
        if K != self.num_keypoints:
            raise ValueError(f"y must have num_keypoints={self.num_keypoints} maps in dim 1, got {K} "
                             f"(shape {tuple(y.shape)})")
        if (H, W) != (self.height, self.width):
            raise ValueError(f"y's heatmaps must be height x width = {self.height} x {self.width}, got {H} x {W} "
                             f"(shape {tuple(y.shape)})")

    def forward(self, y: torch.Tensor):
        self.check_input(y)
        return _pseudo_label_2d(y, self.sigma)


class RegressionDisparity(nn.Module):
    r"""Regression Disparity proposed by `Regressive Domain Adaptation for Unsupervised Keypoint
    Detection (CVPR 2021) <https://arxiv.org/abs/2103.06175>`_.

    Pseudo labels are generated from ``y.detach()``; ``mode='min'`` returns
    ``criterion(y_adv, ground_truth, weight)`` and ``mode='max'`` returns
    ``criterion(y_adv, ground_false, weight)``. The last pseudo labels stay readable as
    ``self.ground_truth`` and ``self.ground_false``.

    Args:
        pseudo_label_generator (PseudoLabelGenerator2d): generate ground truth heatmap and ground false heatmap
          from a prediction.
        criterion (torch.nn.Module): the loss function to calculate distance between two predictions.

    Inputs:
        - y: output by the main head
        - y_adv: output by the adversarial head
        - weight (optional): instance weights
        - mode (str): whether minimize the disparity or maximize the disparity. Choices includes ``min``, ``max``.
          Default: ``min``.

    Shape:
        - y: :math:`(minibatch, K, H, W)` where K means the number of keypoints,
          H and W is the height and width of the heatmap respectively.
        - y_adv: :math:`(minibatch, K, H, W)`
        - weight: :math:`(minibatch, K)`.
        - Output: depends on the ``criterion``.

    Examples::

        >>> num_keypoints = 5
        >>> batch_size = 10
        >>> H = W = 64
        >>> pseudo_label_generator = PseudoLabelGenerator2d(num_keypoints)
        >>> from hal_ext.keypoint_detection import JointsKLLoss
        >>> loss = RegressionDisparity(pseudo_label_generator, JointsKLLoss())
        >>> # output from source domain and target domain
        >>> y_s, y_t = torch.randn(batch_size, num_keypoints, H, W), torch.randn(batch_size, num_keypoints, H, W)
        >>> # adversarial output from source domain and target domain
        >>> y_s_adv, y_t_adv = torch.randn(batch_size, num_keypoints, H, W), torch.randn(batch_size, num_keypoints, H, W)
        >>> # minimize regression disparity on source domain
        >>> output = loss(y_s, y_s_adv, mode='min')
        >>> # maximize regression disparity on target domain
        >>> output = loss(y_t, y_t_adv, mode='max')
    """

    def __init__(self, pseudo_label_generator: PseudoLabelGenerator2d, criterion: nn.Module):
        super().__init__()
        self.criterion = criterion
        self.pseudo_label_generator = pseudo_label_generator

    # --- fused path (hal_ext generator + hal_ext criterion): the maps are computed lazily ----------
    @property
    def ground_truth(self):
        self._materialise_labels()
        return self.__dict__.get("_ground_truth")

    @ground_truth.setter
    def ground_truth(self, value):
        self.__dict__["_ground_truth"] = value

    @property
    def ground_false(self):
        self._materialise_labels()
        return self.__dict__.get("_ground_false")

    @ground_false.setter
    def ground_false(self, value):
        self.__dict__["_ground_false"] = value

    def _materialise_labels(self):
        pending = self.__dict__.pop("_pending_y", None)
        if pending is not None:
            generator, y = pending
            with torch.no_grad():
                self.ground_truth, self.ground_false = generator(y)

    def _fused_forward(self, y, y_adv, weight, mode):
        """One fused op when the generator and criterion are hal_ext's own; None otherwise."""
        generator, criterion = self.pseudo_label_generator, self.criterion
        if not _native.native_route() or not isinstance(y, torch.Tensor) or not isinstance(y_adv, torch.Tensor):
            return None
        if type(generator) is PseudoLabelGenerator2d:
            kind = "truncated"
        elif type(generator) is FastPseudoLabelGenerator2d:
            kind = "fast"
        else:
            return None
        if type(criterion) is JointsKLLoss:
            crit, epsilon = "kl", criterion.epsilon
        elif type(criterion) is JointsMSELoss:
            crit, epsilon = "mse", 0.0
        else:
            return None
        reduction = keypoint_reduction_code(criterion.reduction)
        shape = (generator.num_keypoints, generator.height, generator.width) if kind == "truncated" else (-1, -1, -1)
        loss = _direct_regression_disparity(y, y_adv, weight, mode, generator.sigma, kind, crit, reduction, epsilon,
                                            shape)
        if loss is not None:  # the common call, checked in C++
            self.__dict__["_pending_y"] = (generator, y.detach())
            return loss
        if weight is not None and (not isinstance(weight, torch.Tensor)
                                   or (weight.requires_grad and torch.is_grad_enabled())):
            return None  # the generic composition differentiates the weight
        generator.check_input(y)
        y = y.detach()  # the pseudo labels' source (kept for ground_truth / ground_false), no gradient
        self.__dict__["_pending_y"] = (generator, y)
        return _regression_disparity(y, y_adv, weight, mode, generator.sigma, kind, crit, reduction, epsilon)

    def forward(self, y, y_adv, weight=None, mode='min'):
        if mode not in ('min', 'max'):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        fused = self._fused_forward(y, y_adv, weight, mode)
        if fused is not None:
            return fused
        self.__dict__.pop("_pending_y", None)
        ground_truth, ground_false = self.pseudo_label_generator(y.detach())
        self.ground_truth = ground_truth
        self.ground_false = ground_false
        if mode == 'min':
            return self.criterion(y_adv, ground_truth, weight)
        return self.criterion(y_adv, ground_false, weight)


class PoseResNet2d(nn.Module):
    """
    Pose ResNet for RegDA has one backbone, one upsampling, while two regression heads.

    Args:
        backbone (torch.nn.Module): Backbone to extract 2-d features from data
        upsampling (torch.nn.Module): Layer to upsample image feature to heatmap size
        feature_dim (int): The dimension of the features from upsampling layer.
        num_keypoints (int): Number of keypoints
        gl (WarmStartGradientLayer): the gradient layer in front of the adversarial head. Default:
            ``WarmStartGradientLayer(alpha=1.0, lo=0.0, hi=0.1, max_iters=1000, auto_step=False)``
        finetune (bool, optional): Whether use 10x smaller learning rate in the backbone. Default: True
        num_head_layers (int): Number of head layers. Default: 2

    Inputs:
        - x (tensor): input data

    Outputs:
        - outputs: logits outputs by the main regressor
        - outputs_adv: logits outputs by the adversarial regressor (training mode only)

    Shape:
        - x: :math:`(minibatch, *)`, same shape as the input of the `backbone`.
        - outputs, outputs_adv: :math:`(minibatch, K, H, W)`, where K means the number of keypoints.

    .. note::
        Remember to call function `step()` after function `forward()` **during training phase**! For instance,

            >>> # x is inputs, model is an PoseResNet
            >>> outputs, outputs_adv = model(x)
            >>> model.step()
    """

    def __init__(self, backbone, upsampling, feature_dim, num_keypoints,
                 gl: Optional[WarmStartGradientLayer] = None, finetune: Optional[bool] = True, num_head_layers=2):
        super().__init__()
        self.backbone = backbone
        self.upsampling = upsampling
        self.head = self._make_head(num_head_layers, feature_dim, num_keypoints)
        self.head_adv = self._make_head(num_head_layers, feature_dim, num_keypoints)
        self.finetune = finetune
        if gl is None:
            gl = WarmStartGradientLayer(alpha=1.0, lo=0.0, hi=0.1, max_iters=1000, auto_step=False)
        self.gl_layer = gl

    @staticmethod
    def _make_head(num_layers, channel_dim, num_keypoints):
        """``num_layers - 1`` blocks of Conv3x3-BatchNorm-ReLU, then a 1x1 conv to the keypoints; conv
        weights N(0, 0.001), biases 0."""
        layers = []
        for _ in range(num_layers - 1):
            layers += [nn.Conv2d(channel_dim, channel_dim, 3, 1, 1), nn.BatchNorm2d(channel_dim), nn.ReLU()]
        layers.append(nn.Conv2d(in_channels=channel_dim, out_channels=num_keypoints, kernel_size=1, stride=1,
                                padding=0))
        head = nn.Sequential(*layers)
        for m in head.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.001)
                nn.init.constant_(m.bias, 0)
        return head

    def forward(self, x):
        f = self.upsampling(self.backbone(x))
        f_adv = self.gl_layer(f)
        y = self.head(f)
        y_adv = self.head_adv(f_adv)
        if self.training:
            return y, y_adv
        return y

    def get_parameters(self, lr=1.):
        """Parameter groups for an optimizer: the backbone at ``0.1 * lr`` when ``finetune``, the
        upsampling and both heads at ``lr``."""
        return [
            {'params': self.backbone.parameters(), 'lr': 0.1 * lr if self.finetune else lr},
            {'params': self.upsampling.parameters(), 'lr': lr},
            {'params': self.head.parameters(), 'lr': lr},
            {'params': self.head_adv.parameters(), 'lr': lr},
        ]

    def step(self):
        r"""Call step() each iteration during training.
        Will increase :math:`\lambda` in GL layer.
        """
        self.gl_layer.step()
