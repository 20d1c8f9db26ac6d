"""hal_ext classification MDD (fused hal_ext::classification_mdd) against the float64 tllib reference
(SPEC "MDD": ClassificationMarginDisparityDiscrepancy)."""
import pytest
import torch

from hal_ext.alignment.mdd import ClassificationMarginDisparityDiscrepancy, MarginDisparityDiscrepancy
from hal_ext.ops.classification_mdd import classification_mdd
from hal_ext.reference import mdd as reference
from helpers import DEVICES, FLOAT_DTYPES, NATIVE, assert_close, compare_with_reference

REDUCTIONS = ["mean", "sum", "none"]


def _logits(shape, g, scale=1.0):
    return torch.randn(shape, generator=g) * scale


def sample_inputs(device, dtype):
    """(name, [y_s, y_s_adv, y_t, y_t_adv], kwargs) cases shared by the value, gradient and opcheck tests."""
    g = torch.Generator().manual_seed(0)
    cases = []
    shapes = [(1, 1), (1, 5), (32, 31), (64, 1000), (256, 345), (6, 7, 3, 5), (5, 4, 9), (0, 31), (0, 3, 4)]
    for i, shape in enumerate(shapes):
        tensors = [_logits(shape, g, 3.0) for _ in range(4)]
        cases.append((f"{shape}", tensors, dict(margin=[4.0, 1.0][i % 2], reduction=REDUCTIONS[i % 3])))
    # Argmax ties: small integer logits (first maximum wins).
    ties = [torch.randint(0, 3, (16, 8), generator=g).float() for _ in range(4)]
    for reduction in REDUCTIONS:
        cases.append((f"ties-{reduction}", [t.clone() for t in ties], dict(margin=4.0, reduction=reduction)))
    # NaN in y_s and y_t (NaN is the maximum; the first NaN wins).
    y_s, y_t = _logits((8, 6), g), _logits((8, 6), g)
    y_s[0, 2] = y_s[0, 4] = float("nan")
    y_s[3, 5] = float("nan")
    y_t[1, 0] = float("nan")
    y_t[2, 3] = y_t[2, 1] = float("nan")
    cases.append(("nan-in-y", [y_s, _logits((8, 6), g), y_t, _logits((8, 6), g)], dict(margin=4.0, reduction="none")))
    # Extreme logits |z| ~ 80, and rows where the argmax class holds nearly all the probability (1 - p_h down to
    # ~1e-5: float32 must not compute 1 - p_h by subtraction; much closer to 1 the float64 oracle itself
    # loses its digits).
    extreme = [_logits((32, 31), g, 80.0) for _ in range(4)]
    cases.append(("extreme-80", extreme, dict(margin=4.0, reduction="none")))
    confident = [_logits((32, 31), g) for _ in range(4)]
    h_s, h_t = confident[0].argmax(1), confident[2].argmax(1)
    confident[1][torch.arange(32), h_s] += torch.linspace(5, 16, 32)
    confident[3][torch.arange(32), h_t] += torch.linspace(5, 16, 32)
    cases.append(("p_h-near-1", confident, dict(margin=4.0, reduction="none")))
    unlikely = [_logits((32, 31), g) for _ in range(4)]
    unlikely[3][torch.arange(32), unlikely[2].argmax(1)] -= torch.linspace(5, 16, 32)
    cases.append(("p_h-near-0", unlikely, dict(margin=1.0, reduction="none")))
    # Weights (per sample, and per position for K-dim logits).
    w = [_logits((32, 31), g) for _ in range(4)]
    cases.append(("weights", w, dict(w_s=torch.rand(32, generator=g), w_t=torch.rand(32, generator=g),
                                     margin=4.0, reduction="mean")))
    cases.append(("weight-s-only", [t.clone() for t in w], dict(w_s=torch.rand(32, generator=g), reduction="sum")))
    kd = [_logits((4, 5, 3, 2), g) for _ in range(4)]
    cases.append(("weights-kdim", kd, dict(w_s=torch.rand(4, 3, 2, generator=g), w_t=torch.rand(2, generator=g),
                                           margin=2.0, reduction="none")))
    # Non-contiguous views: transposed (N, C) and a permuted K-dim tensor.
    nc = [_logits((31, 32), g).t() for _ in range(4)]
    cases.append(("non-contiguous", nc, dict(margin=4.0, reduction="mean")))
    perm = [_logits((3, 2, 5, 4), g).permute(0, 3, 1, 2) for _ in range(4)]
    cases.append(("non-contiguous-kdim", perm, dict(margin=4.0, reduction="sum")))

    def move(t):
        return t.to(device, dtype) if isinstance(t, torch.Tensor) else t

    return [(name, [move(t) for t in ts], {k: move(v) for k, v in kw.items()}) for name, ts, kw in cases]


