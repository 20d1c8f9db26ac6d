"""Regression tests for what the operator fuzz (tests/op_fuzz.py) found: the internal operators validate the
saved tensors they are handed, contents included, before they address memory with them. Each test starts
from the real saved tensors of a forward and changes one thing."""
import pytest
import torch

from helpers import NATIVE

pytestmark = pytest.mark.skipif(not NATIVE, reason="the internal operators exist only in the native library")

ops = torch.ops.hal_ext


def classification_saved(shape, dtype):
    g = torch.Generator().manual_seed(0)
    y_s, y_s_adv, y_t, y_t_adv = (torch.randn(shape, generator=g, dtype=torch.float64).to(dtype) for _ in range(4))
    loss, stats, argmax = ops.classification_mdd(y_s, y_s_adv, y_t, y_t_adv, None, None, 4.0, 1)
    return y_s_adv, y_t_adv, stats, argmax, loss


@pytest.mark.parametrize("shape", [(6, 5), (3, 5, 4)], ids=["NxC", "NxCxD"])
@pytest.mark.parametrize("bad", [5, 6, -1, 2**62, -(2**63)], ids=["C", "C+1", "-1", "2^62", "int64_min"])
@pytest.mark.parametrize("side", [0, 1], ids=["source", "target"])
def test_classification_mdd_backward_rejects_argmax_out_of_range(shape, bad, side):
    """_classification_mdd_backward's (N, C) CPU kernel wrote the gradient at y_adv[r, argmax[r]]: an argmax
    >= C or < 0 was a heap-buffer-overflow (AddressSanitizer) and, with other values, a segfault."""
    y_s_adv, y_t_adv, stats, argmax, loss = classification_saved(shape, torch.float32)
    argmax = argmax.clone()
    argmax[side, 2] = bad
    with pytest.raises(ValueError, match=r"argmax must hold indices in \[0, 5\), got "):
        ops._classification_mdd_backward(torch.ones_like(loss), y_s_adv, y_t_adv, stats, argmax, 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_classification_mdd_backward_accepts_its_forwards_argmax(dtype, layout):
    """The check rejects nothing the forward saves: the backward of the real saved tensors (argmax also
    as a non-contiguous view) gives autograd's gradients."""
    y_s_adv, y_t_adv, stats, argmax, loss = classification_saved((6, 5), dtype)
    if layout == "transposed":
        argmax = argmax.t().contiguous().t()
    g_s, g_t = ops._classification_mdd_backward(torch.ones_like(loss), y_s_adv, y_t_adv, stats, argmax, 1)
    leaves = [t.detach().clone().requires_grad_(True) for t in (y_s_adv, y_t_adv)]
    g = torch.Generator().manual_seed(0)
    y_s, _, y_t, _ = (torch.randn((6, 5), generator=g, dtype=torch.float64).to(dtype) for _ in range(4))
    again = ops.classification_mdd(y_s, leaves[0], y_t, leaves[1], None, None, 4.0, 1)[0]
    expected = torch.autograd.grad(again, leaves)
    torch.testing.assert_close(g_s, expected[0])
    torch.testing.assert_close(g_t, expected[1])


@pytest.mark.parametrize("shape", [(8, 1, 7, 0), (2, 3, 0, 5)], ids=["W=0", "H=0"])
@pytest.mark.parametrize("generator", [0, 1], ids=["truncated", "fast"])
@pytest.mark.parametrize("criterion", [0, 1], ids=["mse", "kl"])
@pytest.mark.parametrize("mode", [0, 1], ids=["min", "max"])
def test_regression_disparity_on_empty_heatmaps(shape, generator, criterion, mode):
    """The CPU forward read the first pixel of every map to find its peak, also when the maps have none
    (a segfault). Empty maps follow torch: per keypoint the MSE is a mean over no pixels (NaN) and the KL
    a sum over none (0); the backward returns an empty gradient."""
    y = torch.randn(shape)
    y_adv = torch.randn(shape, requires_grad=True)
    loss, peaks, stats = ops._regression_disparity_forward(y, y_adv, None, mode, 2.0, generator, criterion, 0, 0.0)
    expected = torch.full(shape[:2], float("nan") if criterion == 0 else 0.0)
    torch.testing.assert_close(loss, expected, equal_nan=True)
    assert peaks.shape == (*shape[:2], 2)
    (grad,) = torch.autograd.grad(ops.regression_disparity(y, y_adv, None, mode, 2.0, generator, criterion, 1, 0.0),
                                  y_adv)
    assert grad.shape == shape
