"""hal_ext.alignment.mcd.entropy against the float64 reference (SPEC, MCD entropy)."""
import pytest
import torch

from hal_ext.alignment.mcd import entropy
from hal_ext.reference import mcd as reference
from helpers import DEVICES, FLOAT_DTYPES, NATIVE, assert_close, compare_with_reference

SHAPES = [(1, 1), (1,), (7,), (32, 31), (64, 1000), (256, 345), (8, 4, 5), (3000, 7)]


def sample_inputs(device, dtype):
    """(name, predictions) cases shared by the value, gradient and opcheck tests."""
    g = torch.Generator().manual_seed(0)
    cases = []
    for shape in SHAPES:
        cases.append((f"softmax{shape}", torch.randn(shape, generator=g).softmax(-1)))
    zero_columns = torch.randn(16, 10, generator=g).softmax(-1)
    zero_columns[:, 3] = 0
    zero_columns[:, 7] = 0
    cases.append(("zero columns", zero_columns))
    cases.append(("all zero", torch.zeros(4, 6)))
    cases.append(("non-contiguous", torch.randn(31, 32, generator=g).softmax(0).t()))
    cases.append(("strided view", torch.rand(20, 12, generator=g)[::2, 1::3]))
    special = torch.rand(4, 6, generator=g)
    special[0, 0], special[1, 1] = float("nan"), float("inf")
    cases.append(("nan-inf", special))
    negative = torch.rand(5, 3, generator=g)
    negative[:, 1] = -1.0  # log of a negative mean: NaN, as the reference
    cases.append(("negative column", negative))
    return [(name, p.to(device, dtype)) for name, p in cases]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_matches_reference(device, dtype):
    for name, p in sample_inputs(device, dtype):
        compare_with_reference(entropy, reference.entropy, [p], dtype, differentiable=(0,),
                               reduced_elements=p.numel(), what=name)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch_is_nan(device):
    p = torch.empty(0, 5, device=device, requires_grad=True)
    out = entropy(p)
    assert torch.isnan(out)
    out.backward()
    assert p.grad.shape == (0, 5)
    assert torch.isnan(entropy(torch.empty(4, 0, device=device)))  # no columns: mean of nothing


@pytest.mark.parametrize("device", DEVICES)
def test_zero_columns_value(device):
    p = torch.zeros(3, 4, dtype=torch.float64, device=device)
    assert torch.allclose(entropy(p), -torch.log(torch.tensor(1e-6, dtype=torch.float64, device=device)))


@pytest.mark.skipif(not NATIVE, reason="the broadcast gradient is the native op's layout")
@pytest.mark.parametrize("device", DEVICES)
def test_gradient_is_one_broadcast_row(device):
    """Every row of the gradient is the same: the backward writes one row and returns it expanded over
    the batch (stride 0). A leaf's .grad still gets a dense tensor, and accumulates."""
    p = torch.rand(64, 10, 3, device=device, requires_grad=True)
    expected = torch.autograd.grad(reference.entropy(p.double()), [p])[0]
    (grad,) = torch.autograd.grad(entropy(p), [p])
    assert grad.shape == p.shape and grad.stride() == (0, 3, 1)
    assert_close(grad, expected, torch.float32, "autograd.grad")
    entropy(p).backward()
    assert p.grad.is_contiguous()
    assert_close(p.grad, expected, torch.float32, ".grad")
    entropy(p).mul(2).backward()
    assert_close(p.grad, 3 * expected, torch.float32, "accumulated .grad")
    logits = torch.randn(64, 10, device=device, requires_grad=True)  # through softmax, as in MCD
    expected = torch.autograd.grad(reference.entropy(logits.double().softmax(1)), [logits])[0]
    assert_close(torch.autograd.grad(entropy(logits.softmax(1)), [logits])[0], expected, torch.float32, "softmax")


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck(device):
    for shape in [(6, 7), (5,), (3, 2, 4)]:
        p = torch.rand(shape, dtype=torch.float64, device=device, requires_grad=True)
        assert torch.autograd.gradcheck(entropy, (p,))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(300_001,), (5000, 300), (3, 200_000)])
def test_deterministic(device, shape):
    p = torch.rand(shape, device=device, requires_grad=True)
    first = entropy(p)
    (gp,) = torch.autograd.grad(first, [p])
    for _ in range(2):
        again = entropy(p)
        assert torch.equal(first, again)
        assert torch.equal(gp, torch.autograd.grad(again, [p])[0])


def test_independent_of_thread_count():
    p = torch.rand(5000, 300)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = entropy(p)
        torch.set_num_threads(max(2, threads))
        many = entropy(p)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)


def test_large_reduction_accuracy():
    p = torch.rand(4000, 500)
    assert_close(entropy(p), reference.entropy(p.double()), torch.float32, "2M elements", reduced_elements=p.numel())


@pytest.mark.parametrize("bad, error, words", [
    (torch.tensor(0.5), ValueError, ["predictions", "()"]),
    (torch.ones(4, 3, dtype=torch.int64), TypeError, ["predictions", "torch.int64"]),
    (torch.ones(4, 3, dtype=torch.complex64), TypeError, ["predictions", "complex"]),
    ([[0.5, 0.5]], TypeError, ["predictions", "list"]),
])
def test_bad_input(bad, error, words):
    with pytest.raises(error) as info:
        entropy(bad)
    for word in words:
        assert word in str(info.value)


@pytest.mark.skipif(not NATIVE, reason="operator checks need the native library")
@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for name, p in sample_inputs(device, torch.float32):
        if not torch.isfinite(reference.entropy(p)):
            continue  # opcheck compares outputs with NaN != NaN
        p = p.requires_grad_()
        torch.library.opcheck(torch.ops.hal_ext.mcd_entropy.default, (p,))
        _, means = torch.ops.hal_ext.mcd_entropy(p.detach())
        grad = torch.ones((), device=device)
        torch.library.opcheck(torch.ops.hal_ext._mcd_entropy_backward.default, (grad, means, p.shape[0]))


@pytest.mark.skipif(not NATIVE, reason="operator checks need the native library")
def test_op_internals():
    p = torch.rand(6, 4, dtype=torch.float16)
    loss, means = torch.ops.hal_ext.mcd_entropy(p)
    assert loss.dtype == torch.float16 and means.dtype == torch.float32 and means.shape == (4,)
    assert torch.allclose(means, p.float().mean(0))
    with pytest.raises(ValueError, match="predictions"):
        torch.ops.hal_ext.mcd_entropy(torch.tensor(1.0))
    with pytest.raises(TypeError, match="column_means"):
        torch.ops.hal_ext._mcd_entropy_backward(torch.ones(()), torch.ones(4, dtype=torch.float64), 3)
    with pytest.raises(ValueError, match="grad"):
        torch.ops.hal_ext._mcd_entropy_backward(torch.ones(2), torch.ones(4), 3)
    # an empty batch: a defined (zero) column gradient, never uninitialised memory
    assert torch.equal(torch.ops.hal_ext._mcd_entropy_backward(torch.ones(()), torch.full((4,), 0.5), 0),
                       torch.zeros(4))


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile(device):
    torch._dynamo.reset()
    compiled = torch.compile(entropy, fullgraph=True)
    p = torch.rand(16, 9, device=device, requires_grad=True)
    q = p.detach().clone().requires_grad_()
    out, expected = compiled(p), entropy(q)
    out.backward()
    expected.backward()
    assert torch.allclose(out, expected) and torch.allclose(p.grad, q.grad)
