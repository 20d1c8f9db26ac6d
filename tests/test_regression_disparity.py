"""The fused RegressionDisparity (hal_ext generator + hal_ext criterion) against the unfused
composition: reference generator + reference criterion (SPEC "RegDA", "Keypoint losses")."""
import pytest
import torch

from hal_ext.alignment.regda import FastPseudoLabelGenerator2d, PseudoLabelGenerator2d, RegressionDisparity
from hal_ext.keypoint_detection import JointsKLLoss, JointsMSELoss
from hal_ext.reference import keypoint_detection as ref_loss
from hal_ext.reference import regda as ref_regda
from hal_ext.ops.regression_disparity import CRITERIA, MODES
from helpers import DEVICES, FLOAT_DTYPES, NATIVE, assert_close, assert_within_ulps, grad_output_like

pytestmark = pytest.mark.skipif(not NATIVE, reason="the fused disparity needs the native library")


def make_generator(kind, K, H, W, sigma):
    return PseudoLabelGenerator2d(K, H, W, sigma) if kind == "truncated" else FastPseudoLabelGenerator2d(sigma)


def make_criterion(kind, reduction, epsilon):
    return JointsKLLoss(reduction, epsilon) if kind == "kl" else JointsMSELoss(reduction)


def composition(y, y_adv, weight, mode, gen_kind, sigma, crit_kind, reduction, epsilon):
    """float64 oracle: the reference maps (float32, exact), then the reference loss in float64."""
    maps = (ref_regda.pseudo_label_2d if gen_kind == "truncated" else ref_regda.fast_pseudo_label_2d)(
        y.detach().cpu(), sigma)
    target = maps[0 if mode == "min" else 1].to(y_adv.device, torch.float64)
    w = None if weight is None else weight.double()
    if crit_kind == "kl":
        return ref_loss.joints_kl_loss(y_adv, target, w, reduction, epsilon)
    return ref_loss.joints_mse_loss(y_adv, target, w, reduction)


def cases(device, dtype):
    g = torch.Generator().manual_seed(0)
    out = []
    for B, K, H, W, sigma in [(2, 3, 16, 16, 2), (3, 5, 12, 20, 1.5), (2, 4, 9, 7, 1), (1, 2, 5, 5, 3),
                              (2, 21, 64, 64, 2)]:
        y = torch.randn(B, K, H, W, generator=g)
        y_adv = torch.randn(B, K, H, W, generator=g)
        out.append((f"{(B, K, H, W)} sigma={sigma}", y, y_adv, sigma))
    # peaks on the borders and corners, ties and non-positive maxima
    y = torch.full((2, 4, 8, 10), -1.0)
    y[0, 0, 0, 0] = y[0, 1, 7, 9] = y[0, 2, 0, 9] = y[0, 3, 7, 0] = 2.0
    y[1, 0, 3, 4] = y[1, 0, 5, 6] = 1.0  # tie: the first wins
    y[1, 1] = -0.5  # max not > 0: (0, 0) for the truncated generator
    y[1, 2, 2, 2] = float("nan")
    out.append(("borders, ties, non-positive, NaN in y", y, torch.randn(2, 4, 8, 10, generator=g), 2))
    # Non-finite logits in y_adv (the window-only KL path must fall back to the dense form's NaN/inf):
    # -inf off the peak's window, -inf inside it, +inf, NaN; the other rows stay finite.
    y = torch.randn(2, 3, 12, 12, generator=g)
    y[:, :, 6, 6] = 5.0
    y_adv = torch.randn(2, 3, 12, 12, generator=g)
    y_adv[0, 0, 0, 0] = float("-inf")
    y_adv[0, 1, 6, 6] = float("-inf")
    y_adv[0, 2, 11, 0] = float("inf")
    y_adv[1, 0, 3, 9] = float("nan")
    out.append(("non-finite y_adv", y, y_adv, 2))
    return [(name, y.to(device), y_adv.to(device, dtype), sigma) for name, y, y_adv, sigma in out]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("gen_kind", ["truncated", "fast"])
