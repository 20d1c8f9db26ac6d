"""hal_ext.keypoint_detection.JointsMSELoss / JointsKLLoss against the float64 reference (SPEC,
"Keypoint losses")."""
import pytest
import torch

from hal_ext.keypoint_detection import JointsKLLoss, JointsMSELoss
from hal_ext.reference import keypoint_detection as reference
from helpers import DEVICES, FLOAT_DTYPES, NATIVE, assert_close, assert_within_ulps, compare_with_reference

REDUCTIONS = ["mean", "none"]
EPSILONS = [0.0, 1e-3, 0.5]


def gaussian_maps(B, K, H, W, sigma, generator):
    """Pseudo-label-like targets: one truncated Gaussian per map (exact zeros elsewhere)."""
    ys = torch.randint(0, H, (B, K, 1, 1), generator=generator)
    xs = torch.randint(0, W, (B, K, 1, 1), generator=generator)
    Y = torch.arange(H).view(1, 1, H, 1)
    X = torch.arange(W).view(1, 1, 1, W)
    d2 = ((Y - ys) ** 2 + (X - xs) ** 2).float()
    g = torch.exp(-d2 / (2 * sigma ** 2))
    return torch.where(g > 1e-2, g, torch.zeros_like(g))


def sample_inputs(device, dtype):
    """(name, output, target, target_weight) cases shared by the value, gradient and opcheck tests."""
    g = torch.Generator().manual_seed(0)
    cases = []
    for B, K, H, W in [(2, 3, 5, 7), (4, 5, 16, 16), (1, 1, 1, 1), (3, 2, 1, 5), (2, 21, 64, 48)]:
        out = torch.randn(B, K, H, W, generator=g)
        sparse = torch.rand(B, K, H, W, generator=g)
        sparse = torch.where(sparse > 0.6, sparse, torch.zeros_like(sparse))
        cases.append((f"sparse target {(B, K, H, W)}", out, sparse, None))
        cases.append((f"gaussian target, weights {(B, K, H, W)}", out * 3, gaussian_maps(B, K, H, W, 2.0, g),
                      torch.rand(B, K, generator=g)))
    out = torch.randn(3, 4, 9, 6, generator=g)
    target = gaussian_maps(3, 4, 9, 6, 1.5, g)
    cases.append(("weight (B, K, 1) with zeros", out, target, (torch.rand(3, 4, 1, generator=g) > 0.5).float()))
    cases.append(("non-contiguous", torch.randn(3, 6, 9, 4, generator=g).permute(0, 3, 2, 1),
                  torch.rand(3, 4, 9, 6, generator=g).transpose(2, 3).contiguous().transpose(2, 3), None))
    cases.append(("target equals softmax(output)", out, out.flatten(2).softmax(-1).view_as(out), None))
    cases.append(("empty batch", torch.randn(0, 3, 4, 4, generator=g), torch.rand(0, 3, 4, 4, generator=g), None))
    cases.append(("empty maps", torch.randn(2, 3, 0, 4, generator=g), torch.rand(2, 3, 0, 4, generator=g), None))
    special = torch.randn(2, 3, 4, 4, generator=g)
    special[0, 0, 1, 1] = float("nan")
    special[0, 1, 2, 2] = float("inf")
    special[1, 2, 0, 3] = -float("inf")
    cases.append(("nan-inf output", special, torch.rand(2, 3, 4, 4, generator=g), None))
    # the CPU KL rows skip the log over 16-pixel runs of zero target: non-finite values inside such runs
    blob_out, blob = torch.randn(2, 3, 8, 8, generator=g), torch.zeros(2, 3, 8, 8)
    blob[:, :, 1:3, 1:3] = torch.rand(2, 3, 2, 2, generator=g)
    blob_out[0, 0, 6, 6], blob_out[1, 1, 7, 0] = float("inf"), float("nan")
    blob[1, 2, 6, 6] = float("nan")
    cases.append(("non-finite in a target's zero region", blob_out, blob, None))
    # t = x / S > 0 although every x < 0 (S < 0): a finite loss (the CPU rows sum x log x with x's sign flipped)
    cases.append(("all-negative target", torch.randn(2, 3, 5, 7, generator=g), -torch.rand(2, 3, 5, 7, generator=g), None))
    return [(name, o.to(device, dtype), t.to(device, dtype), None if w is None else w.to(device, dtype))
            for name, o, t, w in cases]


