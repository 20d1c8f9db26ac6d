"""hal_ext.ops.shift_log (re-exported by hal_ext.alignment.mdd) against the float64 reference (SPEC, MDD)."""
import functools

import pytest
import torch

from hal_ext.ops.shift_log import shift_log
from hal_ext.reference import mdd as reference
from helpers import DEVICES, FLOAT_DTYPES, NATIVE, compare_with_reference

SHAPES = [(1,), (), (32, 31), (64, 1000), (256, 345), (8, 4, 5), (0, 31), (1000_003,)]


def sample_inputs(device, dtype):
    """(name, x, offset) cases shared by the value, gradient and opcheck tests."""
    g = torch.Generator().manual_seed(0)
    cases = []
    for shape in SHAPES:
        cases.append((f"rand{shape}", torch.rand(shape, generator=g), 1e-6))
    cases.append(("clamped region", torch.rand(40, 7, generator=g) * 0.2 + 0.9, 1e-6))
    cases.append(("large offset", torch.rand(40, 7, generator=g), 0.5))
    cases.append(("zeros", torch.zeros(3, 5), 1e-6))
    cases.append(("non-contiguous", torch.rand(31, 32, generator=g).t(), 1e-3))
    cases.append(("strided view", torch.rand(20, 12, generator=g)[::2, 1::3], 1e-6))
    special = torch.rand(4, 6, generator=g)
    special[0, 0], special[1, 1], special[2, 2], special[3, 3] = float("nan"), float("inf"), -float("inf"), -0.5
    cases.append(("nan-inf-negative", special, 1e-6))
    return [(name, x.to(device, dtype), offset) for name, x, offset in cases]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_matches_reference(device, dtype):
    for name, x, offset in sample_inputs(device, dtype):
        if dtype != torch.float64:
            # the kink at x + offset == 1: x + offset computed in the input's precision may round onto 1
            # (gradient 0, as torch.clamp in that dtype) where the float64 reference stays below it, so
            # compare away from it (test_gradient_is_zero_at_the_bound pins the kink itself)
            near = (x.double() + offset - 1).abs() < 4 * torch.finfo(dtype).eps
            x = torch.where(near, torch.full_like(x, 0.95), x)
        if dtype == torch.float16:
            # g / (x + offset) overflows float16 for x < ~2e-5 (inf, as torch in float16: see below)
            x = torch.where(x.abs() < 1e-3, torch.full_like(x, 1e-3), x)
        compare_with_reference(functools.partial(shift_log, offset=offset),
                               functools.partial(reference.shift_log, offset=offset), [x], dtype,
                               differentiable=(0,), what=name)


@pytest.mark.parametrize("device", DEVICES)
def test_float16_gradient_overflow_as_torch(device):
    x = torch.tensor([0.0, 1e-5, 0.5], dtype=torch.float16, device=device, requires_grad=True)
    y = x.detach().clone().requires_grad_()
    shift_log(x).sum().backward()
    reference.shift_log(y).sum().backward()
    assert torch.equal(x.grad, y.grad) and torch.isinf(x.grad[0])


@pytest.mark.parametrize("device", DEVICES)
def test_special_values_exact(device):
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, 1.0, 2.0], device=device, requires_grad=True)
    y = shift_log(x)
    y.backward(torch.ones_like(y))
    assert torch.isnan(y[0]) and y[1] == 0 and torch.isnan(y[2]) and y[4] == 0 and y[5] == 0
    assert x.grad[0] == 0 and x.grad[1] == 0 and x.grad[4] == 0 and x.grad[5] == 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("route", ["hal_ext", "reference"])
