"""MDD: Margin Disparity Discrepancy (Zhang et al., ICML 2019), as ``tllib.alignment.mdd``.

The classification loss, and the regression loss with ``F.l1_loss`` / ``F.mse_loss``, run as one fused
kernel forward and one backward; every other combination takes the generic composition, which
computes exactly what tllib computes."""
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..modules.grl import WarmStartGradientReverseLayer
from ..ops.classification_mdd import classification_mdd as _classification_mdd
from ..ops.regression_mdd import LOSS_KINDS as _LOSS_KINDS
from ..ops.regression_mdd import regression_mdd as _regression_mdd
from ..ops.shift_log import shift_log
from ..reference import mdd as _reference
from .._validation import reduction_code as _reduction_code

__all__ = ["MarginDisparityDiscrepancy", "ClassificationMarginDisparityDiscrepancy",
           "RegressionMarginDisparityDiscrepancy", "shift_log", "GeneralModule", "ImageClassifier",
           "ImageRegressor"]


class MarginDisparityDiscrepancy(nn.Module):
    r"""The margin disparity discrepancy (MDD) proposed in `Bridging Theory and Algorithm for Domain
    Adaptation (ICML 2019) <https://arxiv.org/abs/1904.05801>`_.

    MDD can measure the distribution discrepancy in domain adaptation.

    The :math:`y^s` and :math:`y^t` are logits output by the main head on the source and target domain
    respectively. The :math:`y_{adv}^s` and :math:`y_{adv}^t` are logits output by the adversarial head.

    The definition can be described as:

    .. math::
        \mathcal{D}_{\gamma}(\hat{\mathcal{S}}, \hat{\mathcal{T}}) =
        -\gamma \mathbb{E}_{y^s, y_{adv}^s \sim\hat{\mathcal{S}}} L_s (y^s, y_{adv}^s) +
        \mathbb{E}_{y^t, y_{adv}^t \sim\hat{\mathcal{T}}} L_t (y^t, y_{adv}^t),

    where :math:`\gamma` is a margin hyper-parameter, :math:`L_s` refers to the disparity function defined
    on the source domain and :math:`L_t` refers to the disparity function defined on the target domain.
    Elementwise, ``loss = -margin * L_s(y_s, y_s_adv) * w_s + L_t(y_t, y_t_adv) * w_t`` (missing weights are
    ones), then reduced.

    Args:
        source_disparity (callable): The disparity function defined on the source domain, :math:`L_s`.
        target_disparity (callable): The disparity function defined on the target domain, :math:`L_t`.
        margin (float): margin :math:`\gamma`. Default: 4
        reduction (str, optional): Specifies the reduction to apply to the output:
          ``'none'`` | ``'mean'`` | ``'sum'``. ``'none'``: no reduction will be applied,
          ``'mean'``: the sum of the output will be divided by the number of
          elements in the output, ``'sum'``: the output will be summed. Default: ``'mean'``

    Inputs:
        - y_s: output :math:`y^s` by the main head on the source domain
        - y_s_adv: output :math:`y^s` by the adversarial head on the source domain
        - y_t: output :math:`y^t` by the main head on the target domain
        - y_t_adv: output :math:`y_{adv}^t` by the adversarial head on the target domain
        - w_s (optional): instance weights for source domain
        - w_t (optional): instance weights for target domain

    Shape:
        - Output: scalar, or the shape of the disparities if ``reduction`` is ``'none'``.

    Examples::

        >>> num_outputs = 2
        >>> batch_size = 10
        >>> loss = MarginDisparityDiscrepancy(margin=4., source_disparity=F.l1_loss, target_disparity=F.l1_loss)
        >>> # output from source domain and target domain
        >>> y_s, y_t = torch.randn(batch_size, num_outputs), torch.randn(batch_size, num_outputs)
        >>> # adversarial output from source domain and target domain
        >>> y_s_adv, y_t_adv = torch.randn(batch_size, num_outputs), torch.randn(batch_size, num_outputs)
        >>> output = loss(y_s, y_s_adv, y_t, y_t_adv)
    """

    def __init__(self, source_disparity: Callable, target_disparity: Callable,
                 margin: Optional[float] = 4, reduction: Optional[str] = 'mean'):
        super(MarginDisparityDiscrepancy, self).__init__()
        _reduction_code(reduction)
        self.margin = margin
        self.reduction = reduction
        self.source_disparity = source_disparity
        self.target_disparity = target_disparity

    def forward(self, y_s: torch.Tensor, y_s_adv: torch.Tensor, y_t: torch.Tensor, y_t_adv: torch.Tensor,
                w_s: Optional[torch.Tensor] = None, w_t: Optional[torch.Tensor] = None) -> torch.Tensor:
        _reduction_code(self.reduction)
        return _reference.margin_disparity_discrepancy(self.source_disparity, self.target_disparity, y_s, y_s_adv,
                                                       y_t, y_t_adv, w_s, w_t, self.margin, self.reduction)