@pytest.mark.parametrize("crit_kind", ["kl", "mse"])
@pytest.mark.parametrize("mode", ["min", "max"])
def test_fused_matches_composition(device, dtype, gen_kind, crit_kind, mode):
    g = torch.Generator().manual_seed(1)
    for name, y, y_adv, sigma in cases(device, dtype):
        B, K, H, W = y.shape
        # epsilon -2: every x' = target + epsilon < 0, so S < 0 and t = x' / S > 0 (a finite loss; the CPU's
        # sparse rows take the dense form for it)
        for reduction, epsilon, weighted in [("mean", 0.0, False), ("none", 1e-3, True), ("mean", 0.1, True),
                                             ("none", -2.0, False)]:
            weight = torch.rand(B, K, generator=g).to(device) if weighted else None
            module = RegressionDisparity(make_generator(gen_kind, K, H, W, sigma),
                                         make_criterion(crit_kind, reduction, epsilon))
            leaf = y_adv.detach().clone().requires_grad_()
            got = module(y, leaf, weight, mode=mode)
            oracle = y_adv.detach().double().requires_grad_()
            want = composition(y, oracle, weight, mode, gen_kind, sigma, crit_kind, reduction,
                               epsilon if crit_kind == "kl" else 0.0)
            what = f"{name} {reduction} eps={epsilon} weighted={weighted}"
            assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32), what
            # The pseudo-label values are float32 (SPEC: within rtol 1e-6 of the reference maps, float32
            # exp implementations differ in the last bit): float64 inputs get float32 tolerances.
            tol_dtype = torch.float32 if dtype == torch.float64 else dtype
            assert_close(got, want, tol_dtype, what, y.numel())
            go = grad_output_like(want)
            (grad,) = torch.autograd.grad(got, [leaf], go.to(got.dtype))
            (want_grad,) = torch.autograd.grad(want, [oracle], go)
            assert grad.dtype == dtype
            assert_close(grad, want_grad, tol_dtype, f"gradient, {what}", y.numel())


@pytest.mark.parametrize("device", DEVICES)
def test_labels_readable_lazily(device):
    g = torch.Generator().manual_seed(2)
    y = torch.randn(2, 3, 16, 16, generator=g).to(device)
    y_adv = torch.randn(2, 3, 16, 16, generator=g).to(device)
    for gen in (PseudoLabelGenerator2d(3, 16, 16), FastPseudoLabelGenerator2d()):
        module = RegressionDisparity(gen, JointsKLLoss())
        module(y, y_adv, mode="max")
        gt, gf = gen(y)
        assert torch.equal(module.ground_truth, gt) and torch.equal(module.ground_false, gf)
        # a later call replaces them
        module(y_adv, y, mode="min")
        gt2, gf2 = gen(y_adv)
        assert torch.equal(module.ground_false, gf2) and torch.equal(module.ground_truth, gt2)


@pytest.mark.parametrize("device", DEVICES)
def test_other_criteria_use_the_composition(device):
    y = torch.randn(2, 3, 8, 8, device=device)
    y_adv = torch.randn(2, 3, 8, 8, device=device, requires_grad=True)

    def l1(output, target, weight):
        return (output - target).abs().mean()

    module = RegressionDisparity(PseudoLabelGenerator2d(3, 8, 8), l1)
    out = module(y, y_adv, mode="min")
    gt, _ = PseudoLabelGenerator2d(3, 8, 8)(y)
    assert torch.equal(out, l1(y_adv, gt, None))
    assert torch.equal(module.ground_truth, gt)


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck(device):
    g = torch.Generator().manual_seed(3)
    y = torch.randn(2, 3, 6, 7, generator=g, dtype=torch.float64).to(device)
    y_adv = torch.randn(2, 3, 6, 7, generator=g, dtype=torch.float64).to(device).requires_grad_()
    w = torch.rand(2, 3, generator=g, dtype=torch.float64).to(device)
    for gen in (PseudoLabelGenerator2d(3, 6, 7, sigma=1), FastPseudoLabelGenerator2d(sigma=1.5)):
        for crit in (JointsKLLoss(), JointsKLLoss("none", 1e-2), JointsMSELoss("none")):
            module = RegressionDisparity(gen, crit)
            for mode in ("min", "max"):
                assert torch.autograd.gradcheck(lambda a: module(y, a, w, mode=mode), (y_adv,))


@pytest.mark.parametrize("device", DEVICES)
def test_deterministic(device):
    g = torch.Generator().manual_seed(4)
    y = torch.randn(8, 21, 64, 64, generator=g).to(device)
    y_adv = torch.randn(8, 21, 64, 64, generator=g).to(device).requires_grad_()
    module = RegressionDisparity(PseudoLabelGenerator2d(21), JointsKLLoss())
    first = module(y, y_adv, mode="max")
    (g1,) = torch.autograd.grad(first, [y_adv])
    for _ in range(2):
        again = module(y, y_adv, mode="max")
        assert torch.equal(first, again)
        assert torch.equal(g1, torch.autograd.grad(again, [y_adv])[0])


