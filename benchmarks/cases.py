"""The registry of benchmarked ops: one `Case` per op of SPEC.md.

A case says how to make inputs for a shape, which callables compete (the tllib-semantics eager
reference, what `torch.compile` compiles, hal_ext's public API), which inputs receive gradients, the
bytes a fused implementation must move, and the shapes to run. hal_ext's side is imported lazily:
a case whose public API is not importable yet is skipped with a one-line note, and runs as soon as
the op is merged. References come from `hal_ext.reference` where it has them, else from
`benchmarks.baselines` (tllib's own torch calls).

Shapes: classification (N, C) with batches 32/64/256 and the classes of tllib's example scripts
(12 VisDA-2017, 31 Office-31, 65 Office-Home, 345 DomainNet, 1000 ImageNet); regression (N, F) with
2 (MPI3D) or 3 (dSprites) factors; keypoints (B, K, 64, 64) with batches 32 (regda.py default), 36
and 64, K = 16 (Human3.6M), 18 (SURREAL/LSP-like), 21 (hands: RHD, H3D). Each op also has one scaling
sweep over the batch.
"""
import importlib
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from . import baselines

CLASSES = (12, 31, 65, 345, 1000)
BATCHES = (32, 64, 256)
KEYPOINT_SHAPES = tuple((b, k, 64, 64) for b in (32, 36, 64) for k in (16, 18, 21))


class Unavailable(Exception):
    """The hal_ext API this case needs is not importable (the op is not merged yet)."""


def public(module, name):
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as error:
        raise Unavailable(f"{module}.{name} not available yet ({type(error).__name__})") from None


def reference(module, name, fallback):
    """`hal_ext.reference.<module>.<name>` if it exists, else the local tllib-semantics baseline."""
    try:
        return getattr(importlib.import_module(f"hal_ext.reference.{module}"), name), f"hal_ext.reference.{module}.{name}"
    except (ImportError, AttributeError):
        return fallback, f"benchmarks.baselines.{fallback.__name__}"


@dataclass
class Case:
    name: str
    api: str                                   # the hal_ext public name benchmarked
    kind: str                                  # "overhead" (small loss) or "memory" (heatmap op)
    make_inputs: Callable                      # (shape, device, dtype) -> list of tensors
    reference: Callable                        # (shape) -> (fn(*inputs), source description)
    hal: Callable                              # (shape) -> fn(*inputs); may raise Unavailable
    bytes: Callable                            # (shape, itemsize, mode) -> bytes a fused op must move
    shapes: dict                               # {"quick", "full", "sweep", "sweep_cuda" (added on GPUs): [...]}
    diff: Sequence[int] = ()                   # inputs that receive gradients; () = forward only
    outputs: str = "scalar"                    # floor op outputs: "scalar" | "like" | "like2"
    compile_target: Optional[Callable] = None  # (shape) -> (fn, description); default: the reference
    notes: str = ""

    @property
    def modes(self):
        return ("fwd", "fwd+bwd") if self.diff else ("fwd",)


def numel(shape):
    n = 1
    for s in shape:
        n *= s
    return n


def _probs(shape, device, dtype, count):
    return [torch.randn(shape, device=device).softmax(1).to(dtype) for _ in range(count)]


def _logits(shape, device, dtype, count):
    return [torch.randn(shape, device=device).mul(3).to(dtype) for _ in range(count)]


def _heatmaps(shape, device, dtype):
    """(prediction, target heatmap, weight): a prediction, a Gaussian target, visibility weights."""
    y = torch.randn(shape, device=device).to(dtype)
    target = baselines.fast_pseudo_label_2d(torch.randn(shape, device=device))[0].to(dtype)
    weight = torch.ones(shape[:2], device=device, dtype=dtype)
    return y, target, weight


def _module_call(factory):
    """fn(*inputs) calling a freshly built module instance (hal_ext's classes)."""
    def make(shape):
        module = factory(shape)
        return lambda *inputs: module(*inputs)
    return make


def _cls_shapes(quick):
    return {"quick": quick, "full": [(n, c) for n in BATCHES for c in CLASSES],
            "sweep": [(n, 1000) for n in (1024, 4096, 16384)], "sweep_cuda": [(65536, 1000), (262144, 1000)]}


def _fixed(fn, source):
    return lambda shape: (fn, source)