def _pixels(output):
    return output.numel()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_mse_matches_reference(device, dtype, reduction):
    loss = JointsMSELoss(reduction)
    for name, o, t, w in sample_inputs(device, dtype):
        compare_with_reference(lambda a, b: loss(a, b, w),
                               lambda a, b: reference.joints_mse_loss(a, b, None if w is None else w.double(), reduction),
                               [o, t], dtype, differentiable=(0,), reduced_elements=_pixels(o), what=name)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("epsilon", EPSILONS)
def test_kl_matches_reference(device, dtype, reduction, epsilon):
    loss = JointsKLLoss(reduction, epsilon)
    for name, o, t, w in sample_inputs(device, dtype):
        compare_with_reference(
            lambda a, b: loss(a, b, w),
            lambda a, b: reference.joints_kl_loss(a, b, None if w is None else w.double(), reduction, epsilon),
            [o, t], dtype, differentiable=(0,), reduced_elements=_pixels(o), what=f"{name}, eps={epsilon}")


@pytest.mark.parametrize("device", DEVICES)
def test_reductions_shapes_and_empty(device):
    o, t = torch.randn(4, 5, 6, 7, device=device), torch.rand(4, 5, 6, 7, device=device)
    w = torch.rand(4, 5, device=device)
    # SPEC: JointsMSELoss 'none' is (B, K) (mean over pixels); JointsKLLoss 'none' is (B,), tllib's code
    # (loss.mean(dim=-1) over the keypoints; its docstring says (B, K)), with and without a weight
    for cls, none_shape in ((JointsMSELoss, (4, 5)), (JointsKLLoss, (4,))):
        assert cls()(o, t).shape == ()
        assert cls("none")(o, t).shape == none_shape
        assert cls("none")(o, t, w).shape == none_shape
        assert torch.isnan(cls()(o[:0], t[:0]))
        assert cls("none")(o[:0], t[:0]).shape == (0,) + none_shape[1:]
    # zero-size maps: KL sums nothing (0), MSE averages nothing (NaN), as the reference
    e_o, e_t = torch.randn(2, 3, 0, 4, device=device), torch.rand(2, 3, 0, 4, device=device)
    assert torch.equal(JointsKLLoss("none")(e_o, e_t), torch.zeros(2, device=device))
    assert torch.isnan(JointsMSELoss("none")(e_o, e_t)).all()


@pytest.mark.parametrize("device", DEVICES)
def test_zero_target_row_is_nan_like_reference(device):
    # A map whose target (+ epsilon) sums to 0 normalises to 0/0: NaN, in tllib as here.
    o, t = torch.randn(2, 2, 3, 3, device=device), torch.rand(2, 2, 3, 3, device=device)
    t[1, 0] = 0
    got = JointsKLLoss("none")(o, t)  # (B,): the mean over the keypoints carries the NaN of (1, 0)
    assert torch.isnan(got[1]) and torch.isfinite(got[0])
    assert torch.isfinite(JointsKLLoss("none", epsilon=1e-3)(o, t)).all()