class ClassificationMarginDisparityDiscrepancy(MarginDisparityDiscrepancy):
    r"""
    The margin disparity discrepancy (MDD) proposed in `Bridging Theory and Algorithm for Domain Adaptation
    (ICML 2019) <https://arxiv.org/abs/1904.05801>`_.

    It measures the distribution discrepancy in domain adaptation for classification.

    When margin is equal to 1, it's also called disparity discrepancy (DD).

    The :math:`y^s` and :math:`y^t` are logits output by the main classifier on the source and target domain
    respectively. The :math:`y_{adv}^s` and :math:`y_{adv}^t` are logits output by the adversarial classifier.
    They are expected to contain raw, unnormalized scores for each class.

    The definition can be described as:

    .. math::
        \mathcal{D}_{\gamma}(\hat{\mathcal{S}}, \hat{\mathcal{T}}) =
        \gamma \mathbb{E}_{y^s, y_{adv}^s \sim\hat{\mathcal{S}}} \log\left(\frac{\exp(y_{adv}^s[h_{y^s}])}{\sum_j \exp(y_{adv}^s[j])}\right) +
        \mathbb{E}_{y^t, y_{adv}^t \sim\hat{\mathcal{T}}} \log\left(1-\frac{\exp(y_{adv}^t[h_{y^t}])}{\sum_j \exp(y_{adv}^t[j])}\right),

    where :math:`\gamma` is a margin hyper-parameter and :math:`h_y` refers to the predicted label when the
    logits output is :math:`y` (the first argmax over dim 1; NaN counts as the maximum). The target log is
    :func:`shift_log` (offset 1e-6). ``y_s`` and ``y_t`` receive no gradient. With no weights, or constant
    weights of the logits' dtype that broadcast to the per-sample shape, this runs as one fused kernel
    forward and one backward.

    Args:
        margin (float): margin :math:`\gamma`. Default: 4
        reduction (str, optional): Specifies the reduction to apply to the output:
          ``'none'`` | ``'mean'`` | ``'sum'``. ``'none'``: no reduction will be applied,
          ``'mean'``: the sum of the output will be divided by the number of
          elements in the output, ``'sum'``: the output will be summed. Default: ``'mean'``

    Inputs:
        - y_s: logits output :math:`y^s` by the main classifier on the source domain
        - y_s_adv: logits output :math:`y^s` by the adversarial classifier on the source domain
        - y_t: logits output :math:`y^t` by the main classifier on the target domain
        - y_t_adv: logits output :math:`y_{adv}^t` by the adversarial classifier on the target domain
        - w_s (optional): instance weights for source domain, shape :math:`(minibatch)` (or the per-sample shape)
        - w_t (optional): instance weights for target domain

    Shape:
        - Inputs: :math:`(minibatch, C)` where C = number of classes, or :math:`(minibatch, C, d_1, d_2, ..., d_K)`
          with :math:`K \geq 1` in the case of `K`-dimensional loss.
        - Output: scalar. If :attr:`reduction` is ``'none'``, then the same size as the target: :math:`(minibatch)`, or
          :math:`(minibatch, d_1, d_2, ..., d_K)` with :math:`K \geq 1` in the case of K-dimensional loss.

    Examples::

        >>> num_classes = 2
        >>> batch_size = 10
        >>> loss = ClassificationMarginDisparityDiscrepancy(margin=4.)
        >>> # logits output from source domain and target domain
        >>> y_s, y_t = torch.randn(batch_size, num_classes), torch.randn(batch_size, num_classes)
        >>> # adversarial logits output from source domain and target domain
        >>> y_s_adv, y_t_adv = torch.randn(batch_size, num_classes), torch.randn(batch_size, num_classes)
        >>> output = loss(y_s, y_s_adv, y_t, y_t_adv)
    """

    def __init__(self, margin: Optional[float] = 4, **kwargs):
        super(ClassificationMarginDisparityDiscrepancy, self).__init__(
            _reference.classification_source_disparity, _reference.classification_target_disparity, margin, **kwargs)

    def forward(self, y_s: torch.Tensor, y_s_adv: torch.Tensor, y_t: torch.Tensor, y_t_adv: torch.Tensor,
                w_s: Optional[torch.Tensor] = None, w_t: Optional[torch.Tensor] = None) -> torch.Tensor:
        if (self.source_disparity is _reference.classification_source_disparity
                and self.target_disparity is _reference.classification_target_disparity):
            return _classification_mdd(y_s, y_s_adv, y_t, y_t_adv, w_s, w_t, self.margin, self.reduction)
        return super().forward(y_s, y_s_adv, y_t, y_t_adv, w_s, w_t)