def _op_args(ts, kw):
    """The operators' positional arguments for a sample case: (y_s, y_s_adv, y_t, y_t_adv, w_s, w_t, margin,
    reduction code)."""
    red = {"none": 0, "mean": 1, "sum": 2}[kw.get("reduction", "mean")]
    return (*ts, kw.get("w_s"), kw.get("w_t"), float(kw.get("margin", 4.0)), red)


def _reduced(ts):
    return ts[0].numel()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_matches_reference(device, dtype):
    for name, ts, kw in sample_inputs(device, dtype):
        kw64 = {k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
        compare_with_reference(lambda *a: classification_mdd(*a, **kw),
                               lambda *a: reference.classification_mdd(*a, **kw64),
                               ts, dtype, differentiable=(1, 3), reduced_elements=_reduced(ts), what=name)


@pytest.mark.parametrize("device", DEVICES)
def test_module_matches_reference_and_gives_no_grad_to_y(device):
    g = torch.Generator().manual_seed(1)
    ts = [torch.randn(16, 10, generator=g).to(device).requires_grad_() for _ in range(4)]
    for margin in (1, 4):
        for reduction in REDUCTIONS:
            loss = ClassificationMarginDisparityDiscrepancy(margin=margin, reduction=reduction)
            out = loss(*ts)
            expected = reference.classification_mdd(*ts, margin=margin, reduction=reduction)
            assert_close(out, expected, torch.float32, f"module margin={margin} {reduction}")
            grads = torch.autograd.grad(out.sum(), ts, allow_unused=True)
            assert grads[0] is None and grads[2] is None
            assert grads[1] is not None and grads[3] is not None


@pytest.mark.parametrize("device", DEVICES)
def test_argmax_semantics_exact(device):
    # The saved argmax equals torch.max's indices (ties, NaN), for (N, C) and K-dim logits.
    if not NATIVE:
        pytest.skip("checks the native operator's saved argmax")
    for shape in [(64, 7), (4, 5, 3, 6)]:
        y = torch.randint(0, 3, shape).float()
        y[0, 1] = float("nan")
        y[1, 2] = float("nan")
        y[1, 4] = float("nan")
        y = y.to(device)
        _, _, argmax = torch.ops.hal_ext.classification_mdd(y, torch.randn_like(y), y, torch.randn_like(y),
                                                            None, None, 4.0, 0)
        expected = y.max(dim=1).indices.reshape(-1)
        assert torch.equal(argmax[0], expected) and torch.equal(argmax[1], expected)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch(device):
    y = torch.empty(0, 5, device=device, requires_grad=True)
    assert torch.isnan(classification_mdd(y, y, y, y))
    out = classification_mdd(y, y, y, y, reduction="sum")
    assert out.item() == 0
    out.backward()
    assert classification_mdd(y, y, y, y, reduction="none").shape == (0,)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", ["2d", "kdim", "weights"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck(device, case, reduction):
    g = torch.Generator().manual_seed(2)
    shape = (6, 5) if case != "kdim" else (3, 4, 2, 3)
    ts = [torch.randn(shape, generator=g, dtype=torch.float64).to(device) for _ in range(4)]
    kw = dict(margin=2.0, reduction=reduction)
    if case == "weights":
        kw.update(w_s=torch.rand(6, generator=g, dtype=torch.float64).to(device),
                  w_t=torch.rand(6, generator=g, dtype=torch.float64).to(device))
    zs, zt = ts[1].requires_grad_(), ts[3].requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: classification_mdd(ts[0], a, ts[2], b, **kw), (zs, zt))