@pytest.mark.parametrize("device", DEVICES)
def test_kl_target_values_near_float_max_like_reference(device):
    # t = x' / S stays in [0, 1], but x' log x' and x' z overflow float32: the CPU rows, which sum those,
    # must give the pixel form's finite loss (as the reference and the CUDA kernel do).
    g = torch.Generator().manual_seed(3)
    o = 5 * torch.randn(2, 3, 16, 16, generator=g)
    t = torch.rand(2, 3, 16, 16, generator=g)
    t[0, 1, 7, 9], t[1, 2, 0, 0] = 1e37, 3e38
    for epsilon in (0.0, 2.0):
        got = JointsKLLoss("none", epsilon=epsilon)(o.to(device), t.to(device))
        want = reference.joints_kl_loss(o.double(), t.double(), None, "none", epsilon)
        assert torch.isfinite(got).all()
        assert_close(got, want, torch.float32, f"epsilon={epsilon}", o.numel())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck(device, reduction):
    g = torch.Generator().manual_seed(3)
    o = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64).to(device).requires_grad_()
    t = gaussian_maps(2, 3, 4, 5, 1.0, g).double().to(device)
    w = torch.rand(2, 3, generator=g, dtype=torch.float64).to(device)
    for weight in (None, w):
        assert torch.autograd.gradcheck(lambda a: JointsMSELoss(reduction)(a, t, weight), (o,))
        for eps in (0.0, 0.1):
            assert torch.autograd.gradcheck(lambda a: JointsKLLoss(reduction, eps)(a, t, weight), (o,))


@pytest.mark.parametrize("device", DEVICES)
def test_target_and_weight_gradients_follow_tllib(device):
    # The fused ops differentiate `output` only; a target or weight that requires grad takes the
    # reference composition, so its gradient is tllib's.
    g = torch.Generator().manual_seed(4)
    o = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64).to(device)
    t = (torch.rand(2, 3, 4, 5, generator=g, dtype=torch.float64) + 0.1).to(device)
    w = torch.rand(2, 3, generator=g, dtype=torch.float64).to(device)
    for fn, ref in [(JointsMSELoss(), reference.joints_mse_loss), (JointsKLLoss(epsilon=0.1), reference.joints_kl_loss)]:
        leaves = [x.clone().requires_grad_() for x in (o, t, w)]
        oracle = [x.clone().requires_grad_() for x in (o, t, w)]
        got = torch.autograd.grad(fn(*leaves), leaves)
        kwargs = {"epsilon": 0.1} if fn.__class__ is JointsKLLoss else {}
        want = torch.autograd.grad(ref(*oracle, **kwargs), oracle)
        for a, b, name in zip(got, want, ("output", "target", "target_weight")):
            assert_close(a, b, torch.float64, f"{type(fn).__name__} gradient of {name}")


def test_weight_dtype_promotes_like_tllib():
    o, t = torch.randn(2, 3, 4, 4), torch.rand(2, 3, 4, 4)
    w = torch.rand(2, 3, dtype=torch.float64)
    for fn, ref in [(JointsMSELoss(), reference.joints_mse_loss), (JointsKLLoss(), reference.joints_kl_loss)]:
        out = fn(o, t, w)
        assert out.dtype == torch.float64
        assert_close(out, ref(o.double(), t.double(), w), torch.float64, type(fn).__name__)


@pytest.mark.parametrize("device", DEVICES)
def test_deterministic(device):
    g = torch.Generator().manual_seed(5)
    o = torch.randn(8, 21, 64, 64, generator=g).to(device).requires_grad_()
    t = gaussian_maps(8, 21, 64, 64, 2.0, g).to(device)
    w = torch.rand(8, 21, generator=g).to(device)
    for fn in (JointsMSELoss(), JointsKLLoss(), JointsKLLoss("none", 1e-4)):
        first = fn(o, t, w)
        (g1,) = torch.autograd.grad(first.sum(), [o])
        for _ in range(2):
            again = fn(o, t, w)
            assert torch.equal(first, again)
            assert torch.equal(g1, torch.autograd.grad(again.sum(), [o])[0])


