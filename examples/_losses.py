"""The one place where an example picks its loss back-end.

``load(method, backend)`` returns a namespace with the loss functions/modules the method's training
loop uses, either from hal_ext's fused public API (``backend="hal_ext"``: what a tllib user gets by
changing ``tllib`` to ``hal_ext`` in the imports) or from the pure-torch reference with tllib's
semantics (``backend="reference"``: ``hal_ext.reference``). The models (ImageClassifierHead,
ImageClassifier, PoseResNet2d) are the same in both runs, so with the same seed the two runs differ
only by the floating-point rounding of the losses.
"""
import types

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


def _mdd(backend):
    if backend == "hal_ext":
        def cmdd():
            from hal_ext.alignment.mdd import ClassificationMarginDisparityDiscrepancy as c
            return c
    else:
        def cmdd():
            from hal_ext.reference.mdd import ClassificationMarginDisparityDiscrepancy as c
            return c
    return types.SimpleNamespace(
        ClassificationMarginDisparityDiscrepancy=_try(cmdd, "ClassificationMarginDisparityDiscrepancy"))


def _regda(backend):
    pkg_regda = "hal_ext.alignment.regda" if backend == "hal_ext" else "hal_ext.reference.regda"
    pkg_kd = "hal_ext.keypoint_detection" if backend == "hal_ext" else "hal_ext.reference.keypoint_detection"

    def name(pkg, n):
        def imp():
            import importlib
            return getattr(importlib.import_module(pkg), n)
        return _try(imp, n)
    return types.SimpleNamespace(
        PseudoLabelGenerator2d=name(pkg_regda, "PseudoLabelGenerator2d"),
        RegressionDisparity=name(pkg_regda, "RegressionDisparity"),
        JointsKLLoss=name(pkg_kd, "JointsKLLoss"),
        JointsMSELoss=name(pkg_kd, "JointsMSELoss"))


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