class RegressionMarginDisparityDiscrepancy(MarginDisparityDiscrepancy):
    r"""
    The margin disparity discrepancy (MDD) proposed in `Bridging Theory and Algorithm for Domain Adaptation
    (ICML 2019) <https://arxiv.org/abs/1904.05801>`_.

    It measures the distribution discrepancy in domain adaptation for regression.

    The :math:`y^s` and :math:`y^t` are logits output by the main regressor on the source and target domain
    respectively. The :math:`y_{adv}^s` and :math:`y_{adv}^t` are logits output by the adversarial regressor.
    They are expected to contain ``normalized`` values for each factors.

    The definition can be described as:

    .. math::
        \mathcal{D}_{\gamma}(\hat{\mathcal{S}}, \hat{\mathcal{T}}) =
        -\gamma \mathbb{E}_{y^s, y_{adv}^s \sim\hat{\mathcal{S}}} L (y^s, y_{adv}^s) +
        \mathbb{E}_{y^t, y_{adv}^t \sim\hat{\mathcal{T}}} L (y^t, y_{adv}^t),

    where :math:`\gamma` is a margin hyper-parameter and :math:`L` refers to the disparity function defined on
    both domains, ``L(y, y_adv) = loss_function(y_adv, y.detach(), reduction='none')``. ``F.l1_loss`` and
    ``F.mse_loss`` run as one fused kernel; any other callable takes the generic path.

    Args:
        loss_function (callable): The disparity function defined on both domains, :math:`L`.
        margin (float): margin :math:`\gamma`. Default: 1
        reduction (str, optional): Specifies the reduction to apply to the output:
          ``'none'`` | ``'mean'`` | ``'sum'``. ``'none'``: no reduction will be applied,
          ``'mean'``: the sum of the output will be divided by the number of
          elements in the output, ``'sum'``: the output will be summed. Default: ``'mean'``

    Inputs:
        - y_s: logits output :math:`y^s` by the main regressor on the source domain
        - y_s_adv: logits output :math:`y^s` by the adversarial regressor on the source domain
        - y_t: logits output :math:`y^t` by the main regressor on the target domain
        - y_t_adv: logits output :math:`y_{adv}^t` by the adversarial regressor on the target domain

    Shape:
        - Inputs: :math:`(minibatch, F)` where F = number of factors, or :math:`(minibatch, F, d_1, d_2, ..., d_K)`
          with :math:`K \geq 1` in the case of `K`-dimensional loss.
        - Output: scalar. The same size as the target: :math:`(minibatch)`, or
          :math:`(minibatch, d_1, d_2, ..., d_K)` with :math:`K \geq 1` in the case of K-dimensional loss.

    Examples::

        >>> num_outputs = 2
        >>> batch_size = 10
        >>> loss = RegressionMarginDisparityDiscrepancy(margin=4., loss_function=F.l1_loss)
        >>> # output from source domain and target domain
        >>> y_s, y_t = torch.randn(batch_size, num_outputs), torch.randn(batch_size, num_outputs)
        >>> # adversarial output from source domain and target domain
        >>> y_s_adv, y_t_adv = torch.randn(batch_size, num_outputs), torch.randn(batch_size, num_outputs)
        >>> output = loss(y_s, y_s_adv, y_t, y_t_adv)
    """

    def __init__(self, margin: Optional[float] = 1, loss_function=F.l1_loss, **kwargs):
        disparity = _reference.regression_disparity(loss_function)
        super(RegressionMarginDisparityDiscrepancy, self).__init__(disparity, disparity, margin, **kwargs)
        self._fused_disparity = disparity
        self._loss_function = loss_function

    def forward(self, y_s: torch.Tensor, y_s_adv: torch.Tensor, y_t: torch.Tensor, y_t_adv: torch.Tensor,
                w_s: Optional[torch.Tensor] = None, w_t: Optional[torch.Tensor] = None) -> torch.Tensor:
        if (self._loss_function in _LOSS_KINDS and self.source_disparity is self._fused_disparity
                and self.target_disparity is self._fused_disparity):
            return _regression_mdd(y_s, y_s_adv, y_t, y_t_adv, w_s, w_t, self.margin, self._loss_function,
                                   self.reduction)
        return super().forward(y_s, y_s_adv, y_t, y_t_adv, w_s, w_t)