def test_thread_count_does_not_change_results():
    g = torch.Generator().manual_seed(6)
    o, t = torch.randn(4, 21, 32, 32, generator=g), gaussian_maps(4, 21, 32, 32, 2.0, g)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            torch.set_num_threads(n)
            leaf = o.clone().requires_grad_()
            loss = JointsKLLoss()(leaf, t) + JointsMSELoss()(leaf, t)
            results.append((loss, torch.autograd.grad(loss, [leaf])[0]))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    g = torch.Generator().manual_seed(7)
    o = torch.randn(2, 3, 8, 8, generator=g).to(device)
    t = gaussian_maps(2, 3, 8, 8, 1.0, g).to(device)
    w = torch.rand(2, 3, generator=g).to(device)
    kl, kl_none, mse = JointsKLLoss(epsilon=1e-3), JointsKLLoss("none"), JointsMSELoss("none")

    def losses(output, target, weight):
        return kl(output, target, weight) + kl_none(output, target).sum() + mse(output, target, weight).mean()

    def step(fn):
        leaf = o.clone().requires_grad_()
        loss = fn(leaf, t, w)
        loss.backward()
        return loss.detach(), leaf.grad

    eager_loss, eager_grad = step(losses)
    loss, grad = step(torch.compile(losses, fullgraph=True))
    assert_close(loss, eager_loss.double(), torch.float32, "compiled loss")
    assert_close(grad, eager_grad.double(), torch.float32, "compiled gradient")


BAD = [
    (lambda: JointsMSELoss()(torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 5)), ValueError, ["target", "(2, 3, 4, 4)"]),
    (lambda: JointsKLLoss()(torch.rand(2, 3, 4, 4), torch.rand(2, 3, 16)), ValueError, ["target", "shape"]),
    (lambda: JointsKLLoss()(torch.rand(2, 3, 16), torch.rand(2, 3, 16)), ValueError, ["output", "4 dimensions"]),
    (lambda: JointsMSELoss()(torch.rand(2, 3, 4, 4, 1), torch.rand(2, 3, 4, 4, 1)), ValueError, ["output", "4 dim"]),
    (lambda: JointsKLLoss()(torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4), torch.rand(2)), ValueError,
     ["target_weight", "(2, 3)"]),
    (lambda: JointsMSELoss()(torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4), torch.rand(2, 4)), ValueError,
     ["target_weight", "(2, 4)"]),
    (lambda: JointsMSELoss()(torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4), torch.ones(2, 3, dtype=torch.int64)),
     TypeError, ["target_weight", "int64"]),
    (lambda: JointsKLLoss()(torch.ones(2, 3, 4, 4, dtype=torch.int32), torch.rand(2, 3, 4, 4)), TypeError,
     ["output", "int32"]),
    (lambda: JointsKLLoss()(torch.rand(2, 3, 4, 4), torch.ones(2, 3, 4, 4, dtype=torch.complex64)), TypeError,
     ["target", "complex"]),
    (lambda: JointsKLLoss(reduction="sum"), ValueError, ["reduction", "'sum'"]),
    (lambda: JointsMSELoss(reduction="avg"), ValueError, ["reduction", "'avg'"]),
]


@pytest.mark.parametrize("case", range(len(BAD)))
def test_bad_input(case):
    fn, error, words = BAD[case]
    with pytest.raises(error) as info:
        fn()
    for word in words:
        assert word in str(info.value)


def test_reduction_changed_after_construction_is_checked():
    loss = JointsKLLoss()
    loss.reduction = "sum"
    with pytest.raises(ValueError, match="reduction"):
        loss(torch.rand(1, 1, 2, 2), torch.rand(1, 1, 2, 2))