@pytest.mark.parametrize("device", DEVICES)
def test_deterministic(device):
    g = torch.Generator().manual_seed(3)
    for shape in [(256, 345), (2048, 40), (8, 19, 16, 16)]:
        ts = [torch.randn(shape, generator=g).to(device).requires_grad_() for _ in range(4)]
        first = classification_mdd(*ts)
        grads = torch.autograd.grad(first, [ts[1], ts[3]])
        threads = torch.get_num_threads()
        try:
            for n in (1, 2, threads):
                torch.set_num_threads(n)
                again = classification_mdd(*ts)
                assert torch.equal(first, again), shape
                for a, b in zip(grads, torch.autograd.grad(again, [ts[1], ts[3]])):
                    assert torch.equal(a, b), shape
        finally:
            torch.set_num_threads(threads)


def test_generic_paths_match_tllib_composition():
    g = torch.Generator().manual_seed(4)
    ts = [torch.randn(8, 5, generator=g) for _ in range(4)]
    # Weights that require grad get their gradient (generic composition).
    w_s = torch.rand(8, generator=g, requires_grad=True)
    out = classification_mdd(*ts, w_s=w_s)
    expected = reference.classification_mdd(*ts, w_s=w_s)
    assert torch.allclose(out, expected)
    (gw,) = torch.autograd.grad(out, [w_s])
    (gw_ref,) = torch.autograd.grad(expected, [w_s])
    assert torch.allclose(gw, gw_ref)
    # Weights that broadcast beyond the per-sample shape, like tllib: (8, 1) * (8,) -> (8, 8).
    w = torch.rand(8, 1, generator=g)
    assert classification_mdd(*ts, w_s=w, reduction="none").shape == (8, 8)
    # Weights as a Python number, of another dtype, mixed logit dtypes, broadcasting batches.
    assert torch.allclose(classification_mdd(*ts, w_t=0.5), reference.classification_mdd(*ts, w_t=0.5))
    w64 = torch.rand(8, generator=g, dtype=torch.float64)
    out = classification_mdd(*ts, w_t=w64)
    assert out.dtype == torch.float64 and torch.allclose(out, reference.classification_mdd(*ts, w_t=w64))
    mixed = [ts[0].half(), ts[1], ts[2], ts[3]]
    assert torch.allclose(classification_mdd(*mixed), reference.classification_mdd(*mixed))
    one = [ts[0], ts[1], ts[2][:1], ts[3][:1]]
    assert torch.allclose(classification_mdd(*one, reduction="none"),
                          reference.classification_mdd(*one, reduction="none"))


def test_replaced_disparity_is_used():
    loss = ClassificationMarginDisparityDiscrepancy(margin=2.0)
    ts = [torch.randn(4, 3) for _ in range(4)]
    # The attributes work like tllib's closures.
    assert torch.allclose(loss.source_disparity(ts[0], ts[1]),
                          torch.nn.functional.cross_entropy(ts[1], ts[0].argmax(1), reduction="none"))
    loss.target_disparity = lambda y, y_adv: torch.zeros(y.shape[0])
    expected = (-2.0 * reference.classification_source_disparity(ts[0], ts[1])).mean()
    assert torch.allclose(loss(*ts), expected)
    assert isinstance(loss, MarginDisparityDiscrepancy)


def _bad(shape=(4, 3), **kw):
    return [torch.randn(shape, **kw) for _ in range(4)]


@pytest.mark.parametrize("args, kwargs, error, words", [
    ([torch.randn(4, 3), torch.randn(4, 2), torch.randn(4, 3), torch.randn(4, 3)], {}, ValueError,
     ["y_s_adv", "(4, 3)", "(4, 2)"]),
    ([torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 3), torch.randn(3, 4)], {}, ValueError, ["y_t_adv"]),
    ([torch.randn(4, 3), torch.randn(4, 3), torch.randn(5, 3), torch.randn(5, 3)], {}, ValueError, ["y_t", "(4,)"]),
    (_bad((4,)), {}, ValueError, ["y_s", "2 dimensions"]),
    (_bad((4, 0)), {}, ValueError, ["y_s", "class"]),
    ([torch.ones(4, 3, dtype=torch.int64)] + _bad()[1:], {}, TypeError, ["y_s", "torch.int64"]),
    (_bad()[:3] + [torch.ones(4, 3, dtype=torch.complex64)], {}, TypeError, ["y_t_adv", "complex"]),
    (_bad()[:1] + [[1.0]] + _bad()[2:], {}, TypeError, ["y_s_adv", "list"]),
    (_bad(), {"reduction": "avg"}, ValueError, ["reduction", "avg"]),
    (_bad(), {"w_s": torch.rand(5)}, ValueError, ["w_s", "(4,)", "(5,)"]),
    (_bad(), {"w_t": torch.ones(4, dtype=torch.int64)}, TypeError, ["w_t", "torch.int64"]),
    (_bad(), {"w_t": "heavy"}, TypeError, ["w_t", "str"]),
    (_bad()[:2] + _bad(device="meta")[2:], {}, ValueError, ["y_t", "device"]),
])
def test_bad_input(args, kwargs, error, words):
    with pytest.raises(error) as info:
        classification_mdd(*args, **kwargs)
    for word in words:
        assert word in str(info.value)