class GeneralModule(nn.Module):
    r"""Backbone, bottleneck, a main head and an adversarial head behind a gradient reverse layer: the
    common structure of :class:`ImageClassifier` and :class:`ImageRegressor` (tllib's attribute names:
    ``backbone``, ``num_classes``, ``bottleneck``, ``head``, ``adv_head``, ``finetune``, ``grl_layer``).

    Args:
        backbone (torch.nn.Module): feature extractor
        num_classes (int): number of outputs
        bottleneck (torch.nn.Module): layers between the backbone and both heads
        head (torch.nn.Module): the main head
        adv_head (torch.nn.Module): the adversarial head
        grl (WarmStartGradientReverseLayer, optional): the reverse layer in front of ``adv_head``. Default:
            ``WarmStartGradientReverseLayer(alpha=1.0, lo=0.0, hi=0.1, max_iters=1000, auto_step=False)``
        finetune (bool, optional): 10x smaller learning rate for the backbone. Default: True

    Outputs: ``(outputs, outputs_adv)`` in training mode, ``outputs`` in eval mode.

    Example::

        >>> backbone = nn.Sequential(nn.Flatten(), nn.Linear(12, 8))
        >>> model = GeneralModule(backbone, 3, nn.Identity(), nn.Linear(8, 3), nn.Linear(8, 3))
        >>> outputs, outputs_adv = model(torch.randn(4, 12))
        >>> model.step()
    """

    def __init__(self, backbone: nn.Module, num_classes: int, bottleneck: nn.Module,
                 head: nn.Module, adv_head: nn.Module, grl: Optional[WarmStartGradientReverseLayer] = None,
                 finetune: Optional[bool] = True):
        super(GeneralModule, self).__init__()
        self.backbone = backbone
        self.num_classes = num_classes
        self.bottleneck = bottleneck
        self.head = head
        self.adv_head = adv_head
        self.finetune = finetune
        self.grl_layer = _default_grl() if grl is None else grl

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """"""
        features = self.bottleneck(self.backbone(x))
        outputs = self.head(features)
        outputs_adv = self.adv_head(self.grl_layer(features))
        if self.training:
            return outputs, outputs_adv
        return outputs

    def step(self):
        """Gradually increase :math:`\\lambda` in the gradient reverse layer."""
        self.grl_layer.step()

    def get_parameters(self, base_lr=1.0) -> List[Dict]:
        """A parameter list with relative learning rates: backbone at ``0.1 * base_lr`` when ``finetune``,
        bottleneck, head and adversarial head at ``base_lr``."""
        return [
            {"params": self.backbone.parameters(), "lr": 0.1 * base_lr if self.finetune else base_lr},
            {"params": self.bottleneck.parameters(), "lr": base_lr},
            {"params": self.head.parameters(), "lr": base_lr},
            {"params": self.adv_head.parameters(), "lr": base_lr},
        ]