@pytest.mark.skipif(not NATIVE, reason="operator checks need the native library")
@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    ops = torch.ops.hal_ext
    for name, o, t, w in sample_inputs(device, torch.float32):
        if o.numel() > 20_000 or not torch.isfinite(o).all() or o.shape[0] == 0:
            continue  # opcheck runs each op many times; NaN outputs compare unequal
        for code in (0, 1):
            grad = torch.ones((o.shape[0], o.shape[1]) if code == 0 else (), device=device)
            leaf = o.clone().requires_grad_()
            torch.library.opcheck(ops._joints_mse_loss_backward.default, (grad, o, t, w, code))
            if o.shape[2] * o.shape[3] == 0:
                continue  # the MSE of empty maps is NaN
            torch.library.opcheck(ops.joints_mse_loss.default, (leaf, t, w, code))
            torch.library.opcheck(ops._joints_mse_loss_with_grad.default, (o, t, w, code))
            if (t < 0).any():
                continue  # t + 0.01 and t + 1e-3 have both signs there: NaN KL losses
            torch.library.opcheck(ops.joints_kl_loss.default, (leaf, t + 0.01, w, code, 0.0))
            torch.library.opcheck(ops._joints_kl_loss_forward.default, (o, t, w, code, 1e-3))
            _, stats = ops._joints_kl_loss_forward(o, t, w, code, 1e-3)
            torch.library.opcheck(ops._joints_kl_loss_backward.default, (grad, o, t, w, stats, code, 1e-3))
            torch.library.opcheck(ops._joints_kl_loss_with_grad.default, (o, t, w, code, 1e-3))


@pytest.mark.skipif(not NATIVE, reason="operator checks need the native library")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("reduction", [0, 1], ids=["none", "mean"])
def test_kl_with_grad_op_equals_backward_of_ones(device, dtype, reduction):
    """hal_ext::_joints_kl_loss_with_grad (the CPU autograd path's forward) returns the forward's loss bit for
    bit and the backward's gradient for a unit incoming gradient: fused for float/double on the CPU (each
    row's gradient from the exp its loss pass stored: equal up to rounding), composed elsewhere (half
    types, CUDA: bit for bit)."""
    ops = torch.ops.hal_ext
    for name, o, t, w in sample_inputs(device, dtype):
        loss, grad = ops._joints_kl_loss_with_grad(o, t, w, reduction, 1e-3)
        want, stats = ops._joints_kl_loss_forward(o, t, w, reduction, 1e-3)
        assert torch.equal(loss.nan_to_num(7.0), want.nan_to_num(7.0)), name
        want_grad = ops._joints_kl_loss_backward(torch.ones_like(want), o, t, w, stats, reduction, 1e-3)
        if device == "cpu" and dtype in (torch.float32, torch.float64) and o.numel() > 0:
            # the gradient's two terms are at most |scale| = w / (1 or B*K), w <= 1 here
            assert_within_ulps(grad, want_grad, name, 1.0 if reduction == 0 else 1.0 / max(1, o.shape[0] * o.shape[1]))
        else:
            assert torch.equal(grad.nan_to_num(7.0), want_grad.nan_to_num(7.0)), name


