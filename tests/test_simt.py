"""The CUDA kernels, run by the SIMT emulator (the `simt` device: tests/simt.py, csrc/simt/simt.h).

Every launcher of csrc/ops/cuda/ is called as torch.ops.hal_ext_simt.<op> on CPU tensors and checked
against the float64 oracles of op_catalog / hal_ext.reference at the SPEC tolerances (helpers), forward
and backward, on the cases a GPU would meet: partial warps and sizes that are not multiples of 32,
several blocks, the multi-block ordered sum (> 2^17 terms), empty batches, NaN/Inf, ties, mode='max',
K windows beyond the shared-memory budget, every float dtype. Device limits (grid size, shared
memory) are lowered on the emulated device so that the paths huge shapes take on a GPU run with small
shapes. Launch counts are asserted. Shapes are small: the emulator runs every CUDA thread as a fiber.
"""
import math

import pytest
import torch

import simt
from hal_ext.reference import keypoint_detection as ref_keypoint
from hal_ext.reference import regda as ref_regda
from helpers import FLOAT_DTYPES, assert_close
from op_catalog import (oracle_classification_mdd, oracle_entropy, oracle_pseudo_labels, oracle_regression_mdd,
                        oracle_shift_log)

MEAN, SUM, NONE = 1, 2, 0
REDUCTIONS = {"none": NONE, "mean": MEAN, "sum": SUM}


@pytest.fixture(scope="module")
def ops():
    return simt.load()


def rand(*shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g, dtype=torch.float64).to(dtype)


def randn(*shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)


def oracle_grads(fn, inputs, differentiable, grad):
    """Gradients of the float64 oracle fn(*inputs) for the incoming gradient `grad`."""
    leaves = [t.detach().double().requires_grad_(i in differentiable) for i, t in enumerate(inputs)]
    out = fn(*leaves)
    grads = torch.autograd.grad(out, [leaves[i] for i in differentiable], grad.double())
    return out, grads


# ---------------------------------------------------------------- classifier_discrepancy

@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", [(3, 7), (37, 29), (0, 5)])
def test_classifier_discrepancy(ops, dtype, shape):
    p1, p2 = rand(*shape, seed=1, dtype=dtype), rand(*shape, seed=2, dtype=dtype)
    with simt.launches(1, "forward (one block)"):
        loss = ops.classifier_discrepancy(p1, p2)
    g = torch.tensor(0.75, dtype=dtype)
    expected, (e1, e2) = oracle_grads(lambda a, b: (a - b).abs().mean(), [p1, p2], (0, 1), g)
    assert_close(loss, expected, dtype, "loss")
    with simt.launches(1 if p1.numel() else 0, "backward"):
        g1, g2 = ops._classifier_discrepancy_backward(g, p1, p2)
    assert_close(g1, e1, dtype, "grad predictions1")
    assert_close(g2, e2, dtype, "grad predictions2")


def test_classifier_discrepancy_multi_block_ordered_sum(ops):
    # more than 2^17 terms: block partials, then a second launch adds them in block order
    p1, p2 = rand(300, 450, seed=3, dtype=torch.float64), rand(300, 450, seed=4, dtype=torch.float64)
    with simt.launches(2, "multi-block forward"):
        loss = ops.classifier_discrepancy(p1, p2)
    assert_close(loss, (p1 - p2).abs().mean(), torch.float64, "loss")
    assert torch.equal(loss, ops.classifier_discrepancy(p1, p2)), "the ordered sum is deterministic"


def test_classifier_discrepancy_nan_inf(ops):
    p1, p2 = rand(5, 9, seed=5), rand(5, 9, seed=6)
    p1[1, 2], p2[3, 4] = math.nan, math.inf
    assert torch.isnan(ops.classifier_discrepancy(p1, p2))


# ---------------------------------------------------------------- entropy (mcd_entropy)