def _default_grl():
    return WarmStartGradientReverseLayer(alpha=1.0, lo=0.0, hi=0.1, max_iters=1000, auto_step=False)


def _classifier_head(bottleneck_dim, width, num_classes):
    return nn.Sequential(nn.Linear(bottleneck_dim, width), nn.ReLU(), nn.Dropout(0.5), nn.Linear(width, num_classes))


class ImageClassifier(GeneralModule):
    r"""Classifier for MDD.

    Classifier for MDD has one backbone, one bottleneck, while two classifier heads.
    The first classifier head is used for final predictions.
    The adversarial classifier head is only used when calculating MarginDisparityDiscrepancy.

    Layers (tllib's, so state dicts load across both libraries): ``bottleneck = Sequential(pool_layer,
    Linear(backbone.out_features, bottleneck_dim), BatchNorm1d, ReLU, Dropout(0.5))`` with the Linear
    weights drawn from N(0, 0.005) and bias 0.1; ``head`` and ``adv_head`` are each ``Sequential(Linear(bottleneck_dim,
    width), ReLU, Dropout(0.5), Linear(width, num_classes))`` with Linear weights N(0, 0.01), bias 0.

    Args:
        backbone (torch.nn.Module): Any backbone to extract 1-d features from data
        num_classes (int): Number of classes
        bottleneck_dim (int, optional): Feature dimension of the bottleneck layer. Default: 1024
        width (int, optional): Feature dimension of the classifier head. Default: 1024
        grl (nn.Module): Gradient reverse layer. Will use default parameters if None. Default: None.
        finetune (bool, optional): Whether use 10x smaller learning rate in the backbone. Default: True
        pool_layer (nn.Module, optional): pooling in front of the bottleneck. Default: ``AdaptiveAvgPool2d(1)``
            then ``Flatten``.

    Inputs:
        - x (tensor): input data

    Outputs:
        - outputs: logits outputs by the main classifier
        - outputs_adv: logits outputs by the adversarial classifier

    Shape:
        - x: :math:`(minibatch, *)`, same shape as the input of the `backbone`.
        - outputs, outputs_adv: :math:`(minibatch, C)`, where C means the number of classes.

    .. note::
        Remember to call function `step()` after function `forward()` **during training phase**! For instance,

            >>> # x is inputs, classifier is an ImageClassifier
            >>> outputs, outputs_adv = classifier(x)
            >>> classifier.step()
    """

    def __init__(self, backbone: nn.Module, num_classes: int,
                 bottleneck_dim: Optional[int] = 1024, width: Optional[int] = 1024,
                 grl: Optional[WarmStartGradientReverseLayer] = None, finetune=True, pool_layer=None):
        grl_layer = _default_grl() if grl is None else grl
        if pool_layer is None:
            pool_layer = nn.Sequential(nn.AdaptiveAvgPool2d(output_size=(1, 1)), nn.Flatten())
        bottleneck = nn.Sequential(
            pool_layer,
            nn.Linear(backbone.out_features, bottleneck_dim),
            nn.BatchNorm1d(bottleneck_dim),
            nn.ReLU(),
            nn.Dropout(0.5),
        )
        nn.init.normal_(bottleneck[1].weight, 0, 0.005)
        nn.init.constant_(bottleneck[1].bias, 0.1)
        head = _classifier_head(bottleneck_dim, width, num_classes)
        adv_head = _classifier_head(bottleneck_dim, width, num_classes)
        # Same order of random draws as tllib: both heads' first Linear, then both heads' last Linear.
        for index in (0, 3):
            for layer in (head[index], adv_head[index]):
                nn.init.normal_(layer.weight, 0, 0.01)
                nn.init.constant_(layer.bias, 0.0)
        super(ImageClassifier, self).__init__(backbone, num_classes, bottleneck, head, adv_head, grl_layer, finetune)