def _classification_cases():
    cd_ref = reference("mcd", "classifier_discrepancy", None)
    ent_ref = reference("mcd", "entropy", None)
    # tllib's literal log(clamp(...)): hal_ext.reference's shift_log pins the boundary gradient on every torch
    sl_ref = (baselines.shift_log, "benchmarks.baselines.shift_log (tllib's torch calls)")
    cases = [
        Case("classifier_discrepancy", "hal_ext.alignment.mcd.classifier_discrepancy", "overhead",
             lambda s, d, t: _probs(s, d, t, 2), _fixed(*cd_ref),
             lambda s: public("hal_ext.alignment.mcd", "classifier_discrepancy"),
             lambda s, b, m: (2 * numel(s) * b) + (4 * numel(s) * b if m == "fwd+bwd" else 0),
             _cls_shapes([(32, 31)]), diff=(0, 1)),
        Case("entropy", "hal_ext.alignment.mcd.entropy", "overhead",
             lambda s, d, t: _probs(s, d, t, 1), _fixed(*ent_ref),
             lambda s: public("hal_ext.alignment.mcd", "entropy"),
             lambda s, b, m: numel(s) * b * (2 if m == "fwd+bwd" else 1),
             _cls_shapes([(32, 31)]), diff=(0,)),
        Case("shift_log", "hal_ext.alignment.mdd.shift_log", "memory",
             lambda s, d, t: [torch.rand(s, device=d).to(t)], _fixed(*sl_ref),
             lambda s: public("hal_ext.alignment.mdd", "shift_log"),
             lambda s, b, m: numel(s) * b * (5 if m == "fwd+bwd" else 2),
             _cls_shapes([(256, 345)]), diff=(0,), outputs="like"),
        Case("classification_mdd", "hal_ext.alignment.mdd.ClassificationMarginDisparityDiscrepancy", "overhead",
             lambda s, d, t: _logits(s, d, t, 4),
             _fixed(baselines.classification_mdd, "benchmarks.baselines.classification_mdd (tllib's torch calls)"),
             _module_call(lambda s: public("hal_ext.alignment.mdd", "ClassificationMarginDisparityDiscrepancy")(margin=4.0)),
             lambda s, b, m: numel(s) * b * (8 if m == "fwd+bwd" else 4),
             _cls_shapes([(32, 31)]), diff=(1, 3)),
    ]
    # MCD's entropy and the discrepancy come from hal_ext.reference; there is no fallback there.
    return [c for c in cases if c.reference(None)[0] is not None]


def _regression_case(name, loss_function):
    def ref(y_s, y_s_adv, y_t, y_t_adv):
        return baselines.regression_mdd(y_s, y_s_adv, y_t, y_t_adv, 1.0, loss_function)
    ref.__name__ = f"regression_mdd_{name}"

    def hal(shape):
        cls = public("hal_ext.alignment.mdd", "RegressionMarginDisparityDiscrepancy")
        return cls(margin=1.0, loss_function=loss_function)

    return Case(f"regression_mdd_{name}", f"hal_ext.alignment.mdd.RegressionMarginDisparityDiscrepancy(loss_function=F.{loss_function.__name__})",
                "overhead", lambda s, d, t: [torch.rand(s, device=d).to(t) for _ in range(4)],
                _fixed(ref, f"benchmarks.baselines.regression_mdd(F.{loss_function.__name__}) (tllib's torch calls)"),
                _module_call(hal), lambda s, b, m: numel(s) * b * (10 if m == "fwd+bwd" else 4),
                {"quick": [(256, 3)], "full": [(n, f) for n in BATCHES for f in (2, 3)],
                 "sweep": [(n, 3) for n in (4096, 65536, 1048576)], "sweep_cuda": [(16777216, 3)]}, diff=(1, 3))


def _keypoint_shapes(quick=((32, 21, 64, 64),)):
    return {"quick": list(quick), "full": list(KEYPOINT_SHAPES),
            "sweep": [(b, 21, 64, 64) for b in (8, 32, 128)], "sweep_cuda": [(b, 21, 64, 64) for b in (256, 512)]}