@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", [(5, 7), (33, 40)])
def test_entropy(ops, dtype, shape):
    p = rand(*shape, seed=7).softmax(1).to(dtype)
    with simt.launches(1, "forward (<= 2048 rows, one block)"):
        loss, means = ops.mcd_entropy(p)
    g = torch.tensor(1.5, dtype=dtype)
    expected, (e,) = oracle_grads(oracle_entropy, [p], (0,), g)
    assert_close(loss, expected, dtype, "loss")
    with simt.launches(1, "backward"):
        row = ops._mcd_entropy_backward(g, means, shape[0])
    assert_close(row.expand(shape), e, dtype, "grad")
    # an empty batch: a defined (zero) column gradient
    assert torch.equal(ops._mcd_entropy_backward(g, torch.full_like(means, 0.5), 0), torch.zeros(shape[1], dtype=dtype))


@pytest.mark.parametrize("grid_y", [65535, 2])
def test_entropy_row_splits(ops, grid_y):
    # 3 * 2048 + 5 rows: 4 row splits, first summed per split, then in split order. With grid.y lowered
    # to 2 on the emulated device the splits exceed grid.y, as above 65535 splits on a GPU.
    p = rand(3 * 2048 + 5, 3, seed=8, dtype=torch.float64).softmax(1)
    with simt.device_limits(max_grid_yz=grid_y), simt.launches(2, "split forward"):
        loss, _ = ops.mcd_entropy(p)
    assert_close(loss, oracle_entropy(p), torch.float64, "loss")


def test_entropy_empty_batch(ops):
    loss, means = ops.mcd_entropy(torch.zeros(0, 4))
    assert torch.isnan(loss) and torch.isnan(means).all()


# ---------------------------------------------------------------- shift_log

@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("n, grid_x", [(300, None), (2348, None), (2348, 2)])
def test_shift_log(ops, dtype, n, grid_x):
    # Each thread takes 4 elements 256 apart per grid-stride step, 1024 per block: 300 is one partial
    # block; 2348 three blocks, the last partial; with grid.x lowered to 2, two blocks of two steps,
    # the second step of the second block past the end.
    limits = {} if grid_x is None else {"max_grid_x": grid_x}
    x = rand(n, seed=9, dtype=torch.float64)
    x[:6] = torch.tensor([math.nan, math.inf, -math.inf, 1.0, 1.0 - 1e-6, 2.0], dtype=torch.float64)
    x[-3:] = torch.tensor([math.nan, 1.0, 0.25], dtype=torch.float64)
    x = x.to(dtype)
    with simt.device_limits(**limits), simt.launches(1, "forward"):
        y = ops.shift_log(x, 1e-6)
    assert_close(y, oracle_shift_log(x.double()), dtype, "value")
    g = randn(n, seed=10, dtype=dtype)
    with simt.device_limits(**limits), simt.launches(1, "backward"):
        gx = ops._shift_log_backward(g, x, 1e-6)
    _, (e,) = oracle_grads(lambda t: oracle_shift_log(t), [x], (0,), g)
    # SPEC's bound x + offset >= 1 (gradient 0), in the kernel's precision: 1 - 1e-6 in float32 reaches it
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    e = torch.where(x.to(acc) + 1e-6 >= 1, torch.zeros_like(e), e)
    finite = torch.isfinite(x)
    assert_close(gx[finite], e[finite], dtype, "grad")


# ---------------------------------------------------------------- classification MDD

def _classification_inputs(shape, dtype, seed=11):
    ys, ysa, yt, yta = (randn(*shape, seed=seed + i, dtype=dtype) for i in range(4))
    return [ys, ysa, yt, yta]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", [(6, 37), (5, 10, 3, 3), (1, 1)])