def test_module_rejects_unknown_reduction():
    with pytest.raises(ValueError, match="reduction"):
        ClassificationMarginDisparityDiscrepancy(reduction="avg")
    loss = ClassificationMarginDisparityDiscrepancy()
    loss.reduction = "max"
    with pytest.raises(ValueError, match="reduction"):
        loss(*_bad())


@pytest.mark.skipif(not NATIVE, reason="operator checks need the native library")
def test_op_rejects_bad_input_directly():
    op = torch.ops.hal_ext.classification_mdd
    a = torch.randn(4, 3)
    with pytest.raises(ValueError, match="y_t"):
        op(a, a, torch.randn(5, 3), torch.randn(5, 3), None, None, 4.0, 1)
    with pytest.raises(ValueError, match="reduction"):
        op(a, a, a, a, None, None, 4.0, 7)
    with pytest.raises(ValueError, match="w_s"):
        op(a, a, a, a, torch.rand(3, 4), None, 4.0, 1)
    with pytest.raises(TypeError, match="y_s"):
        op(a.long(), a, a, a, None, None, 4.0, 1)
    with pytest.raises(ValueError, match="w_s"):
        op(a, a.requires_grad_(), a, a, torch.rand(4, requires_grad=True), None, 4.0, 1)
    _, stats, argmax = op(a, a, a, a, None, None, 4.0, 1)
    with pytest.raises(ValueError, match="stats"):
        torch.ops.hal_ext._classification_mdd_backward(torch.ones(()), a, a, stats[:4], argmax, 1)
    with pytest.raises(ValueError, match="grad"):
        torch.ops.hal_ext._classification_mdd_backward(torch.ones(3), a, a, stats, argmax, 1)


@pytest.mark.skipif(not NATIVE, reason="operator checks need the native library")
@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for name, ts, kw in sample_inputs(device, torch.float32):
        if ts[0].shape[0] == 0 or ts[0].numel() > 4_000 or torch.isnan(ts[0]).any():
            continue  # opcheck compares outputs with NaN != NaN
        args = _op_args([ts[0], ts[1].requires_grad_(), ts[2], ts[3].requires_grad_()], kw)
        red = args[-1]
        torch.library.opcheck(torch.ops.hal_ext.classification_mdd.default, args)
        detached = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
        torch.library.opcheck(torch.ops.hal_ext._classification_mdd_with_grad.default, detached)
        _, stats, argmax = torch.ops.hal_ext.classification_mdd(*detached)
        grad = torch.randn(ts[0].shape[:1] + ts[0].shape[2:] if red == 0 else (), device=device)
        torch.library.opcheck(torch.ops.hal_ext._classification_mdd_backward.default,
                              (grad, ts[1].detach(), ts[3].detach(), stats, argmax, red))