def _keypoint_cases():
    table_src = "benchmarks.baselines.TableGenerator2d (tllib's W*H*H*W table + NumPy round trip)"
    fast_src = "torch.compile(benchmarks.baselines.fast_pseudo_label_2d): tllib's vectorised generator"
    heat_bytes = lambda s, b, m: numel(s) * (b + 8)  # read y, write two float32 maps

    def table(shape):
        return baselines.TableGenerator2d(shape[1], shape[2], shape[3]), table_src

    def rd_ref(shape):
        gen = baselines.TableGenerator2d(shape[1], shape[2], shape[3])
        kl = lambda o, t, w: baselines.joints_kl(o, t, w, epsilon=1e-7)
        return baselines.regression_disparity(gen, kl), "tllib RegressionDisparity(PseudoLabelGenerator2d, JointsKLLoss(1e-7)) (baselines)"

    def rd_compile(shape):
        kl = lambda o, t, w: baselines.joints_kl(o, t, w, epsilon=1e-7)
        return baselines.regression_disparity(baselines.fast_pseudo_label_2d, kl), \
            "torch.compile of RegressionDisparity(FastPseudoLabelGenerator2d, JointsKLLoss(1e-7)) (baselines)"

    def rd_hal(shape):
        regda = "hal_ext.alignment.regda"
        gen = public(regda, "PseudoLabelGenerator2d")(shape[1], shape[2], shape[3])
        kl = public("hal_ext.keypoint_detection", "JointsKLLoss")(epsilon=1e-7)
        return public(regda, "RegressionDisparity")(gen, kl)

    def two_maps(s, d, t):
        y, target, weight = _heatmaps(s, d, t)
        return [y, target, weight]

    def prediction_pair(s, d, t):
        return [torch.randn(s, device=d).to(t), torch.randn(s, device=d).to(t),
                torch.ones(s[:2], device=d, dtype=t)]

    return [
        Case("pseudo_label_2d", "hal_ext.alignment.regda.PseudoLabelGenerator2d", "memory",
             lambda s, d, t: [torch.randn(s, device=d).to(t)], table,
             _module_call(lambda s: public("hal_ext.alignment.regda", "PseudoLabelGenerator2d")(s[1], s[2], s[3])),
             heat_bytes, _keypoint_shapes(), outputs="like2",
             compile_target=_fixed(baselines.fast_pseudo_label_2d, fast_src),
             notes="compile contender = torch.compile of tllib's Fast generator (NumPy cannot be compiled)"),
        Case("fast_pseudo_label_2d", "hal_ext.alignment.regda.FastPseudoLabelGenerator2d", "memory",
             lambda s, d, t: [torch.randn(s, device=d).to(t)],
             _fixed(baselines.fast_pseudo_label_2d, "benchmarks.baselines.fast_pseudo_label_2d (tllib's torch calls)"),
             _module_call(lambda s: public("hal_ext.alignment.regda", "FastPseudoLabelGenerator2d")()),
             heat_bytes, _keypoint_shapes(), outputs="like2"),
        Case("joints_mse", "hal_ext.keypoint_detection.JointsMSELoss", "memory", two_maps,
             _fixed(baselines.joints_mse, "benchmarks.baselines.joints_mse (tllib's torch calls)"),
             _module_call(lambda s: public("hal_ext.keypoint_detection", "JointsMSELoss")()),
             lambda s, b, m: numel(s) * b * (5 if m == "fwd+bwd" else 2), _keypoint_shapes(), diff=(0,)),
        Case("joints_kl", "hal_ext.keypoint_detection.JointsKLLoss", "memory", two_maps,
             _fixed(baselines.joints_kl, "benchmarks.baselines.joints_kl (tllib's torch calls)"),
             _module_call(lambda s: public("hal_ext.keypoint_detection", "JointsKLLoss")()),
             lambda s, b, m: numel(s) * b * (5 if m == "fwd+bwd" else 2), _keypoint_shapes(), diff=(0,)),
        Case("regression_disparity", "hal_ext.alignment.regda.RegressionDisparity (fused, JointsKLLoss)", "memory",
             prediction_pair, rd_ref, _module_call(rd_hal),
             lambda s, b, m: numel(s) * b * (4 if m == "fwd+bwd" else 2), _keypoint_shapes(), diff=(1,),
             compile_target=rd_compile,
             notes="inputs (y, y_adv, weight), mode='min'; compile contender uses tllib's Fast generator"),
    ]


def all_cases():
    return (_classification_cases() + [_regression_case("l1", F.l1_loss), _regression_case("mse", F.mse_loss)]
            + _keypoint_cases())
