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

BACKENDS = ("reference", "hal_ext")


def _try(importer, fallback_name):
    # TEMPORARY: stand-ins for names that have not landed on this branch yet.
    try:
        return importer()
    except (ImportError, AttributeError):
        import _standins
        return getattr(_standins, fallback_name)


def _mcd(backend):
    if backend == "hal_ext":
        from hal_ext.alignment import mcd as m
    else:
        from hal_ext.reference import mcd as m
    return types.SimpleNamespace(
        classifier_discrepancy=m.classifier_discrepancy,
        entropy=_try(lambda: m.entropy, "entropy"))


class _ReferenceClassificationMDD(nn.Module):
    """tllib's ClassificationMarginDisparityDiscrepancy module over the reference function."""

    def __init__(self, margin=4, reduction="mean"):
        super().__init__()
        self.margin, self.reduction = margin, reduction

    def forward(self, y_s, y_s_adv, y_t, y_t_adv, w_s=None, w_t=None):
        from hal_ext.reference import mdd
        return mdd.classification_mdd(y_s, y_s_adv, y_t, y_t_adv, w_s, w_t, margin=self.margin,
                                      reduction=self.reduction)


class _ReferenceJointsKLLoss(nn.Module):
    """tllib's JointsKLLoss module over the reference function."""

    def __init__(self, reduction="mean", epsilon=0.):
        super().__init__()
        self.reduction, self.epsilon = reduction, epsilon

    def forward(self, output, target, target_weight=None):
        from hal_ext.reference import keypoint_detection
        return keypoint_detection.joints_kl_loss(output, target, target_weight, reduction=self.reduction,
                                                 epsilon=self.epsilon)


class _ReferenceJointsMSELoss(nn.Module):
    """tllib's JointsMSELoss module over the reference function."""

    def __init__(self, reduction="mean"):
        super().__init__()
        self.reduction = reduction

    def forward(self, output, target, target_weight=None):
        from hal_ext.reference import keypoint_detection
        return keypoint_detection.joints_mse_loss(output, target, target_weight, reduction=self.reduction)


class _ReferencePseudoLabelGenerator2d(nn.Module):
    """tllib's PseudoLabelGenerator2d module over the reference function."""

    def __init__(self, num_keypoints, height=64, width=64, sigma=2):
        super().__init__()
        self.num_keypoints, self.height, self.width, self.sigma = num_keypoints, height, width, sigma

    def forward(self, y):
        from hal_ext.reference import regda
        return regda.pseudo_label_2d(y, self.sigma)


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


def _has(module, fn):
    # TEMPORARY: whether the reference function has landed on this branch yet.
    import importlib
    try:
        return hasattr(importlib.import_module(module), fn)
    except ImportError:
        return False


def _mdd(backend):
    if backend == "hal_ext":
        def cmdd():
            from hal_ext.alignment.mdd import ClassificationMarginDisparityDiscrepancy as c
            return c
        return types.SimpleNamespace(
            ClassificationMarginDisparityDiscrepancy=_try(cmdd, "ClassificationMarginDisparityDiscrepancy"))
    if not _has("hal_ext.reference.mdd", "classification_mdd"):
        import _standins
        return types.SimpleNamespace(ClassificationMarginDisparityDiscrepancy=_standins.ClassificationMarginDisparityDiscrepancy)
    return types.SimpleNamespace(ClassificationMarginDisparityDiscrepancy=_ReferenceClassificationMDD)


def _regda(backend):
    if backend == "reference":
        import _standins
        kd = _has("hal_ext.reference.keypoint_detection", "joints_kl_loss")
        plg = _has("hal_ext.reference.regda", "pseudo_label_2d")
        return types.SimpleNamespace(
            PseudoLabelGenerator2d=_ReferencePseudoLabelGenerator2d if plg else _standins.PseudoLabelGenerator2d,
            RegressionDisparity=_ReferenceRegressionDisparity,
            JointsKLLoss=_ReferenceJointsKLLoss if kd else _standins.JointsKLLoss,
            JointsMSELoss=_ReferenceJointsMSELoss if kd else _standins.JointsMSELoss)

    def name(pkg, n):
        def imp():
            import importlib
            return getattr(importlib.import_module(pkg), n)
        return _try(imp, n)
    return types.SimpleNamespace(
        PseudoLabelGenerator2d=name("hal_ext.alignment.regda", "PseudoLabelGenerator2d"),
        RegressionDisparity=name("hal_ext.alignment.regda", "RegressionDisparity"),
        JointsKLLoss=name("hal_ext.keypoint_detection", "JointsKLLoss"),
        JointsMSELoss=name("hal_ext.keypoint_detection", "JointsMSELoss"))


def load(method: str, backend: str) -> types.SimpleNamespace:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return {"mcd": _mcd, "mdd": _mdd, "regda": _regda}[method](backend)


# The models are hal_ext's public (tllib-compatible) modules in both back-ends.
def ImageClassifierHead(*args, **kwargs):
    from hal_ext.alignment.mcd import ImageClassifierHead as c
    return c(*args, **kwargs)


def ImageClassifier(*args, **kwargs):
    def imp():
        from hal_ext.alignment.mdd import ImageClassifier as c
        return c
    return _try(imp, "ImageClassifier")(*args, **kwargs)


def PoseResNet2d(*args, **kwargs):
    def imp():
        from hal_ext.alignment.regda import PoseResNet2d as c
        return c
    return _try(imp, "PoseResNet2d")(*args, **kwargs)
