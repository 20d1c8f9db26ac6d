"""hal_ext.alignment.mcd.classifier_discrepancy against the float64 reference (SPEC, MCD)."""
import pytest
import torch

from hal_ext.alignment.mcd import classifier_discrepancy
from hal_ext.reference import mcd as reference
from helpers import DEVICES, FLOAT_DTYPES, NATIVE, assert_close, compare_with_reference

SHAPES = [(1, 1), (32, 31), (64, 1000), (256, 345), (8, 4, 5), (0, 31), (5,)]


def sample_inputs(device, dtype):
    """(name, predictions1, predictions2) cases shared by the value, gradient and opcheck tests."""
    g = torch.Generator().manual_seed(0)
    cases = []
    for shape in SHAPES:
        a = torch.randn(shape, generator=g).softmax(-1) if shape[-1] else torch.randn(shape)
        b = torch.randn(shape, generator=g).softmax(-1) if shape[-1] else torch.randn(shape)
        cases.append((f"softmax{shape}", a, b))
    base = torch.randn(31, 32, generator=g)
    cases.append(("non-contiguous", base.t(), torch.randn(32, 31, generator=g)))
    ties = torch.randn(16, 12, generator=g)
    cases.append(("equal elements", ties, ties.clone()))
    special = torch.randn(4, 6, generator=g)
    special[0, 0], special[1, 1], special[2, 2] = float("nan"), float("inf"), -float("inf")
    cases.append(("nan-inf", special, torch.randn(4, 6, generator=g)))
    return [(name, a.to(device, dtype), b.to(device, dtype)) for name, a, b in cases]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_matches_reference(device, dtype):
    for name, a, b in sample_inputs(device, dtype):
        compare_with_reference(classifier_discrepancy, reference.classifier_discrepancy, [a, b], dtype,
                               differentiable=(0, 1), reduced_elements=a.numel(), what=name)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_is_nan(device):
    out = classifier_discrepancy(torch.empty(0, 5, device=device), torch.empty(0, 5, device=device))
    assert torch.isnan(out)


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck(device):
    a = torch.randn(6, 7, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(6, 7, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(classifier_discrepancy, (a, b))


@pytest.mark.parametrize("device", DEVICES)
def test_deterministic(device):
    a = torch.rand(300_001, device=device, requires_grad=True)
    b = torch.rand(300_001, device=device, requires_grad=True)
    first = classifier_discrepancy(a, b)
    (ga,) = torch.autograd.grad(first, [a])
    for _ in range(2):
        again = classifier_discrepancy(a, b)
        assert torch.equal(first, again)
        assert torch.equal(ga, torch.autograd.grad(again, [a])[0])


def test_large_reduction_accuracy():
    a, b = torch.rand(2_000_000), torch.rand(2_000_000)
    assert_close(classifier_discrepancy(a, b), reference.classifier_discrepancy(a.double(), b.double()),
                 torch.float32, "2M elements", reduced_elements=a.numel())


def test_mixed_dtypes_promote():
    a, b = torch.rand(4, 3), torch.rand(4, 3, dtype=torch.float64)
    out = classifier_discrepancy(a, b)
    assert out.dtype == torch.float64
    assert_close(out, reference.classifier_discrepancy(a.double(), b), torch.float64, "mixed")


@pytest.mark.parametrize("bad, error, words", [
    ((torch.rand(4, 3), torch.rand(4, 2)), ValueError, ["predictions2", "(4, 3)", "(4, 2)"]),
    ((torch.rand(4, 3), torch.rand(3, 4)), ValueError, ["predictions2", "shape"]),
    ((torch.ones(4, 3, dtype=torch.int64), torch.rand(4, 3)), TypeError, ["predictions1", "torch.int64"]),
    ((torch.rand(4, 3), torch.ones(4, 3, dtype=torch.complex64)), TypeError, ["predictions2", "complex"]),
    ((torch.rand(4, 3), [1.0]), TypeError, ["predictions2", "list"]),
])
def test_bad_input(bad, error, words):
    with pytest.raises(error) as info:
        classifier_discrepancy(*bad)
    for word in words:
        assert word in str(info.value)


@pytest.mark.skipif(not NATIVE, reason="operator checks need the native library")
@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for name, a, b in sample_inputs(device, torch.float32):
        if not torch.isfinite(reference.classifier_discrepancy(a, b)):
            continue  # opcheck compares outputs with NaN != NaN
        a, b = a.requires_grad_(), b.requires_grad_()
        torch.library.opcheck(torch.ops.hal_ext.classifier_discrepancy.default, (a, b))
        grad = torch.ones((), device=device)
        torch.library.opcheck(torch.ops.hal_ext._classifier_discrepancy_backward.default, (grad, a.detach(), b.detach()))
        torch.library.opcheck(torch.ops.hal_ext._classifier_discrepancy_with_grad.default, (a.detach(), b.detach()))


@pytest.mark.skipif(not NATIVE, reason="operator checks need the native library")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_with_grad_op_equals_backward_of_ones(device, dtype):
    """hal_ext::_classifier_discrepancy_with_grad (the CPU autograd path's forward) returns the forward's value
    bit for bit and the backward's gradients for a unit incoming gradient: fused for float/double on the
    CPU, composed elsewhere (half types, CUDA)."""
    for name, a, b in sample_inputs(device, dtype):
        loss, g1, g2 = torch.ops.hal_ext._classifier_discrepancy_with_grad(a, b)
        want = torch.ops.hal_ext.classifier_discrepancy(a, b)
        assert torch.equal(loss.nan_to_num(7.0), want.nan_to_num(7.0)), name
        want1, want2 = torch.ops.hal_ext._classifier_discrepancy_backward(torch.ones_like(want), a, b)
        assert_close(g1, want1, dtype, f"{name} grad predictions1")
        assert_close(g2, want2, dtype, f"{name} grad predictions2")


@pytest.mark.parametrize("device", DEVICES)
def test_gradient_scaled_by_incoming_graph_reusable_and_accumulated(device):
    """The CPU path keeps unit gradients from the forward and scales them in the backward (in place when the
    graph is freed, not at all for a unit gradient): a retained graph gives the same gradients on every
    backward, scaled by any incoming gradient; a fresh forward does not see a previous backward's scaling;
    .grad accumulates correctly over fresh forwards."""
    g = torch.Generator().manual_seed(3)
    a0, b0 = torch.randn(16, 9, generator=g).softmax(1), torch.randn(16, 9, generator=g).softmax(1)
    a, b = a0.clone().to(device).requires_grad_(), b0.clone().to(device).requires_grad_()
    ref = [t.double().requires_grad_() for t in (a0, b0)]
    want = torch.autograd.grad(reference.classifier_discrepancy(*ref), ref)
    out = classifier_discrepancy(a, b)
    incoming = torch.tensor(2.5, device=device)
    first = torch.autograd.grad(out, [a, b], incoming, retain_graph=True)
    second = torch.autograd.grad(out, [a, b], incoming, retain_graph=True)
    unit_kept = torch.autograd.grad(out, [a, b], retain_graph=True)
    unit_freed = torch.autograd.grad(out, [a, b])
    for f, s, k, u, w in zip(first, second, unit_kept, unit_freed, want):
        assert torch.equal(f, s)
        assert torch.equal(k, u)
        assert_close(f, 2.5 * w, torch.float32, "grad for an incoming gradient of 2.5")
        assert_close(u, w, torch.float32, "grad for a unit incoming gradient")
    scaled = torch.autograd.grad(classifier_discrepancy(a, b), [a, b], incoming)
    for f, s in zip(first, scaled):
        assert torch.equal(f, s)
    for _ in range(2):
        classifier_discrepancy(a, b).backward()
    for u, grad in zip(unit_freed, (a.grad, b.grad)):
        assert torch.equal(grad, u + u)


@pytest.mark.skipif(not NATIVE, reason="operator checks need the native library")
def test_op_rejects_bad_input_directly():
    with pytest.raises(ValueError, match="predictions2"):
        torch.ops.hal_ext.classifier_discrepancy(torch.rand(3), torch.rand(4))
    with pytest.raises(TypeError, match="predictions1"):
        torch.ops.hal_ext.classifier_discrepancy(torch.ones(3, dtype=torch.int32), torch.rand(3))