@pytest.mark.parametrize("reduction", ["mean", "none", "sum"])
def test_classification_mdd(ops, dtype, shape, reduction):
    inputs = _classification_inputs(shape, dtype)
    inputs[0][0, 0] = inputs[0][0, -1] = 3.0  # a tie in the source argmax: the first wins
    sample = (shape[0],) + tuple(shape[2:])
    w_s, w_t = rand(*sample, seed=20, dtype=dtype), None
    red = REDUCTIONS[reduction]
    with simt.launches(1, "forward (one block)"):
        out, stats, argmax = ops.classification_mdd(*inputs, w_s, w_t, 4.0, red)
    g = randn(*out.shape, seed=21, dtype=dtype)
    expected, (e_s, e_t) = oracle_grads(
        lambda a, b, c, d: oracle_classification_mdd(a, b, c, d, w_s=w_s.double(), margin=4, reduction=reduction),
        inputs, (1, 3), g)
    assert_close(out, expected, dtype, "loss")
    with simt.launches(1, "backward"):
        g_s, g_t = ops._classification_mdd_backward(g, inputs[1], inputs[3], stats, argmax, red)
    assert_close(g_s, e_s, dtype, "grad y_s_adv")
    assert_close(g_t, e_t, dtype, "grad y_t_adv")


def test_classification_mdd_several_blocks(ops):
    # M * C > 2^18: one block per 8 rows (one warp per row), then the ordered sum of block partials
    inputs = _classification_inputs((40, 6600), torch.float64, seed=30)
    with simt.launches(2, "multi-block forward"):
        out, _, _ = ops.classification_mdd(*inputs, None, None, 2.0, MEAN)
    assert_close(out, oracle_classification_mdd(*inputs, margin=2), torch.float64, "loss", reduced_elements=40)


def test_classification_mdd_nan_inf(ops):
    inputs = _classification_inputs((4, 33), torch.float64, seed=40)
    inputs[0][1, 3] = math.nan
    inputs[1][2, 5] = math.inf
    inputs[3][3, 7] = -math.inf
    out, _, _ = ops.classification_mdd(*inputs, None, None, 4.0, NONE)
    assert_close(out, oracle_classification_mdd(*inputs, reduction="none"), torch.float64, "loss")


# ---------------------------------------------------------------- regression MDD

@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("loss_kind", [0, 1])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_regression_mdd(ops, dtype, loss_kind, reduction):
    inputs = [rand(9, 35, seed=50 + i, dtype=dtype) for i in range(4)]
    w_t = rand(9, 35, seed=60, dtype=dtype)
    red = REDUCTIONS[reduction]
    with simt.launches(1, "forward"):
        out = ops.regression_mdd(*inputs, None, w_t, 1.5, loss_kind, red)
    g = randn(*out.shape, seed=61, dtype=dtype)
    loss = "l1" if loss_kind == 0 else "l2"
    expected, (e_s, e_t) = oracle_grads(
        lambda a, b, c, d: oracle_regression_mdd(a, b, c, d, w_t=w_t.double(), margin=1.5, loss=loss,
                                                 reduction=reduction), inputs, (1, 3), g)
    assert_close(out, expected, dtype, "loss")
    with simt.launches(1, "backward"):
        g_s, g_t = ops._regression_mdd_backward(g, *inputs, None, w_t, 1.5, loss_kind, red)
    assert_close(g_s, e_s, dtype, "grad y_s_adv")
    assert_close(g_t, e_t, dtype, "grad y_t_adv")


def test_regression_mdd_empty(ops):
    e = torch.zeros(0, 3)
    assert ops.regression_mdd(e, e, e, e, None, None, 1.0, 0, NONE).shape == (0, 3)
    assert torch.isnan(ops.regression_mdd(e, e, e, e, None, None, 1.0, 0, MEAN))


# ---------------------------------------------------------------- pseudo labels

def _assert_maps(actual, expected, what):
    a, e = actual, expected
    support = (a != 0) != (e != 0)
    assert not support.any(), f"{what}: support differs at {support.nonzero()[:5].tolist()}"
    torch.testing.assert_close(a, e, rtol=1e-6, atol=0.0, msg=lambda m: f"{what}: {m}")