def _regressor_head(bottleneck_dim, width, num_factors):
    head = nn.Sequential(
        nn.Conv2d(bottleneck_dim, width, kernel_size=3, stride=1, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Conv2d(width, width, kernel_size=3, stride=1, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(output_size=(1, 1)),
        nn.Flatten(),
        nn.Linear(width, num_factors),
        nn.Sigmoid(),
    )
    for layer in head:
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(layer.weight, 0, 0.01)
            nn.init.constant_(layer.bias, 0)
    return head


class ImageRegressor(GeneralModule):
    r"""Regressor for MDD.

    Regressor for MDD has one backbone, one bottleneck, while two regressor heads.
    The first regressor head is used for final predictions.
    The adversarial regressor head is only used when calculating MarginDisparityDiscrepancy.

    Default layers (tllib's): ``bottleneck = Sequential(Conv2d(backbone.out_features, bottleneck_dim, 3, padding=1),
    BatchNorm2d, ReLU)``; ``head`` and ``adv_head`` are each ``Sequential(Conv3x3, BatchNorm2d, ReLU, Conv3x3,
    BatchNorm2d, ReLU, AdaptiveAvgPool2d(1), Flatten, Linear(width, num_factors), Sigmoid)`` with conv and
    Linear weights N(0, 0.01), bias 0. The reverse layer is always the default one.

    Args:
        backbone (torch.nn.Module): Any backbone to extract 1-d features from data
        num_factors (int): Number of factors
        bottleneck (torch.nn.Module, optional): replaces the default bottleneck. Default: None
        head (torch.nn.Module, optional): replaces the default head. Default: None
        adv_head (torch.nn.Module, optional): replaces the default adversarial head. Default: None
        bottleneck_dim (int, optional): Feature dimension of the bottleneck layer. Default: 1024
        width (int, optional): Feature dimension of the classifier head. Default: 1024
        finetune (bool, optional): Whether use 10x smaller learning rate in the backbone. Default: True

    Inputs:
        - x (Tensor): input data

    Outputs: (outputs, outputs_adv)
        - outputs: outputs by the main regressor
        - outputs_adv: outputs by the adversarial regressor

    Shape:
        - x: :math:`(minibatch, *)`, same shape as the input of the `backbone`.
        - outputs, outputs_adv: :math:`(minibatch, F)`, where F means the number of factors.

    .. note::
        Remember to call function `step()` after function `forward()` **during training phase**! For instance,

            >>> # x is inputs, regressor is an ImageRegressor
            >>> outputs, outputs_adv = regressor(x)
            >>> regressor.step()
    """

    def __init__(self, backbone: nn.Module, num_factors: int, bottleneck=None, head=None, adv_head=None,
                 bottleneck_dim: Optional[int] = 1024, width: Optional[int] = 1024, finetune=True):
        grl_layer = _default_grl()
        if bottleneck is None:
            bottleneck = nn.Sequential(
                nn.Conv2d(backbone.out_features, bottleneck_dim, kernel_size=3, stride=1, padding=1),
                nn.BatchNorm2d(bottleneck_dim),
                nn.ReLU(),
            )
        if head is None:
            head = _regressor_head(bottleneck_dim, width, num_factors)
        if adv_head is None:
            adv_head = _regressor_head(bottleneck_dim, width, num_factors)
        super(ImageRegressor, self).__init__(backbone, num_factors, bottleneck, head, adv_head, grl_layer, finetune)
        self.num_factors = num_factors
