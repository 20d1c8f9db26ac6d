"""Property-based tests (Hypothesis): every public op against an independent float64 oracle written from
SPEC.md (tests/op_catalog.py), values and gradients, at SPEC tolerances, over drawn shapes, dtypes,
layouts (contiguous, transposed, sliced views), reductions, margins, weights, sigmas and values
(ties, NaN/Inf, large magnitudes, all-negative heatmaps, one-element and empty batches).

Budget: HYPOTHESIS_PROFILE=ci (default, derandomized, bounded) or HYPOTHESIS_PROFILE=long (local).
An op that has not landed on this branch yet generates no test (see op_catalog.load)."""
import pytest
import torch
from hypothesis import given, strategies as st

import op_catalog as cat
from helpers import DEVICES, FLOAT_DTYPES, assert_close, compare_with_reference

VALUES = ["normal", "ties", "special", "large"]
LAYOUTS = ["contiguous", "transposed", "sliced"]


def make(shape, seed, dtype, device, values="normal", layout="contiguous", kind="normal"):
    """A tensor of `shape` (kind: normal logits | prob in [0, 1] | softmax rows | negative), in
    `dtype` on `device`, with the drawn value pattern and memory layout."""
    g = torch.Generator().manual_seed(seed)
    n = 1
    for s in shape:
        n *= s
    if kind == "prob":
        t = torch.rand(shape, generator=g, dtype=torch.float64)
    elif kind == "negative":
        t = -torch.rand(shape, generator=g, dtype=torch.float64) - 1e-3
    else:
        t = torch.randn(shape, generator=g, dtype=torch.float64)
    if values == "ties":
        t = torch.round(t * 2) / 2 if kind != "prob" else torch.round(t * 4) / 4
    elif values == "large" and kind == "normal":
        t = t * 30
    elif values == "special" and n:
        flat = t.view(-1)
        picks = torch.randint(0, n, (min(3, n),), generator=g)
        specials = torch.tensor([float("nan"), float("inf"), -float("inf")], dtype=torch.float64)
        flat[picks] = specials[torch.randint(0, 3, (len(picks),), generator=g)]
    if kind == "softmax" and t.dim() > 1:
        t = t.softmax(1)
    t = t.to(dtype)
    if layout == "transposed" and t.dim() >= 2:
        t = t.transpose(-1, -2).contiguous().transpose(-1, -2)
    elif layout == "sliced" and t.dim() >= 1:
        buf = torch.zeros(*shape[:-1], 2 * shape[-1], dtype=dtype)
        buf[..., ::2] = t
        t = buf[..., ::2]
    return t.to(device)


common = dict(
    seed=st.integers(0, 2**31 - 1),
    dtype=st.sampled_from(FLOAT_DTYPES),
    device=st.sampled_from(DEVICES),
    values=st.sampled_from(VALUES),
    layout=st.sampled_from(LAYOUTS),
)
batch = st.sampled_from([0, 1, 2, 3, 7, 16])
classes = st.sampled_from([1, 2, 3, 12, 31])
reductions = st.sampled_from(["mean", "sum", "none"])