def _heatmaps(dtype):
    g = torch.Generator().manual_seed(70)
    y = torch.randn(2, 5, 11, 13, generator=g)
    y[0, 0, 2, 3] = math.nan
    y[0, 1] = -1.0                      # non-positive maximum, all tied
    y[1, 2, 4, 4] = y[1, 2, 7, 9] = 9.0  # tie: the first in flat order
    y[1, 3, 10, 12] = math.inf
    return y.to(dtype)


# the fast variant's oracle is hal_ext.reference's (op_catalog's is a shorthand for random maps only)
PSEUDO = {"truncated": ("pseudo_label_2d", oracle_pseudo_labels),
          "fast": ("fast_pseudo_label_2d", ref_regda.fast_pseudo_label_2d)}


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("variant", PSEUDO)
def test_pseudo_labels(ops, dtype, variant):
    op, oracle = PSEUDO[variant]
    y = _heatmaps(dtype)
    for sigma in [2, 4 / 3, 2 / 3, 5 / 3, 7 / 3]:
        with simt.launches(1, "pseudo labels"):
            gt, gf = getattr(ops, op)(y, sigma)
        rgt, rgf = oracle(y.double(), sigma)
        _assert_maps(gt, rgt, f"sigma={sigma} ground_truth")
        _assert_maps(gf, rgf, f"sigma={sigma} ground_false")


@pytest.mark.parametrize("variant", PSEUDO)
def test_pseudo_labels_beyond_shared_memory_and_grid(ops, variant):
    # 7 keypoints * 24 bytes > the emulated device's 100 bytes of opt-in shared memory: the windows go
    # to a global workspace (on a GPU: beyond about 9,700 keypoints); grid.x lowered to 1: one block
    # takes every (sample, slice) unit in turn.
    op = PSEUDO[variant][0]
    y = randn(3, 7, 6, 5, seed=71)
    expected = getattr(ops, op)(y, 1.5)
    with simt.device_limits(max_dynamic_shared=64, max_dynamic_shared_optin=100, max_grid_x=1):
        gt, gf = getattr(ops, op)(y, 1.5)
    assert torch.equal(gt, expected[0]) and torch.equal(gf, expected[1])
    rgt, rgf = PSEUDO[variant][1](y.double(), 1.5)
    _assert_maps(gt, rgt, "ground_truth")
    _assert_maps(gf, rgf, "ground_false")


def test_pseudo_labels_opt_in_shared_memory(ops):
    # more than the default 48 KiB of windows: the kernel opts in (cudaFuncSetAttribute), as a GPU
    # requires; 48 KiB lowered to 96 bytes here
    y = randn(1, 5, 4, 4, seed=72)
    with simt.device_limits(max_dynamic_shared=96):
        gt, gf = ops.pseudo_label_2d(y, 1.0)
    rgt, rgf = oracle_pseudo_labels(y.double(), 1.0)
    _assert_maps(gt, rgt, "ground_truth")
    _assert_maps(gf, rgf, "ground_false")


# ---------------------------------------------------------------- keypoint losses

