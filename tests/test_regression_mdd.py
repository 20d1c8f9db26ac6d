"""hal_ext regression MDD (fused hal_ext::regression_mdd for F.l1_loss / F.mse_loss) against the float64
tllib reference (SPEC "MDD": RegressionMarginDisparityDiscrepancy)."""
import pytest
import torch
import torch.nn.functional as F

from hal_ext.alignment.mdd import RegressionMarginDisparityDiscrepancy
from hal_ext.ops.regression_mdd import regression_mdd
from hal_ext.reference import mdd as reference
from helpers import DEVICES, FLOAT_DTYPES, NATIVE, assert_close, compare_with_reference

REDUCTIONS = ["mean", "sum", "none"]
LOSSES = [F.l1_loss, F.mse_loss]


def sample_inputs(device, dtype):
    """(name, [y_s, y_s_adv, y_t, y_t_adv], kwargs) cases shared by the value, gradient and opcheck tests."""
    g = torch.Generator().manual_seed(0)
    cases = []
    shapes = [(1, 1), (32, 31), (64, 1000), (256, 345), (4, 3, 5, 6), (7,), (0, 4)]
    for i, shape in enumerate(shapes):
        for j, loss_function in enumerate(LOSSES):
            ts = [torch.rand(shape, generator=g) for _ in range(4)]
            cases.append((f"{shape}-{loss_function.__name__}", ts,
                          dict(loss_function=loss_function, margin=[1.0, 4.0][(i + j) % 2],
                               reduction=REDUCTIONS[(i + j) % 3])))
    # Equal predictions (l1's kink: gradient 0, as torch's sign(0)), NaN and Inf.
    ts = [torch.rand(6, 5, generator=g) for _ in range(4)]
    ts[1][:3] = ts[0][:3]
    ts[3][2:] = ts[2][2:]
    ts[1][4, 1], ts[3][0, 0], ts[0][5, 2] = float("nan"), float("inf"), float("nan")
    for loss_function in LOSSES:
        cases.append((f"ties-nan-{loss_function.__name__}", [t.clone() for t in ts],
                      dict(loss_function=loss_function, reduction="none")))
    # Weights broadcasting to the elementwise loss shape; non-contiguous views.
    ts = [torch.rand(8, 4, generator=g) for _ in range(4)]
    cases.append(("weights", ts, dict(w_s=torch.rand(8, 4, generator=g), w_t=torch.rand(4, generator=g),
                                      margin=4.0, reduction="mean", loss_function=F.mse_loss)))
    nc = [torch.rand(5, 9, generator=g).t() for _ in range(4)]
    cases.append(("non-contiguous", nc, dict(margin=1.0, reduction="sum", loss_function=F.l1_loss)))

    def move(t):
        return t.to(device, dtype) if isinstance(t, torch.Tensor) else t

    return [(name, [move(t) for t in ts], {k: move(v) for k, v in kw.items()}) for name, ts, kw in cases]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_matches_reference(device, dtype):
    for name, ts, kw in sample_inputs(device, dtype):
        kw64 = {k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
        compare_with_reference(lambda *a: regression_mdd(*a, **kw), lambda *a: reference.regression_mdd(*a, **kw64),
                               ts, dtype, differentiable=(1, 3), reduced_elements=ts[0].numel(), what=name)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("loss_function", LOSSES)
def test_module_and_no_grad_to_y(device, loss_function):
    g = torch.Generator().manual_seed(1)
    ts = [torch.rand(16, 3, generator=g).to(device).requires_grad_() for _ in range(4)]
    loss = RegressionMarginDisparityDiscrepancy(margin=4.0, loss_function=loss_function)
    out = loss(*ts)
    assert_close(out, reference.regression_mdd(*ts, margin=4.0, loss_function=loss_function), torch.float32,
                 "module")
    grads = torch.autograd.grad(out, ts, allow_unused=True)
    assert grads[0] is None and grads[2] is None and grads[1] is not None and grads[3] is not None


def test_other_loss_functions_take_the_generic_path():
    g = torch.Generator().manual_seed(2)
    ts = [torch.rand(8, 3, generator=g, requires_grad=True) for _ in range(4)]
    for loss_function in (F.smooth_l1_loss, F.huber_loss):
        loss = RegressionMarginDisparityDiscrepancy(loss_function=loss_function, reduction="sum")
        out = loss(*ts)
        expected = reference.regression_mdd(*ts, loss_function=loss_function, reduction="sum")
        assert torch.allclose(out, expected)
        assert "Mdd" not in type(out.grad_fn).__name__
    # Replaced disparities are honoured, like tllib's attributes.
    loss = RegressionMarginDisparityDiscrepancy(margin=2.0)
    loss.source_disparity = lambda y, y_adv: torch.zeros_like(y)
    assert torch.allclose(loss(*ts), F.l1_loss(ts[3], ts[2], reduction="none").mean())
    # Weights requiring grad get their gradient.
    w = torch.rand(8, 3, generator=g, requires_grad=True)
    out = regression_mdd(*ts, w_s=w)
    assert torch.allclose(torch.autograd.grad(out, [w])[0],
                          torch.autograd.grad(reference.regression_mdd(*ts, w_s=w), [w])[0])


@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch(device):
    y = torch.empty(0, 3, device=device, requires_grad=True)
    assert torch.isnan(regression_mdd(y, y, y, y))
    out = regression_mdd(y, y, y, y, reduction="sum")
    assert out.item() == 0
    out.backward()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("loss_function", LOSSES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck(device, loss_function, reduction):
    g = torch.Generator().manual_seed(3)
    ts = [torch.rand(5, 4, generator=g, dtype=torch.float64).to(device) for _ in range(4)]
    w = torch.rand(4, generator=g, dtype=torch.float64).to(device)
    a, b = ts[1].requires_grad_(), ts[3].requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x, y: regression_mdd(ts[0], x, ts[2], y, w_t=w, margin=3.0, loss_function=loss_function,
                                    reduction=reduction), (a, b))


@pytest.mark.parametrize("device", DEVICES)
def test_deterministic(device):
    ts = [torch.rand(300_001, device=device, requires_grad=True) for _ in range(4)]
    first = regression_mdd(*ts)
    grads = torch.autograd.grad(first, [ts[1], ts[3]])
    threads = torch.get_num_threads()
    try:
        for n in (1, threads):
            torch.set_num_threads(n)
            again = regression_mdd(*ts)
            assert torch.equal(first, again)
            for x, y in zip(grads, torch.autograd.grad(again, [ts[1], ts[3]])):
                assert torch.equal(x, y)
    finally:
        torch.set_num_threads(threads)


def _r(shape=(4, 3), **kw):
    return [torch.rand(shape, **kw) for _ in range(4)]


@pytest.mark.parametrize("args, kwargs, error, words", [
    ([torch.rand(4, 3), torch.rand(4, 2), torch.rand(4, 3), torch.rand(4, 3)], {}, ValueError, ["y_s_adv", "(4, 2)"]),
    ([torch.rand(4, 3), torch.rand(4, 3), torch.rand(4, 3), torch.rand(4, 1)], {}, ValueError, ["y_t_adv"]),
    ([torch.rand(4, 3), torch.rand(4, 3), torch.rand(5, 3), torch.rand(5, 3)], {}, ValueError, ["y_t"]),
    ([torch.ones(4, 3, dtype=torch.int32)] + _r()[1:], {}, TypeError, ["y_s", "torch.int32"]),
    (_r(), {"reduction": "batchmean"}, ValueError, ["reduction", "batchmean"]),
    (_r(), {"w_s": torch.rand(2)}, ValueError, ["w_s", "(4, 3)"]),
    (_r(), {"w_t": torch.ones(3, dtype=torch.int64)}, TypeError, ["w_t"]),
])
def test_bad_input(args, kwargs, error, words):
    with pytest.raises(error) as info:
        regression_mdd(*args, **kwargs)
    for word in words:
        assert word in str(info.value)


@pytest.mark.skipif(not NATIVE, reason="operator checks need the native library")
def test_op_rejects_bad_input_directly():
    a = torch.rand(4, 3)
    with pytest.raises(ValueError, match="loss_kind"):
        torch.ops.hal_ext.regression_mdd(a, a, a, a, None, None, 1.0, 5, 1)
    with pytest.raises(ValueError, match="y_t"):
        torch.ops.hal_ext.regression_mdd(a, a, torch.rand(3), torch.rand(3), None, None, 1.0, 0, 1)
    with pytest.raises(ValueError, match="grad"):
        torch.ops.hal_ext._regression_mdd_backward(torch.ones(2), a, a, a, a, None, None, 1.0, 0, 0)


@pytest.mark.skipif(not NATIVE, reason="operator checks need the native library")
@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for name, ts, kw in sample_inputs(device, torch.float32):
        if ts[0].numel() in (0,) or ts[0].numel() > 4_000 or not all(torch.isfinite(t).all() for t in ts):
            continue
        red = {"none": 0, "mean": 1, "sum": 2}[kw.get("reduction", "mean")]
        kind = 0 if kw.get("loss_function", F.l1_loss) is F.l1_loss else 1
        margin = float(kw.get("margin", 1.0))
        w_s, w_t = kw.get("w_s"), kw.get("w_t")
        args = (ts[0], ts[1].requires_grad_(), ts[2], ts[3].requires_grad_(), w_s, w_t, margin, kind, red)
        torch.library.opcheck(torch.ops.hal_ext.regression_mdd.default, args)
        grad = torch.randn(ts[0].shape if red == 0 else (), device=device)
        torch.library.opcheck(torch.ops.hal_ext._regression_mdd_backward.default,
                              (grad, ts[0], ts[1].detach(), ts[2], ts[3].detach(), w_s, w_t, margin, kind, red))


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    l1 = RegressionMarginDisparityDiscrepancy(margin=1.0)
    mse = RegressionMarginDisparityDiscrepancy(margin=4.0, loss_function=F.mse_loss, reduction="sum")

    def step(y_s, y_s_adv, y_t, y_t_adv):
        return l1(y_s, y_s_adv, y_t, y_t_adv) + mse(y_s, y_s_adv, y_t, y_t_adv)

    ts = [torch.rand(16, 3, device=device, requires_grad=True) for _ in range(4)]
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    out, expected = compiled(*ts), step(*ts)
    assert torch.allclose(out, expected)
    for a, b in zip(torch.autograd.grad(out, [ts[1], ts[3]]), torch.autograd.grad(expected, [ts[1], ts[3]])):
        assert torch.allclose(a, b)