def check_float32_labels(fn, oracle, inputs, dtype, differentiable):
    """As compare_with_reference, but at no tighter than float32 tolerances: SPEC makes the pseudo labels
    float32 (their Gaussian values agree to the last float32 bit only), so a float64 loss over them is
    float32-accurate."""
    tol_dtype = torch.float32 if dtype == torch.float64 else dtype
    leaves = [t.detach().clone().requires_grad_(i in differentiable) for i, t in enumerate(inputs)]
    oracle_in = [t.detach().to(torch.float64).requires_grad_(i in differentiable) for i, t in enumerate(inputs)]
    out, expected = fn(*leaves), oracle(*oracle_in)
    assert out.dtype == dtype
    assert_close(out, expected, tol_dtype, "loss")
    g = torch.randn(expected.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grads = torch.autograd.grad(out, [leaves[i] for i in differentiable], g.to(out.dtype), allow_unused=True)
    want = torch.autograd.grad(expected, [oracle_in[i] for i in differentiable], g, allow_unused=True)
    for i, got, exp in zip(differentiable, grads, want):
        got = torch.zeros_like(leaves[i]) if got is None else got
        exp = torch.zeros_like(oracle_in[i]) if exp is None else exp
        assert got.dtype == dtype
        assert_close(got, exp, tol_dtype, f"gradient of input {i}")


def check(fn, oracle, inputs, dtype, differentiable):
    compare_with_reference(fn, oracle, inputs, dtype, differentiable, reduced_elements=inputs[0].numel(),
                           what=f"{[tuple(t.shape) for t in inputs]} strides {[t.stride() for t in inputs]}")


# ------------------------------------------------------------------------------------ MCD

if cat.load("classifier_discrepancy") is not None:
    @given(shape=st.lists(st.integers(0, 9), min_size=1, max_size=3), **common)
    def test_classifier_discrepancy(shape, seed, dtype, device, values, layout):
        fn = cat.load("classifier_discrepancy")
        a = make(shape, seed, dtype, device, values, layout, kind="softmax")
        b = make(shape, seed + 1, dtype, device, values, "contiguous", kind="softmax")
        check(fn, cat.oracle_classifier_discrepancy, [a, b], dtype, (0, 1))


if cat.load("entropy") is not None:
    @given(n=batch, c=classes, **common)
    def test_entropy(n, c, seed, dtype, device, values, layout):
        fn = cat.load("entropy")
        p = make((n, c), seed, dtype, device, values if values != "large" else "normal", layout, kind="softmax")
        check(fn, cat.oracle_entropy, [p], dtype, (0,))


# ------------------------------------------------------------------------------------ MDD

if cat.load("shift_log") is not None:
    @given(shape=st.lists(st.integers(0, 9), min_size=1, max_size=3), offset=st.sampled_from([1e-6, 1e-3, 0.1, 0.5]),
           **common)
    def test_shift_log(shape, offset, seed, dtype, device, values, layout):
        fn = cat.load("shift_log")
        if dtype == torch.float16:
            offset = max(offset, 1e-3)  # the gradient 1/offset must be representable in float16
        x = make(shape, seed, dtype, device, values if values != "large" else "normal", layout, kind="prob")
        check(lambda t: fn(t, offset), lambda t: cat.oracle_shift_log(t, offset), [x], dtype, (0,))


def mdd_weights(draw_weights, shape, seed, dtype, device):
    if not draw_weights:
        return None, None
    return (make(shape, seed + 7, dtype, device, kind="prob"), make(shape, seed + 8, dtype, device, kind="prob"))


if cat.load("ClassificationMarginDisparityDiscrepancy") is not None:
    @given(n=batch, c=classes, extra=st.sampled_from([(), (3,), (2, 2)]), margin=st.sampled_from([1, 4, 0.5]),
           reduction=reductions, weights=st.booleans(), **common)
    def test_classification_mdd(n, c, extra, margin, reduction, weights, seed, dtype, device, values, layout):
        cls = cat.load("ClassificationMarginDisparityDiscrepancy")
        shape = (n, c, *extra)
        ys = [make(shape, seed + i, dtype, device, values, layout if i % 2 else "contiguous") for i in range(4)]
        w_s, w_t = mdd_weights(weights, (n, *extra), seed, dtype, device)
        loss = cls(margin=margin, reduction=reduction)
        check(lambda a, b, c_, d: loss(a, b, c_, d, w_s, w_t),
              lambda a, b, c_, d: cat.oracle_classification_mdd(
                  a, b, c_, d, None if w_s is None else w_s.double(), None if w_t is None else w_t.double(),
                  margin=margin, reduction=reduction),
              ys, dtype, (1, 3))


if cat.load("RegressionMarginDisparityDiscrepancy") is not None:
    @given(n=batch, f=st.sampled_from([1, 2, 5, 17]), margin=st.sampled_from([1, 4, 0.5]),
           loss_name=st.sampled_from(["l1", "mse"]), reduction=reductions, weights=st.booleans(), **common)
    def test_regression_mdd(n, f, margin, loss_name, reduction, weights, seed, dtype, device, values, layout):
        import torch.nn.functional as F
        cls = cat.load("RegressionMarginDisparityDiscrepancy")
        shape = (n, f)
        ys = [make(shape, seed + i, dtype, device, values, layout if i % 2 else "contiguous", kind="prob")
              for i in range(4)]
        w_s, w_t = mdd_weights(weights, shape, seed, dtype, device)
        loss = cls(margin=margin, loss_function=F.l1_loss if loss_name == "l1" else F.mse_loss, reduction=reduction)
        check(lambda a, b, c, d: loss(a, b, c, d, w_s, w_t),
              lambda a, b, c, d: cat.oracle_regression_mdd(
                  a, b, c, d, None if w_s is None else w_s.double(), None if w_t is None else w_t.double(),
                  margin=margin, loss=loss_name, reduction=reduction),
              ys, dtype, (1, 3))


if cat.load("MarginDisparityDiscrepancy") is not None:
    @given(n=batch, margin=st.sampled_from([1, 4]), reduction=reductions, **common)
    def test_generic_mdd_with_callables(n, margin, reduction, seed, dtype, device, values, layout):
        cls = cat.load("MarginDisparityDiscrepancy")

        def sq(y, y_adv):
            return (y_adv - y.detach()) ** 2

        def oracle(y_s, y_s_adv, y_t, y_t_adv):
            # The user's callables run in the input dtype, as in tllib: their rounding is not hal_ext's to
            # remove (in bfloat16 it moves the nearly cancelling margin * d_s - d_t by a few percent);
            # the combination is the float64 oracle's.
            l_s = sq(y_s.to(dtype), y_s_adv.to(dtype)).double()
            l_t = sq(y_t.to(dtype), y_t_adv.to(dtype)).double()
            return cat.oracle_mdd_combine(l_s, l_t, margin, reduction, None, None)

        loss = cls(sq, sq, margin=margin, reduction=reduction)
        ys = [make((n, 3), seed + i, dtype, device, values, layout, kind="prob") for i in range(4)]
        check(loss, oracle, ys, dtype, (1, 3))


# ------------------------------------------------------------------------------------ RegDA

heatmap_values = st.sampled_from(["normal", "ties", "special", "negative"])


def heatmap(shape, seed, dtype, device, values, layout):
    if values == "negative":
        return make(shape, seed, dtype, device, "normal", layout, kind="negative")
    return make(shape, seed, dtype, device, values, layout)


def assert_pseudo_labels(got, want, what):
    gt, gf = got
    egt, egf = want
    assert gt.dtype == torch.float32 and gf.dtype == torch.float32, what
    assert gt.shape == egt.shape and gf.shape == egf.shape, what
    assert gt.device == egt.device, what
    assert torch.equal(gt.cpu() != 0, egt.cpu() != 0), f"{what}: non-zero pattern of ground_truth differs"
    assert torch.allclose(gt.cpu(), egt.cpu(), rtol=1e-6, atol=0), f"{what}: ground_truth values"
    assert_close(gf, egf.double(), torch.float32, f"{what}: ground_false")


gen_shapes = dict(b=st.sampled_from([0, 1, 2, 3]), k=st.sampled_from([1, 2, 5]), h=st.integers(1, 20),
                  w=st.integers(1, 20))

if cat.load("PseudoLabelGenerator2d") is not None:
    @given(sigma=st.sampled_from([1, 2, 1.5, 0.7, 3]), values=heatmap_values,
           **gen_shapes, **{k: v for k, v in common.items() if k != "values"})
    def test_pseudo_label_generator(b, k, h, w, sigma, seed, dtype, device, values, layout):
        gen = cat.load("PseudoLabelGenerator2d")(k, height=h, width=w, sigma=sigma)
        y = heatmap((b, k, h, w), seed, dtype, device, values, layout)
        assert_pseudo_labels(gen(y), cat.oracle_pseudo_labels(y, sigma), f"{tuple(y.shape)} sigma={sigma}")


if cat.load("FastPseudoLabelGenerator2d") is not None:
    @given(sigma=st.sampled_from([1, 2, 1.5, 0.7, 3]), values=heatmap_values,
           **gen_shapes, **{k: v for k, v in common.items() if k != "values"})
    def test_fast_pseudo_label_generator(b, k, h, w, sigma, seed, dtype, device, values, layout):
        gen = cat.load("FastPseudoLabelGenerator2d")(sigma=sigma)
        y = heatmap((b, k, h, w), seed, dtype, device, values, layout)
        assert_pseudo_labels(gen(y), cat.oracle_fast_pseudo_labels(y, sigma), f"{tuple(y.shape)} sigma={sigma}")


def joints_target(shape, seed, dtype, device, values, layout):
    t = make(shape, seed, dtype, device, "ties" if values == "ties" else "normal", layout, kind="prob")
    return t


if cat.load("JointsMSELoss") is not None:
    @given(reduction=st.sampled_from(["mean", "none"]), weights=st.booleans(), **gen_shapes, **common)
    def test_joints_mse(b, k, h, w, reduction, weights, seed, dtype, device, values, layout):
        loss = cat.load("JointsMSELoss")(reduction=reduction)
        out = make((b, k, h, w), seed, dtype, device, values, layout)
        target = joints_target((b, k, h, w), seed + 1, dtype, device, values, "contiguous")
        tw = make((b, k), seed + 2, dtype, device, kind="prob") if weights else None
        check(lambda o, t: loss(o, t, tw), lambda o, t: cat.oracle_joints_mse(
            o, t, None if tw is None else tw.double(), reduction), [out, target], dtype, (0,))


if cat.load("JointsKLLoss") is not None:
    @given(reduction=st.sampled_from(["mean", "none"]), epsilon=st.sampled_from([0.0, 1e-3, 0.1]),
           weights=st.booleans(), **gen_shapes, **common)
    def test_joints_kl(b, k, h, w, reduction, epsilon, weights, seed, dtype, device, values, layout):
        loss = cat.load("JointsKLLoss")(reduction=reduction, epsilon=epsilon)
        out = make((b, k, h, w), seed, dtype, device, values, layout)
        target = joints_target((b, k, h, w), seed + 1, dtype, device, values, "contiguous")
        tw = make((b, k), seed + 2, dtype, device, kind="prob") if weights else None
        check(lambda o, t: loss(o, t, tw), lambda o, t: cat.oracle_joints_kl(
            o, t, None if tw is None else tw.double(), reduction, epsilon), [out, target], dtype, (0,))


if cat.load("RegressionDisparity") is not None:
    @given(fast=st.booleans(), criterion=st.sampled_from(["mse", "kl"]), mode=st.sampled_from(["min", "max"]),
           sigma=st.sampled_from([1, 2, 1.5]), weights=st.booleans(), values=heatmap_values,
           **gen_shapes, **{k: v for k, v in common.items() if k != "values"})
    def test_regression_disparity(fast, criterion, mode, sigma, weights, b, k, h, w, seed, dtype, device, values,
                                  layout):
        if fast:
            gen = cat.load("FastPseudoLabelGenerator2d")(sigma=sigma)
            oracle_gen = cat.oracle_fast_pseudo_labels
        else:
            gen = cat.load("PseudoLabelGenerator2d")(k, height=h, width=w, sigma=sigma)
            oracle_gen = cat.oracle_pseudo_labels
        crit = cat.load("JointsMSELoss" if criterion == "mse" else "JointsKLLoss")()
        oracle_crit = cat.oracle_joints_mse if criterion == "mse" else cat.oracle_joints_kl
        disparity = cat.load("RegressionDisparity")(gen, crit)
        y = heatmap((b, k, h, w), seed, dtype, device, values, "contiguous")
        y_adv = make((b, k, h, w), seed + 1, dtype, device, "normal", layout)
        tw = make((b, k), seed + 2, dtype, device, kind="prob") if weights else None

        def oracle(y_, y_adv_):
            gt, gf = oracle_gen(y_, sigma)
            return oracle_crit(y_adv_, (gt if mode == "min" else gf).double(),
                               None if tw is None else tw.double())

        def run(y_, a):
            out = disparity(y_, a, tw, mode=mode)
            # the pseudo labels are float32, so (as in tllib) the loss is promoted to at least float32
            assert out.dtype == torch.promote_types(dtype, torch.float32), out.dtype
            return out.to(dtype)

        check_float32_labels(run, oracle, [y, y_adv], dtype, (1,))


def test_catalog_loads_without_error():
    """Every public name either loads or is absent because its module/attribute has not landed."""
    assert cat.load("classifier_discrepancy") is not None
    for name in cat.PUBLIC:
        cat.load(name)