@pytest.mark.skipif(not NATIVE, reason="operator checks need the native library")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_with_grad_op_equals_backward_of_ones(device, dtype):
    """hal_ext::_classification_mdd_with_grad (the CPU autograd path's forward) returns the forward's outputs
    and the backward's gradients for a unit incoming gradient: fused for (N, C) float/double on the CPU,
    composed elsewhere (K-dim, half types, CUDA)."""
    for name, ts, kw in sample_inputs(device, dtype):
        args = _op_args(ts, kw)
        red = args[-1]
        loss, stats, argmax, g_s, g_t = torch.ops.hal_ext._classification_mdd_with_grad(*args)
        want = torch.ops.hal_ext.classification_mdd(*args)
        assert torch.equal(loss.nan_to_num(7.0), want[0].nan_to_num(7.0)), name
        assert torch.equal(argmax, want[2]), name
        want_s, want_t = torch.ops.hal_ext._classification_mdd_backward(torch.ones_like(loss), ts[1], ts[3], want[1],
                                                                        want[2], red)
        assert_close(g_s, want_s, dtype, f"{name} grad y_s_adv")
        assert_close(g_t, want_t, dtype, f"{name} grad y_t_adv")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradient_scaled_by_incoming_and_graph_reusable(device, reduction):
    """The CPU path keeps unit gradients from the forward and scales them in the backward (in place when the
    graph is freed): a retained graph must give the same gradients on every backward, scaled by any incoming
    gradient, and a fresh forward must not see a previous backward's scaling."""
    g = torch.Generator().manual_seed(11)
    ts = [torch.randn(16, 9, generator=g).to(device) for _ in range(4)]
    zs, zt = ts[1].clone().requires_grad_(), ts[3].clone().requires_grad_()
    ref = [t.double().requires_grad_() for t in (zs.detach(), zt.detach())]
    out = classification_mdd(ts[0], zs, ts[2], zt, reduction=reduction)
    want_out = reference.classification_mdd(ts[0].double(), ref[0], ts[2].double(), ref[1], reduction=reduction)
    incoming = torch.randn(out.shape, generator=g).to(device) * 3.0
    want = torch.autograd.grad(want_out, ref, incoming.double())
    first = torch.autograd.grad(out, [zs, zt], incoming, retain_graph=True)
    second = torch.autograd.grad(out, [zs, zt], incoming, retain_graph=True)
    last = torch.autograd.grad(out, [zs, zt], 2 * incoming)
    for a, b, c, w in zip(first, second, last, want):
        assert torch.equal(a, b)
        assert_close(a, w, torch.float32, "grad")
        assert_close(c, 2 * w, torch.float32, "grad for a doubled incoming gradient")
    again = torch.autograd.grad(classification_mdd(ts[0], zs, ts[2], zt, reduction=reduction), [zs, zt], incoming)
    for a, b in zip(first, again):
        assert torch.equal(a, b)


@pytest.mark.parametrize("device", DEVICES)
def test_unit_incoming_gradient_and_accumulation(device):
    """A unit incoming gradient on a freed graph hands out the forward's unit gradients unscaled: the same bits
    as the scaled copy a retained graph gives, and .grad accumulation over fresh forwards stays correct."""
    g = torch.Generator().manual_seed(12)
    ts = [torch.randn(16, 9, generator=g).to(device) for _ in range(4)]
    zs, zt = ts[1].clone().requires_grad_(), ts[3].clone().requires_grad_()
    out = classification_mdd(ts[0], zs, ts[2], zt)
    kept = torch.autograd.grad(out, [zs, zt], retain_graph=True)
    freed = torch.autograd.grad(out, [zs, zt])
    for a, b in zip(kept, freed):
        assert torch.equal(a, b)
    for _ in range(2):
        classification_mdd(ts[0], zs, ts[2], zt).backward()
    for a, grad in zip(kept, (zs.grad, zt.grad)):
        assert torch.equal(grad, a + a)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    loss = ClassificationMarginDisparityDiscrepancy(margin=4.0)

    def step(y_s, y_s_adv, y_t, y_t_adv, w_s):
        return loss(y_s, y_s_adv, y_t, y_t_adv) + loss(y_s, y_s_adv, y_t, y_t_adv, w_s=w_s)

    g = torch.Generator().manual_seed(5)
    ts = [torch.randn(32, 31, generator=g).to(device).requires_grad_() for _ in range(4)]
    w = torch.rand(32, generator=g).to(device)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    out, expected = compiled(*ts, w), step(*ts, w)
    assert torch.allclose(out, expected)
    got = torch.autograd.grad(out, [ts[1], ts[3]])
    want = torch.autograd.grad(expected, [ts[1], ts[3]])
    for a, b in zip(got, want):
        assert torch.allclose(a, b)
