"""RegDA pseudo labels: hal_ext::pseudo_label_2d / fast_pseudo_label_2d and their generators against the
reference and against a loop re-implementation of tllib's algorithm (SPEC, RegDA).

Argmax positions and the non-zero support of both maps are exact; non-zero values agree to rtol 1e-6.
"""
import math

import numpy as np
import pytest
import torch

from hal_ext.alignment.regda import FastPseudoLabelGenerator2d, PseudoLabelGenerator2d
from hal_ext.ops.pseudo_label import fast_pseudo_label_2d, pseudo_label_2d
from hal_ext.reference import regda as reference
from helpers import DEVICES, FLOAT_DTYPES, NATIVE

SIGMAS = [1, 1.5, 2, 3]
VARIANTS = {"truncated": (pseudo_label_2d, reference.pseudo_label_2d),
            "fast": (fast_pseudo_label_2d, reference.fast_pseudo_label_2d)}


def _with_peaks(B, K, H, W, positions, g, value=5.0):
    """Random maps in (-1, 1) with a peak of `value` at positions[(b, k) % len] = (row, col)."""
    y = torch.rand(B, K, H, W, generator=g) * 2 - 1
    i = 0
    for b in range(B):
        for k in range(K):
            r, c = positions[i % len(positions)]
            y[b, k, r, c] = value
            i += 1
    return y


def sample_inputs(device, dtype):
    """(name, y) cases shared by the value, dtype and opcheck tests."""
    g = torch.Generator().manual_seed(0)
    cases = [("random", torch.randn(3, 5, 16, 11, generator=g)),
             ("H != W", torch.randn(2, 4, 7, 13, generator=g)),
             ("1x1", torch.randn(3, 4, 1, 1, generator=g)),
             ("3x5", torch.randn(2, 3, 3, 5, generator=g)),
             ("1x7", torch.randn(2, 3, 1, 7, generator=g)),
             ("7x1", torch.randn(2, 3, 7, 1, generator=g)),
             ("K=1", torch.randn(2, 1, 9, 9, generator=g))]
    H, W = 12, 17
    border = [(0, 0), (0, W - 1), (H - 1, 0), (H - 1, W - 1), (0, 8), (H - 1, 8), (5, 0), (5, W - 1),
              (1, 1), (2, W - 2), (H - 3, 2), (H - 2, W - 3), (6, 9)]
    cases.append(("peaks on borders and corners", _with_peaks(2, len(border), H, W, border, g)))
    cases.append(("same peak for every keypoint", _with_peaks(2, 6, 10, 10, [(4, 5)], g)))
    ties = torch.zeros(2, 3, 6, 7)
    ties[0, 0, 1, 2] = ties[0, 0, 4, 5] = ties[0, 0, 0, 6] = 3.0   # first in flat order: (0, 6)
    ties[0, 1] = 1.0                                                 # all equal: index 0
    ties[0, 2, 5, 6] = ties[0, 2, 2, 3] = 2.0
    ties[1] = torch.rand(3, 6, 7, generator=g)
    ties[1, 0, 3] = 7.0                                              # a whole row tied
    cases.append(("ties", ties))
    nonpos = torch.rand(2, 4, 8, 9, generator=g) - 2.0              # maxima < 0
    nonpos[0, 1] = 0.0                                               # maximum exactly 0
    nonpos[0, 2, 3, 4] = 0.0
    nonpos[1, 0] = -math.inf
    nonpos[1, 1, 5, 5] = 1e-30 if dtype in (torch.float32, torch.float64) else 1e-3  # tiny positive max
    cases.append(("non-positive maxima", nonpos))
    special = torch.rand(2, 4, 8, 9, generator=g)
    special[0, 0, 2, 3] = math.nan                                   # NaN beats a positive maximum
    special[0, 1] = math.nan                                         # all NaN
    special[0, 2, 6, 1] = math.nan
    special[0, 2, 1, 7] = math.nan                                   # two NaN: first in flat order
    special[1, 0, 4, 4] = math.inf
    special[1, 1] = -math.inf
    special[1, 2, 7, 8] = math.inf
    special[1, 2, 0, 0] = -math.inf
    cases.append(("nan-inf", special))
    base = torch.randn(2, 3, 13, 10, generator=g)
    cases.append(("non-contiguous", base.transpose(2, 3)))
    return [(name, y.to(device, dtype)) for name, y in cases]