def oracle_kl(output, target, weight, reduction, eps):
    """The KL operators' output: with reduction 'none' the (B, K) per-keypoint losses (the public
    JointsKLLoss averages them over the keypoints, SPEC), each (b, k) taken as a one-keypoint sample."""
    if reduction != "none":
        return ref_keypoint.joints_kl_loss(output, target, weight, reduction, eps)
    B, K = output.shape[:2]
    rows = lambda t: t.reshape(B * K, 1, *t.shape[2:])  # noqa: E731
    w = None if weight is None else weight.reshape(B * K, 1)
    return ref_keypoint.joints_kl_loss(rows(output), rows(target), w, "none", eps).reshape(B, K)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("criterion", ["mse", "kl"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_joints_losses(ops, dtype, criterion, reduction):
    z, x = randn(2, 3, 7, 5, seed=80, dtype=dtype), rand(2, 3, 7, 5, seed=81, dtype=dtype)
    w = rand(2, 3, seed=82, dtype=dtype)
    red = REDUCTIONS[reduction]
    if criterion == "mse":
        forward_launches = 1 if reduction == "none" else 2
        with simt.launches(forward_launches, "forward"):
            out = ops.joints_mse_loss(z, x, w, red)
        oracle = lambda a: ref_keypoint.joints_mse_loss(a, x.double(), w.double(), reduction)  # noqa: E731
    else:
        with simt.launches(1 if reduction == "none" else 2, "forward"):
            out, stats = ops._joints_kl_loss_forward(z, x, w, red, 1e-3)
        oracle = lambda a: oracle_kl(a, x.double(), w.double(), reduction, 1e-3)  # noqa: E731
    g = randn(*out.shape, seed=83, dtype=dtype)
    expected, (e,) = oracle_grads(oracle, [z], (0,), g)
    assert_close(out, expected, dtype, "loss")
    with simt.launches(1, "backward"):
        if criterion == "mse":
            gz = ops._joints_mse_loss_backward(g, z, x, w, red)
        else:
            gz = ops._joints_kl_loss_backward(g, z, x, w, stats, red, 1e-3)
    assert_close(gz, e, dtype, "grad")


def test_joints_loss_rows_beyond_grid(ops):
    # B * K rows > grid.x: each block takes several rows (no truncated grid, no unwritten row)
    z, x = randn(3, 5, 4, 6, seed=84), rand(3, 5, 4, 6, seed=85)
    expected = ops.joints_mse_loss(z, x, None, NONE)
    with simt.device_limits(max_grid_x=4):
        out = ops.joints_mse_loss(z, x, None, NONE)
        gz = ops._joints_mse_loss_backward(torch.ones(3, 5), z, x, None, NONE)
    assert torch.equal(out, expected)
    assert torch.equal(gz, ops._joints_mse_loss_backward(torch.ones(3, 5), z, x, None, NONE))


# ---------------------------------------------------------------- fused RegressionDisparity

GENERATORS = {"truncated": (0, oracle_pseudo_labels), "fast": (1, ref_regda.fast_pseudo_label_2d)}
CRITERIA = {"mse": (0, ref_keypoint.joints_mse_loss), "kl": (1, ref_keypoint.joints_kl_loss)}
MODES = {"min": 0, "max": 1}
# forward: peaks, row losses (+ 'mean': one ordered sum); backward: one launch
DISPARITY_LAUNCHES = {"none": (2, 1), "mean": (3, 1)}


def _disparity_oracle(y, w, mode, sigma, generator, criterion, reduction, eps):
    gt, gf = GENERATORS[generator][1](y.detach().double(), sigma)
    target = (gt if mode == "min" else gf).double()

    def oracle(z):
        if criterion == "kl":
            return oracle_kl(z, target, w, reduction, eps)
        return CRITERIA[criterion][1](z, target, w, reduction)
    return oracle


def _check_disparity(ops, y, z, w, mode, sigma, generator, criterion, reduction, dtype, launches=None):
    eps = 1e-3 if criterion == "kl" else 0.0
    args = (MODES[mode], sigma, GENERATORS[generator][0], CRITERIA[criterion][0], REDUCTIONS[reduction], eps)
    fwd, bwd = launches or DISPARITY_LAUNCHES[reduction]
    with simt.launches(fwd, "fused forward"):
        out, peaks, stats = ops._regression_disparity_forward(y, z, w, *args)
    g = randn(*out.shape, seed=90, dtype=out.dtype)
    oracle = _disparity_oracle(y, None if w is None else w.double(), mode, sigma, generator, criterion, reduction,
                               eps)
    expected, (e,) = oracle_grads(oracle, [z], (0,), g)
    # the pseudo-label values are float32 (exp implementations differ in the last bit): float64 inputs
    # get float32 tolerances, as in test_regression_disparity.py
    tol = torch.float32 if dtype == torch.float64 else dtype
    assert_close(out, expected, tol, "loss")
    with simt.launches(bwd, "fused backward"):
        gz = ops._regression_disparity_backward(g, z, w, peaks, stats, *args)
    assert_close(gz, e, tol, "grad y_adv")
    return out, gz


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("criterion", CRITERIA)
def test_regression_disparity(ops, dtype, mode, criterion):
    y, z = randn(2, 4, 9, 7, seed=91), randn(2, 4, 9, 7, seed=92, dtype=dtype)
    w = rand(2, 4, seed=93)
    _check_disparity(ops, y, z, w, mode, 4 / 3, "truncated", criterion, "mean", dtype)


@pytest.mark.parametrize("generator", GENERATORS)
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_regression_disparity_generators(ops, generator, reduction):
    y, z = randn(2, 3, 8, 8, seed=94, dtype=torch.float64), randn(2, 3, 8, 8, seed=95, dtype=torch.float64)
    _check_disparity(ops, y, z, None, "max", 2.0, generator, "kl", reduction, torch.float64)


@pytest.mark.parametrize("mode", MODES)
def test_regression_disparity_many_keypoints(ops, mode):
    # 2 K axes beyond the (lowered) default shared memory: the windows are evaluated from the peaks
    # (on a GPU: K > 1024), and grid.x lowered below B * K: blocks take several rows. Same values.
    y, z = randn(2, 6, 5, 4, seed=96, dtype=torch.float64), randn(2, 6, 5, 4, seed=97, dtype=torch.float64)
    cached = _check_disparity(ops, y, z, None, mode, 1.0, "truncated", "kl", "mean", torch.float64)
    with simt.device_limits(max_dynamic_shared=64, max_grid_x=5):
        fallback = _check_disparity(ops, y, z, None, mode, 1.0, "truncated", "kl", "mean", torch.float64)
    assert torch.equal(cached[0], fallback[0]) and torch.equal(cached[1], fallback[1])


def test_regression_disparity_empty_maps_statistics(ops):
    # H * W = 0: the KL statistics are zeros, as the CPU kernel writes them (SPEC), not (-inf, 0)
    y = torch.zeros(2, 3, 0, 4)
    out, _, stats = ops._regression_disparity_forward(y, y, None, 0, 2.0, 0, 1, NONE, 0.0)
    assert torch.equal(stats, torch.zeros(2, 3, 2))
    assert torch.equal(out, torch.zeros(2, 3))


def test_regression_disparity_empty_batch(ops):
    y = torch.zeros(0, 3, 4, 4)
    with simt.launches(0, "empty forward"):
        out, _, _ = ops._regression_disparity_forward(y, y, None, 1, 2.0, 0, 1, NONE, 0.0)
    assert out.shape == (0, 3)


# ---------------------------------------------------------------- the emulator's own checks

@pytest.mark.parametrize("case, message", [
    ("divergent_barrier", "divergent __syncthreads"),
    ("partial_warp_full_mask", "names lanes that do not exist"),
    ("kernel_exception", "exception in kernel: thrown by thread 3"),
    ("grid_y", r"grid.y and grid.z must be in \[1, 65535\]"),
    ("block_too_large", "a block has 1 to 1024 threads"),
    ("shared_without_opt_in", "did not opt in"),
])
def test_emulator_reports_invalid_kernels(ops, case, message):
    with pytest.raises(RuntimeError, match=message):
        torch.ops.hal_simt.selftest(case)


def test_emulator_shuffles_exact(ops):
    out = torch.ops.hal_simt.selftest("shuffles")
    lane = torch.arange(32)
    down = torch.where(lane % 8 + 1 < 8, lane + 1, lane)  # width 8: the last lane of a segment keeps its value
    assert torch.equal(out[:32], down.float())
    assert torch.equal(out[32:], (lane ^ 3).float())


def test_emulator_poisons_shared_memory_and_shuffles_blocks(ops):
    assert torch.isnan(torch.ops.hal_simt.selftest("uninitialised_shared")).all()
    order = torch.ops.hal_simt.selftest("block_order")
    assert sorted(order.tolist()) == list(range(64)) and order.tolist() != list(range(64))
