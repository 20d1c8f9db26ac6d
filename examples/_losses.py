"""The one place where an example picks its loss back-end.

``load(method, backend)`` returns a namespace with the loss functions/modules the method's training
loop uses, either from hal_ext's fused public API (``backend="hal_ext"``: what a tllib user gets by
changing ``tllib`` to ``hal_ext`` in the imports) or from the pure-torch reference with tllib's
semantics (``backend="reference"``: the ``hal_ext.reference`` functions, wrapped below in modules
with tllib's constructor arguments and call signatures). The models (ImageClassifierHead,
ImageClassifier, PoseResNet2d) are the same in both runs, so with the same seed the two runs differ
only by the floating-point rounding of the losses.
"""
import types

import torch.nn as nn

from hal_ext.reference import mdd as _ref_mdd
from hal_ext.reference import regda as _ref_regda

BACKENDS = ("reference", "hal_ext")


def _mcd(backend):
    if backend == "hal_ext":
        from hal_ext.alignment import mcd as m
    else:
        from hal_ext.reference import mcd as m
    return types.SimpleNamespace(classifier_discrepancy=m.classifier_discrepancy, entropy=m.entropy)


class _ReferenceClassificationMDD(nn.Module):
    """tllib's ClassificationMarginDisparityDiscrepancy module over the reference function."""

    def __init__(self, margin=4, reduction="mean"):
        super().__init__()
        self.margin, self.reduction = margin, reduction

    def forward(self, y_s, y_s_adv, y_t, y_t_adv, w_s=None, w_t=None):
        return _ref_mdd.classification_mdd(y_s, y_s_adv, y_t, y_t_adv, w_s, w_t, margin=self.margin,
                                      reduction=self.reduction)


class _ReferenceJointsKLLoss(nn.Module):
    """tllib's JointsKLLoss module over the reference function."""

    def __init__(self, reduction="mean", epsilon=0.):
        super().__init__()
        self.reduction, self.epsilon = reduction, epsilon

    def forward(self, output, target, target_weight=None):
        from hal_ext.reference import keypoint_detection as _ref_kd
        return _ref_kd.joints_kl_loss(output, target, target_weight, reduction=self.reduction,
                                                 epsilon=self.epsilon)


class _ReferenceJointsMSELoss(nn.Module):
    """tllib's JointsMSELoss module over the reference function."""

    def __init__(self, reduction="mean"):
        super().__init__()
        self.reduction = reduction

    def forward(self, output, target, target_weight=None):
        from hal_ext.reference import keypoint_detection as _ref_kd
        return _ref_kd.joints_mse_loss(output, target, target_weight, reduction=self.reduction)


class _ReferencePseudoLabelGenerator2d(nn.Module):
    """tllib's PseudoLabelGenerator2d module over the reference function."""

    def __init__(self, num_keypoints, height=64, width=64, sigma=2):
        super().__init__()
        self.num_keypoints, self.height, self.width, self.sigma = num_keypoints, height, width, sigma

    def forward(self, y):
        return _ref_regda.pseudo_label_2d(y, self.sigma)


class _ReferenceRegressionDisparity(nn.Module):
    """tllib's RegressionDisparity: pseudo labels from y, then the criterion on y_adv."""

    def __init__(self, pseudo_label_generator, criterion):
        super().__init__()
        self.pseudo_label_generator, self.criterion = pseudo_label_generator, criterion

    def forward(self, y, y_adv, weight=None, mode="min"):
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.ground_truth, self.ground_false = self.pseudo_label_generator(y.detach())
        return self.criterion(y_adv, self.ground_truth if mode == "min" else self.ground_false, weight)


def _mdd(backend):
    if backend == "hal_ext":
        from hal_ext.alignment.mdd import ClassificationMarginDisparityDiscrepancy
        return types.SimpleNamespace(ClassificationMarginDisparityDiscrepancy=ClassificationMarginDisparityDiscrepancy)
    return types.SimpleNamespace(ClassificationMarginDisparityDiscrepancy=_ReferenceClassificationMDD)


def _regda(backend):
    if backend == "reference":
        return types.SimpleNamespace(
            PseudoLabelGenerator2d=_ReferencePseudoLabelGenerator2d,
            RegressionDisparity=_ReferenceRegressionDisparity,
            JointsKLLoss=_ReferenceJointsKLLoss,
            JointsMSELoss=_ReferenceJointsMSELoss)
    from hal_ext.alignment.regda import PseudoLabelGenerator2d, RegressionDisparity
    from hal_ext.keypoint_detection import JointsKLLoss, JointsMSELoss
    return types.SimpleNamespace(PseudoLabelGenerator2d=PseudoLabelGenerator2d,
                                 RegressionDisparity=RegressionDisparity,
                                 JointsKLLoss=JointsKLLoss, JointsMSELoss=JointsMSELoss)


def load(method: str, backend: str) -> types.SimpleNamespace:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return {"mcd": _mcd, "mdd": _mdd, "regda": _regda}[method](backend)