def assert_maps_match(actual, expected, what, atol=0.0):
    """Exact non-zero support, non-zero values to rtol 1e-6 (float32 exp implementations differ)."""
    assert actual.dtype == torch.float32 and actual.shape == expected.shape, what
    a, e = actual.cpu(), expected.cpu()
    support = (a != 0) != (e != 0)
    assert not support.any(), f"{what}: support differs at {support.nonzero()[:5].tolist()}"
    torch.testing.assert_close(a, e, rtol=1e-6, atol=atol, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_matches_reference(device, dtype, variant):
    fn, ref = VARIANTS[variant]
    for name, y in sample_inputs(device, dtype):
        for sigma in SIGMAS:
            gt, gf = fn(y, sigma)
            assert gt.device == y.device and gf.device == y.device
            rgt, rgf = ref(y.detach().double(), sigma)
            assert_maps_match(gt, rgt, f"{name} sigma={sigma} ground_truth")
            assert_maps_match(gf, rgf, f"{name} sigma={sigma} ground_false")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_peak_is_exactly_where_the_reference_puts_it(device, variant):
    # Integer sigma: ground_truth is 1 exactly at the peak (never elsewhere), so the peak is recovered.
    fn, _ = VARIANTS[variant]
    for name, y in sample_inputs(device, torch.float32):
        gt, _ = fn(y, 2)
        px, py = reference.peaks(y, max_rule=variant == "truncated")
        B, K, H, W = y.shape
        ones = (gt == 1).reshape(B, K, -1)
        assert torch.equal(ones.sum(-1), torch.ones(B, K, dtype=torch.int64, device=y.device)), name
        assert torch.equal(ones.int().argmax(-1), py * W + px), name


@pytest.mark.parametrize("device", DEVICES)
def test_typical_size(device):
    y = torch.randn(8, 21, 64, 64, device=device)
    for variant, (fn, ref) in VARIANTS.items():
        gt, gf = fn(y, 2)
        rgt, rgf = ref(y.double(), 2)
        assert_maps_match(gt, rgt, f"{variant} ground_truth")
        assert_maps_match(gf, rgf, f"{variant} ground_false")


@pytest.mark.parametrize("device", DEVICES)
def test_other_sigmas(device):
    g = torch.Generator().manual_seed(3)
    y = torch.randn(2, 5, 23, 19, generator=g).to(device)
    # 4/3, 2/3, 5/3, 7/3: 3 * sigma is inexact but rounds onto an integer, where a fused multiply-add in
    # the window bounds would move tllib's window by one pixel (pseudo_label_math.h truncated_axis)
    for sigma in [0.3, 0.7, 1.2, 2.5, 4, 6.25, 30, 4 / 3, 2 / 3, 5 / 3, 7 / 3]:
        for variant, (fn, ref) in VARIANTS.items():
            gt, gf = fn(y, sigma)
            rgt, rgf = ref(y.double(), sigma)
            assert_maps_match(gt, rgt, f"{variant} sigma={sigma} ground_truth")
            assert_maps_match(gf, rgf, f"{variant} sigma={sigma} ground_false")


# ---- tllib's algorithms, re-implemented in loop form (numpy table lookup / torch vectorised) ----------

def tllib_truncated(y, sigma):
    """tllib's PseudoLabelGenerator2d.forward: get_max_preds on the host, then the Gaussian patch of
    each peak (as its table holds it), then the dot with 1 - eye(K), in float32 numpy."""
    B, K, H, W = y.shape
    flat = y.detach().cpu().numpy().reshape(B, K, -1)
    idx, maxvals = np.argmax(flat, 2), np.amax(flat, 2)
    gt = np.zeros((B, K, H, W), dtype=np.float32)
    tmp = sigma * 3
    for b in range(B):
        for k in range(K):
            mu_x, mu_y = (idx[b, k] % W, idx[b, k] // W) if maxvals[b, k] > 0.0 else (0, 0)
            ul = [int(mu_x - tmp), int(mu_y - tmp)]
            br = [int(mu_x + tmp + 1), int(mu_y + tmp + 1)]
            size = 2 * tmp + 1
            xs = np.arange(0, size, 1, np.float32)
            ys = xs[:, np.newaxis]
            x0 = y0 = size // 2
            patch = np.exp(-((xs - x0) ** 2 + (ys - y0) ** 2) / (2 * sigma ** 2))
            gx = max(0, -ul[0]), min(br[0], W) - ul[0]
            gy = max(0, -ul[1]), min(br[1], H) - ul[1]
            ix = max(0, ul[0]), min(br[0], W)
            iy = max(0, ul[1]), min(br[1], H)
            gt[b, k, iy[0]:iy[1], ix[0]:ix[1]] = patch[gy[0]:gy[1], gx[0]:gx[1]]
    false_matrix = 1.0 - np.eye(K, dtype=np.float32)
    gf = gt.reshape(B, K, -1).transpose((0, 2, 1)).dot(false_matrix).clip(0.0, 1.0)
    gf = gf.transpose((0, 2, 1)).reshape(B, K, H, W)
    return torch.from_numpy(gt), torch.from_numpy(np.ascontiguousarray(gf))


def tllib_fast(y, sigma):
    """tllib's FastPseudoLabelGenerator2d.forward, in its float32 torch arithmetic."""
    heatmap = y.detach()
    height, width = heatmap.shape[-2:]
    idx = heatmap.flatten(-2).argmax(dim=-1)
    pred_h, pred_w = idx.div(width, rounding_mode="floor"), idx.remainder(width)
    delta_h = torch.arange(height, device=y.device) - pred_h.unsqueeze(-1)
    delta_w = torch.arange(width, device=y.device) - pred_w.unsqueeze(-1)
    d = delta_h.square().unsqueeze(-1) + delta_w.square().unsqueeze(-2)
    gaussian = d.div(-2 * sigma * sigma).exp()
    gt = torch.nn.functional.threshold(gaussian, threshold=1e-2, value=0.0)
    gf = (gt.sum(dim=1, keepdim=True) - gt).clamp(0.0, 1.0)
    return gt, gf


TLLIB_CASES = ["random", "H != W", "3x5", "1x1", "peaks on borders and corners", "ties", "non-positive maxima",
               "same peak for every keypoint"]


@pytest.mark.parametrize("sigma", SIGMAS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_matches_tllib_algorithm(variant, sigma):
    fn, _ = VARIANTS[variant]
    tllib = tllib_truncated if variant == "truncated" else tllib_fast
    for name, y in sample_inputs("cpu", torch.float32):
        if name not in TLLIB_CASES:
            continue
        gt, gf = fn(y, sigma)
        tgt, tgf = tllib(y, sigma)
        assert_maps_match(gt, tgt, f"{name} ground_truth")
        # tllib sums in float32: one float32 rounding of the sum (at most 2^-24 * 2) apart.
        assert_maps_match(gf, tgf, f"{name} ground_false", atol=1.2e-7)


def test_reference_matches_tllib_on_nan():
    # numpy and torch both take the first NaN as the maximum; the truncated variant then maps it to (0, 0).
    y = sample_inputs("cpu", torch.float32)[-2][1]
    for sigma in SIGMAS:
        gt, _ = reference.pseudo_label_2d(y, sigma)
        assert_maps_match(gt, tllib_truncated(y, sigma)[0], "nan ground_truth")
        assert_maps_match(reference.fast_pseudo_label_2d(y, sigma)[0], tllib_fast(y, sigma)[0], "nan fast")


# ---- generators, autograd, compile, determinism, errors -----------------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_generators(device):
    y = torch.randn(4, 6, 20, 24, device=device)
    gen = PseudoLabelGenerator2d(6, height=20, width=24, sigma=1.5)
    gt, gf = gen(y)
    rgt, rgf = reference.pseudo_label_2d(y.double(), 1.5)
    assert_maps_match(gt, rgt, "PseudoLabelGenerator2d ground_truth")
    assert_maps_match(gf, rgf, "PseudoLabelGenerator2d ground_false")
    fgt, fgf = FastPseudoLabelGenerator2d(sigma=3)(y)
    rgt, rgf = reference.fast_pseudo_label_2d(y.double(), 3)
    assert_maps_match(fgt, rgt, "FastPseudoLabelGenerator2d ground_truth")
    assert_maps_match(fgf, rgf, "FastPseudoLabelGenerator2d ground_false")
    assert list(gen.state_dict()) == [] and gen.num_keypoints == 6 and (gen.height, gen.width) == (20, 24)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_inputs_requiring_grad(device, variant):
    fn, _ = VARIANTS[variant]
    y = torch.randn(2, 3, 8, 8, device=device, requires_grad=True)
    gt, gf = fn(y * 2, 2)
    assert not gt.requires_grad and not gf.requires_grad
    assert gt.grad_fn is None and gf.grad_fn is None


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_deterministic(device, variant):
    fn, _ = VARIANTS[variant]
    y = torch.randn(16, 21, 64, 64, device=device)
    first = fn(y, 2)
    for _ in range(2):
        again = fn(y, 2)
        assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


def test_thread_count_does_not_change_results():
    y = torch.randn(6, 7, 33, 29)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = pseudo_label_2d(y, 2), fast_pseudo_label_2d(y, 2)
        torch.set_num_threads(max(2, threads))
        many = pseudo_label_2d(y, 2), fast_pseudo_label_2d(y, 2)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, many):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("device", DEVICES)
def test_empty(device):
    for shape in [(0, 3, 8, 8), (2, 0, 8, 8), (2, 3, 0, 8)]:
        for fn, _ in VARIANTS.values():
            gt, gf = fn(torch.randn(shape, device=device), 2)
            assert gt.shape == shape and gf.shape == shape and gt.dtype == torch.float32


@pytest.mark.skipif(not NATIVE, reason="needs the native library")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", ["pseudo_label_2d", "fast_pseudo_label_2d"])
def test_opcheck(device, op):
    fn = getattr(torch.ops.hal_ext, op)
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        for name, y in sample_inputs(device, dtype):
            requires_grad = dtype != torch.bfloat16
            torch.library.opcheck(fn, (y.clone().requires_grad_(requires_grad), 1.5))


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    torch._dynamo.reset()
    gen, fast = PseudoLabelGenerator2d(5, 16, 12, sigma=2), FastPseudoLabelGenerator2d(sigma=1.5)

    def step(y):
        gt, gf = gen(y * 2)
        fgt, fgf = fast(y)
        return gt, gf + 1, fgt, fgf

    compiled = torch.compile(step, fullgraph=True)
    for seed in range(2):
        y = torch.randn(3, 5, 16, 12, generator=torch.Generator().manual_seed(seed)).to(device)
        for got, want in zip(compiled(y), step(y)):
            assert torch.equal(got, want)


@pytest.mark.parametrize("bad, error, words", [
    (lambda: PseudoLabelGenerator2d(4)(torch.randn(2, 5, 64, 64)), ValueError, ["num_keypoints=4", "5"]),
    (lambda: PseudoLabelGenerator2d(4)(torch.randn(2, 4, 64, 32)), ValueError, ["height x width", "64 x 32"]),
    (lambda: PseudoLabelGenerator2d(4, height=32)(torch.randn(2, 4, 64, 64)), ValueError, ["32 x 64", "64 x 64"]),
    (lambda: PseudoLabelGenerator2d(4)(torch.randn(4, 64, 64)), ValueError, ["y", "4-d", "(4, 64, 64)"]),
    (lambda: FastPseudoLabelGenerator2d()(torch.randn(2, 4, 3, 64, 64)), ValueError, ["y", "4-d"]),
    (lambda: PseudoLabelGenerator2d(4)(torch.ones(2, 4, 64, 64, dtype=torch.int64)), TypeError, ["y", "torch.int64"]),
    (lambda: FastPseudoLabelGenerator2d()(torch.ones(2, 4, 8, 8, dtype=torch.complex64)), TypeError, ["y", "complex"]),
    (lambda: FastPseudoLabelGenerator2d()([[1.0]]), TypeError, ["y", "list"]),
    (lambda: PseudoLabelGenerator2d(4, sigma=0), ValueError, ["sigma", "> 0", "0"]),
    (lambda: PseudoLabelGenerator2d(4, sigma=-1.5), ValueError, ["sigma", "-1.5"]),
    (lambda: FastPseudoLabelGenerator2d(sigma=math.nan), ValueError, ["sigma", "nan"]),
    (lambda: FastPseudoLabelGenerator2d(sigma=math.inf), ValueError, ["sigma", "inf"]),
    (lambda: FastPseudoLabelGenerator2d(sigma="2"), TypeError, ["sigma", "str"]),
    (lambda: PseudoLabelGenerator2d(0), ValueError, ["num_keypoints", "0"]),
    (lambda: PseudoLabelGenerator2d(4, width=2.5), ValueError, ["width", "2.5"]),
    (lambda: pseudo_label_2d(torch.randn(2, 4, 8, 8), sigma=0.0), ValueError, ["sigma"]),
])
def test_bad_inputs(bad, error, words):
    with pytest.raises(error) as info:
        bad()
    for word in words:
        assert word in str(info.value), f"{word!r} not in {info.value}"


@pytest.mark.skipif(not NATIVE, reason="needs the native library")
@pytest.mark.parametrize("call, error, words", [
    (lambda: torch.ops.hal_ext.pseudo_label_2d(torch.randn(2, 8, 8), 2.0), ValueError, ["y", "4-d"]),
    (lambda: torch.ops.hal_ext.fast_pseudo_label_2d(torch.randn(1, 2, 8, 8), -1.0), ValueError, ["sigma", "-1"]),
    (lambda: torch.ops.hal_ext.fast_pseudo_label_2d(torch.randn(1, 2, 8, 8), math.nan), ValueError, ["sigma"]),
    (lambda: torch.ops.hal_ext.pseudo_label_2d(torch.ones(1, 2, 8, 8, dtype=torch.int32), 2.0), TypeError, ["y"]),
    # 2^31 columns (an expanded view: no memory): the kernels index windows with 32-bit offsets
    (lambda: torch.ops.hal_ext.pseudo_label_2d(torch.zeros(1, 1, 1, 1).expand(1, 1, 1, 2**31), 2.0), ValueError,
     ["height and width", "below 2^31", "2147483648"]),
    (lambda: torch.ops.hal_ext.fast_pseudo_label_2d(torch.zeros(1, 1, 1, 1).expand(1, 1, 2**31, 1), 2.0),
     ValueError, ["height and width", "below 2^31"]),
])
def test_direct_op_calls_are_checked(call, error, words):
    with pytest.raises(error) as info:
        call()
    for word in words:
        assert word in str(info.value), f"{word!r} not in {info.value}"


@pytest.mark.skipif("cuda" not in DEVICES, reason="needs a GPU")
def test_cuda_graph_capture_and_replay():
    device = "cuda"
    # No host synchronisation and no allocation outside the graph's pool: capturable, and replays
    # track new inputs.
    y = torch.randn(4, 21, 64, 64, device=device)
    for fn, ref in VARIANTS.values():
        fn(y, 2)  # warm up outside capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            gt, gf = fn(y, 2)
        for seed in range(2):
            y.copy_(torch.randn(y.shape, generator=torch.Generator().manual_seed(seed)))
            graph.replay()
            torch.cuda.synchronize()
            rgt, rgf = ref(y.double(), 2)
            assert_maps_match(gt, rgt, "graph ground_truth")
            assert_maps_match(gf, rgf, "graph ground_false")