@pytest.mark.parametrize("gen_kind", ["truncated", "fast"])
@pytest.mark.parametrize("crit_kind", ["kl", "mse"])
@pytest.mark.parametrize("mode", ["min", "max"])
def test_thread_count_does_not_change_results(gen_kind, crit_kind, mode):
    """The CPU kernel splits the samples into one task per thread, and with the KL criterion the rows find
    the peaks (mode 'max': the task's next sample's, its first sample its own): every split gives the
    same bits, with and without the gradient."""
    g = torch.Generator().manual_seed(9)
    B, K, H, W = 7, 5, 20, 24
    y = torch.randn(B, K, H, W, generator=g)
    y[3, 1, 0, 0] = y[6, 4, H - 1, W - 1] = 9.0  # peaks in corners: clipped windows
    y_adv = torch.randn(B, K, H, W, generator=g)
    weight = torch.rand(B, K, generator=g)
    module = RegressionDisparity(make_generator(gen_kind, K, H, W, 2.0), make_criterion(crit_kind, "none", 1e-7))
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            leaf = y_adv.clone().requires_grad_()
            loss = module(y, leaf, weight, mode=mode)
            (grad,) = torch.autograd.grad(loss.sum(), [leaf])
            with torch.no_grad():
                plain = module(y, leaf, weight, mode=mode)
            results.append((loss.detach(), grad, plain))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for first, again in zip(results[0], other):
            assert torch.equal(first, again)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    g = torch.Generator().manual_seed(5)
    y = torch.randn(2, 3, 16, 16, generator=g).to(device)
    y_adv = torch.randn(2, 3, 16, 16, generator=g).to(device)
    module = RegressionDisparity(FastPseudoLabelGenerator2d(), JointsKLLoss(epsilon=1e-3))

    def losses(a, b):
        return module(a, b, mode="min") + module(a, b, mode="max")

    def step(fn):
        leaf = y_adv.clone().requires_grad_()
        loss = fn(y, leaf)
        loss.backward()
        return loss.detach(), leaf.grad

    eager = step(losses)
    compiled = step(torch.compile(losses, fullgraph=True))
    assert_close(compiled[0], eager[0].double(), torch.float32, "compiled loss")
    assert_close(compiled[1], eager[1].double(), torch.float32, "compiled gradient")


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    ops = torch.ops.hal_ext
    g = torch.Generator().manual_seed(6)
    y = torch.randn(2, 3, 9, 8, generator=g).to(device)
    y_adv = torch.randn(2, 3, 9, 8, generator=g).to(device)
    w = torch.rand(2, 3, generator=g).to(device)
    for mode, generator, criterion, reduction, weight in [(0, 0, 1, 1, None), (1, 1, 0, 0, w), (1, 0, 1, 0, w)]:
        args = (y, y_adv.clone().requires_grad_(), weight, mode, 2.0, generator, criterion, reduction, 1e-3)
        torch.library.opcheck(ops.regression_disparity.default, args)
        torch.library.opcheck(ops._regression_disparity_forward.default, (y, y_adv) + args[2:])
        _, peaks, stats = ops._regression_disparity_forward(y, y_adv, *args[2:])
        grad = torch.ones((2, 3) if reduction == 0 else (), device=device)
        torch.library.opcheck(ops._regression_disparity_backward.default,
                              (grad, y_adv, weight, peaks, stats, mode, 2.0, generator, criterion, reduction, 1e-3))
        torch.library.opcheck(ops._regression_disparity_with_grad.default, (y, y_adv) + args[2:])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("crit_kind", ["kl", "mse"])