@pytest.mark.skipif(not NATIVE, reason="operator checks need the native library")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("reduction", [0, 1], ids=["none", "mean"])
def test_mse_with_grad_op_equals_backward_of_ones(device, dtype, reduction):
    """hal_ext::_joints_mse_loss_with_grad (the CPU autograd path's forward) returns the forward's loss and
    the backward's gradient for a unit incoming gradient, bit for bit: fused for float/double on the CPU
    (one pass over each row for both), composed elsewhere (half types, CUDA)."""
    ops = torch.ops.hal_ext
    for name, o, t, w in sample_inputs(device, dtype):
        loss, grad = ops._joints_mse_loss_with_grad(o, t, w, reduction)
        want = ops.joints_mse_loss(o, t, w, reduction)
        assert torch.equal(loss.nan_to_num(7.0), want.nan_to_num(7.0)), name
        want_grad = ops._joints_mse_loss_backward(torch.ones_like(want), o, t, w, reduction)
        assert torch.equal(grad.nan_to_num(7.0), want_grad.nan_to_num(7.0)), name


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("criterion", ["kl", "mse"])
def test_gradient_scaled_by_incoming_graph_reusable_and_accumulated(device, reduction, criterion):
    """The CPU path keeps the unit gradient from the forward and scales it in the backward (in place when the
    graph is freed, not at all for a unit gradient): a retained graph gives the same gradient on every
    backward, scaled by any incoming gradient; a fresh forward does not see a previous backward's scaling;
    .grad accumulates correctly over fresh forwards."""
    g = torch.Generator().manual_seed(3)
    o0, t0, w0 = torch.randn(3, 4, 6, 5, generator=g), gaussian_maps(3, 4, 6, 5, 1.5, g), torch.rand(3, 4, generator=g)
    o = o0.clone().to(device).requires_grad_()
    t, w = t0.to(device), w0.to(device)
    ref = o0.double().requires_grad_()
    if criterion == "kl":
        loss_fn = JointsKLLoss(reduction=reduction, epsilon=1e-3)
        want = reference.joints_kl_loss(ref, t0.double(), w0.double(), reduction, 1e-3)
    else:
        loss_fn = JointsMSELoss(reduction=reduction)
        want = reference.joints_mse_loss(ref, t0.double(), w0.double(), reduction)
    incoming = torch.linspace(0.5, 3.0, want.numel(), dtype=torch.float64).view_as(want)
    (want_scaled,) = torch.autograd.grad(want, ref, incoming, retain_graph=True)
    (want_unit,) = torch.autograd.grad(want, ref, torch.ones_like(want))
    out = loss_fn(o, t, w)
    incoming = incoming.to(device, out.dtype)
    first = torch.autograd.grad(out, o, incoming, retain_graph=True)[0]
    second = torch.autograd.grad(out, o, incoming, retain_graph=True)[0]
    unit_kept = torch.autograd.grad(out, o, torch.ones_like(out), retain_graph=True)[0]
    unit_freed = torch.autograd.grad(out, o, torch.ones_like(out))[0]
    assert torch.equal(first, second)
    assert torch.equal(unit_kept, unit_freed)
    assert_close(first, want_scaled, torch.float32, "grad for a non-unit incoming gradient")
    assert_close(unit_freed, want_unit, torch.float32, "grad for a unit incoming gradient")
    assert torch.equal(torch.autograd.grad(loss_fn(o, t, w), o, incoming)[0], first)
    for _ in range(2):
        loss_fn(o, t, w).sum().backward()
    assert torch.equal(o.grad, unit_freed + unit_freed)


@pytest.mark.skipif(not NATIVE, reason="operator checks need the native library")
def test_ops_reject_bad_input_directly():
    ops = torch.ops.hal_ext
    o, t = torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4)
    with pytest.raises(ValueError, match="target"):
        ops.joints_kl_loss(o, torch.rand(2, 3, 4, 5), None, 1, 0.0)
    with pytest.raises(ValueError, match="output"):
        ops.joints_mse_loss(torch.rand(2, 3, 4), torch.rand(2, 3, 4), None, 1)
    with pytest.raises(ValueError, match="reduction"):
        ops.joints_mse_loss(o, t, None, 2)
    with pytest.raises(ValueError, match="target_weight"):
        ops.joints_kl_loss(o, t, torch.rand(5), 1, 0.0)
    with pytest.raises(TypeError, match="output"):
        ops.joints_kl_loss(o.int(), t.int(), None, 1, 0.0)
    with pytest.raises(ValueError, match="grad"):
        ops._joints_mse_loss_backward(torch.ones(2, 3), o, t, None, 1)
    _, stats = ops._joints_kl_loss_forward(o, t, None, 0, 0.0)
    with pytest.raises(ValueError, match="stats"):
        ops._joints_kl_loss_backward(torch.ones(2, 3), o, t, None, stats[:1], 0, 0.0)