def test_gradient_is_zero_at_the_bound(device, dtype, route):
    """SPEC: at exactly x + offset == 1 the gradient is 0 (torch 2.14's clamp; torch 2.11's gave g), and
    g / (x + offset) just below. Pinned against SPEC's numbers, not against torch.clamp."""
    fn = shift_log if route == "hal_ext" else reference.shift_log
    cases = [(1 - 1e-6, 1e-6), (0.5, 0.5), (0.75, 0.25)]  # the point, and sums exact in any dtype
    for x0, offset in cases:
        bound = torch.tensor(x0, dtype=dtype, device=device)
        if (bound + torch.tensor(offset, dtype=dtype)).item() != 1.0:
            continue  # 1 - 1e-6 + 1e-6 is exactly 1 in float64 only
        below = bound
        while (below + offset).item() >= 1.0:  # the largest x whose x + offset rounds below 1
            below = torch.nextafter(below, torch.tensor(-1.0, dtype=dtype, device=device))
        x = torch.stack([bound, below]).requires_grad_()
        y = fn(x, offset)
        y.backward(torch.full_like(y, 3.0))
        assert y[0].item() == 0.0, (x0, offset)
        assert x.grad[0].item() == 0.0, f"{route} {dtype} gradient at x + offset == 1: {x.grad[0].item()}"
        assert x.grad[1].item() == pytest.approx(3.0 / (below + offset).item(), rel=1e-6), (x0, offset)


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck(device):
    x = torch.rand(6, 7, dtype=torch.float64, device=device) * 0.8 + 0.1
    assert torch.autograd.gradcheck(lambda t: shift_log(t, 1e-3), (x.requires_grad_(),))


@pytest.mark.parametrize("device", DEVICES)
def test_deterministic(device):
    x = torch.rand(300_001, device=device, requires_grad=True)
    first = shift_log(x)
    (gx,) = torch.autograd.grad(first.sum(), [x])
    again = shift_log(x)
    assert torch.equal(first, again) and torch.equal(gx, torch.autograd.grad(again.sum(), [x])[0])


@pytest.mark.parametrize("bad, error, words", [
    ((torch.rand(3), 0.0), ValueError, ["offset", "0.0"]),
    ((torch.rand(3), -1e-6), ValueError, ["offset", "-1e-06"]),
    ((torch.rand(3), float("nan")), ValueError, ["offset", "nan"]),
    ((torch.ones(3, dtype=torch.int64), 1e-6), TypeError, ["x", "torch.int64"]),
    (([0.5], 1e-6), TypeError, ["x", "list"]),
])
def test_bad_input(bad, error, words):
    with pytest.raises(error) as info:
        shift_log(*bad)
    for word in words:
        assert word in str(info.value)


@pytest.mark.skipif(not NATIVE, reason="operator checks need the native library")
@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for name, x, offset in sample_inputs(device, torch.float32):
        if x.numel() > 100_000 or not torch.isfinite(reference.shift_log(x, offset)).all():
            continue  # opcheck compares outputs with NaN != NaN
        torch.library.opcheck(torch.ops.hal_ext.shift_log.default, (x.requires_grad_(), offset))
        grad = torch.randn(x.shape, device=device)
        torch.library.opcheck(torch.ops.hal_ext._shift_log_backward.default, (grad, x.detach(), offset))


@pytest.mark.skipif(not NATIVE, reason="operator checks need the native library")
def test_op_rejects_bad_input_directly():
    with pytest.raises(ValueError, match="offset"):
        torch.ops.hal_ext.shift_log(torch.rand(3), 0.0)
    with pytest.raises(ValueError, match="grad"):
        torch.ops.hal_ext._shift_log_backward(torch.rand(4), torch.rand(3), 1e-6)
    with pytest.raises(TypeError, match="x"):
        torch.ops.hal_ext.shift_log(torch.ones(3, dtype=torch.int32), 1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile(device):
    torch._dynamo.reset()
    compiled = torch.compile(lambda t: shift_log(t, 1e-6), fullgraph=True)
    x = torch.rand(16, 9, device=device, requires_grad=True)
    y = x.detach().clone().requires_grad_()
    out, expected = compiled(x), shift_log(y, 1e-6)
    out.sum().backward()
    expected.sum().backward()
    assert torch.equal(out, expected) and torch.equal(x.grad, y.grad)