@pytest.mark.parametrize("mode", ["min", "max"])
def test_with_grad_op_equals_backward_of_ones(device, dtype, crit_kind, mode):
    """hal_ext::_regression_disparity_with_grad (the CPU autograd path's forward) returns the forward's loss
    bit for bit and the backward's gradient for a unit incoming gradient: fused for float/double on the
    CPU (each row's gradient written while the row is in cache; KL's from the exp its loss pass stored:
    equal up to rounding), composed elsewhere (bit for bit)."""
    ops = torch.ops.hal_ext
    g = torch.Generator().manual_seed(5)
    for name, y, y_adv, sigma in cases(device, dtype):
        weight = torch.rand(y.shape[:2], generator=g).to(device, dtype)
        for generator, reduction, w in [(0, 1, None), (1, 0, weight)]:
            args = (w, MODES[mode], float(sigma), generator, CRITERIA[crit_kind], reduction, 1e-3)
            loss, grad = ops._regression_disparity_with_grad(y, y_adv, *args)
            want, peaks, stats = ops._regression_disparity_forward(y, y_adv, *args)
            assert torch.equal(loss.nan_to_num(7.0), want.nan_to_num(7.0)), name
            want_grad = ops._regression_disparity_backward(torch.ones_like(want), y_adv, w, peaks, stats, *args[1:])
            if crit_kind == "kl" and device == "cpu" and dtype in (torch.float32, torch.float64):
                # the gradient's two terms are at most |scale| = w / (1 or B*K), w <= 1 here
                assert_within_ulps(grad, want_grad, name, 1.0 if reduction == 0 else 1.0 / (y.shape[0] * y.shape[1]))
            else:
                assert torch.equal(grad.nan_to_num(7.0), want_grad.nan_to_num(7.0)), name


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("crit_kind", ["kl", "mse"])
@pytest.mark.parametrize("mode", ["min", "max"])
def test_gradient_scaled_by_incoming_graph_reusable_and_accumulated(device, crit_kind, mode):
    """The CPU path keeps grad_y_adv for a unit incoming gradient from the forward and scales it in the
    backward (in place when the graph is freed, not at all for a unit gradient): a retained graph gives the
    same gradient on every backward, scaled by any incoming gradient; a fresh forward does not see a
    previous backward's scaling; .grad accumulates correctly over fresh forwards."""
    g = torch.Generator().manual_seed(4)
    y0, y_adv0, w0 = torch.randn(3, 4, 10, 9, generator=g), torch.randn(3, 4, 10, 9, generator=g), torch.rand(3, 4, generator=g)
    y, w = y0.to(device), w0.to(device)
    y_adv = y_adv0.clone().to(device).requires_grad_()
    fused = RegressionDisparity(make_generator("truncated", 4, 10, 9, 2.0), make_criterion(crit_kind, "mean", 1e-3))
    ref = y_adv0.double().requires_grad_()
    want = composition(y0.double(), ref, w0.double(), mode, "truncated", 2.0, crit_kind, "mean", 1e-3)
    (want_unit,) = torch.autograd.grad(want, ref)
    out = fused(y, y_adv, w, mode=mode)
    incoming = torch.tensor(2.5, device=device)
    first = torch.autograd.grad(out, y_adv, incoming, retain_graph=True)[0]
    second = torch.autograd.grad(out, y_adv, incoming, retain_graph=True)[0]
    unit_kept = torch.autograd.grad(out, y_adv, retain_graph=True)[0]
    unit_freed = torch.autograd.grad(out, y_adv)[0]
    assert torch.equal(first, second)
    assert torch.equal(unit_kept, unit_freed)
    assert_close(first, 2.5 * want_unit, torch.float32, "grad for an incoming gradient of 2.5")
    assert_close(unit_freed, want_unit, torch.float32, "grad for a unit incoming gradient")
    assert torch.equal(torch.autograd.grad(fused(y, y_adv, w, mode=mode), y_adv, incoming)[0], first)
    for _ in range(2):
        fused(y, y_adv, w, mode=mode).backward()
    assert torch.equal(y_adv.grad, unit_freed + unit_freed)


BAD = [
    (dict(mode="both"), ValueError, ["mode", "'both'"]),
    (dict(y_adv=torch.rand(2, 3, 8, 9)), ValueError, ["y_adv", "shape"]),
    (dict(y=torch.rand(2, 4, 8, 8), y_adv=torch.rand(2, 4, 8, 8)), ValueError, ["num_keypoints=3"]),
    (dict(y=torch.rand(2, 3, 8, 9), y_adv=torch.rand(2, 3, 8, 9)), ValueError, ["8 x 8", "8 x 9"]),
    (dict(y=torch.rand(2, 3, 64), y_adv=torch.rand(2, 3, 64)), ValueError, ["y", "4-d"]),
    (dict(weight=torch.rand(3)), ValueError, ["weight", "(2, 3)"]),
    (dict(y_adv=torch.ones(2, 3, 8, 8, dtype=torch.int64)), TypeError, ["y_adv", "int64"]),
    (dict(reduction="sum"), ValueError, ["reduction", "'sum'"]),
]


@pytest.mark.parametrize("case", range(len(BAD)))
def test_bad_input(case):
    changes, error, words = BAD[case]
    args = dict(y=torch.rand(2, 3, 8, 8), y_adv=torch.rand(2, 3, 8, 8), weight=None, mode="min")
    args.update(changes)
    criterion = JointsKLLoss()
    module = RegressionDisparity(PseudoLabelGenerator2d(3, 8, 8), criterion)
    if "reduction" in args:
        criterion.reduction = args.pop("reduction")
    with pytest.raises(error) as info:
        module(**args)
    for word in words:
        assert word in str(info.value)
