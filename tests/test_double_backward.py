"""Second order (issue 20, SPEC "Higher order"): under create_graph=True every public loss returns a
gradient that is itself differentiable, so `gradgradcheck` passes and a gradient penalty gives the
pure-torch reference's parameter gradients (float64, SPEC tolerance)."""
import contextlib

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import hal_ext._native as _native
from hal_ext.alignment.mcd import classifier_discrepancy, entropy
from hal_ext.alignment.mdd import (ClassificationMarginDisparityDiscrepancy, MarginDisparityDiscrepancy,
                                   RegressionMarginDisparityDiscrepancy, shift_log)
from hal_ext.alignment.regda import FastPseudoLabelGenerator2d, PseudoLabelGenerator2d, RegressionDisparity
from hal_ext.keypoint_detection import JointsKLLoss, JointsMSELoss
from hal_ext.modules.gl import WarmStartGradientLayer
from hal_ext.modules.grl import GradientReverseLayer, WarmStartGradientReverseLayer
from helpers import DEVICES, NATIVE, assert_close

B, C, K, H, W = 4, 5, 3, 8, 8
HEATMAP = K * H * W


@contextlib.contextmanager
def reference_route(reference):
    """Every public function and module takes the pure-torch reference inside (as without the native
    library, HAL_EXT_DISABLE_NATIVE=1)."""
    if not reference:
        yield
        return
    saved = _native._LOADED, _native._DIRECT
    _native._LOADED, _native._DIRECT = False, None
    try:
        yield
    finally:
        _native._LOADED, _native._DIRECT = saved


def warmed(layer, steps=300):
    for _ in range(steps):
        layer.step()
    return layer


def layer_reference(coeff):
    """Identity forward, gradient times coeff: the gradient layers written without an autograd.Function."""
    return lambda h: h.detach() + coeff * (h - h.detach())


def heatmaps(out):
    return out[:, :HEATMAP].reshape(B, K, H, W), out[:, HEATMAP:].reshape(B, K, H, W)


# Constant targets and weights, made once (torch.compile cannot trace a Generator's creation).
KEYPOINT_TARGET = torch.rand(B, K, H, W, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
KEYPOINT_WEIGHT = torch.rand(B, K, generator=torch.Generator().manual_seed(4), dtype=torch.float64) + 0.5
MDD_WEIGHTS = {shape: torch.rand(shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64) + 0.5
               for shape in [(B,), (B, 2), (B, 3), (3,)]}


def smooth_l1(input, target, reduction="none"):
    return F.smooth_l1_loss(input, target, reduction=reduction, beta=0.5)


def sigmoid_target_disparity(y, y_adv):
    """A user callable that calls hal_ext's shift_log."""
    return -shift_log(torch.sigmoid(y_adv - y.detach())).sum(dim=1)


def classification_mdd(margin=4., reduction="mean", weights=False, spatial=0):
    module = ClassificationMarginDisparityDiscrepancy(margin, reduction=reduction)

    def loss(out, reference):
        n = C * max(spatial, 1)
        shape = (B, C, spatial) if spatial else (B, C)
        y_s, y_s_adv, y_t, y_t_adv = (out[:, i * n:(i + 1) * n].reshape(shape) for i in range(4))
        w = (MDD_WEIGHTS[(B,)], MDD_WEIGHTS[(B,)].flip(0)) if weights else (None, None)
        if weights and spatial:
            w = (MDD_WEIGHTS[(B, spatial)], None)
        value = module(y_s, y_s_adv, y_t, y_t_adv, *(t.to(out.device) if t is not None else None for t in w))
        return value.square().sum() if reduction == "none" else value
    return loss, 4 * C * max(spatial, 1)


def regression_mdd(loss_function=F.l1_loss, reduction="mean", weights=False, margin=1.):
    module = RegressionMarginDisparityDiscrepancy(margin, loss_function=loss_function, reduction=reduction)

    def loss(out, reference):
        y_s, y_s_adv, y_t, y_t_adv = out[:, :3], out[:, 3:6], out[:, 6:9], out[:, 9:12]
        w = (MDD_WEIGHTS[(B, 3)].to(out.device), MDD_WEIGHTS[(3,)].to(out.device)) if weights else (None, None)
        value = module(y_s, y_s_adv, y_t, y_t_adv, *w)
        return value.square().sum() if reduction == "none" else value
    return loss, 12


def generic_mdd(out, reference):
    source = lambda y, y_adv: F.cross_entropy(y_adv, y.argmax(1), reduction="none")  # noqa: E731
    module = MarginDisparityDiscrepancy(source, sigmoid_target_disparity, margin=2.)
    return module(out[:, :C], out[:, C:2 * C], out[:, 2 * C:3 * C], out[:, 3 * C:])


def joints_loss(criterion, weights=False):
    def loss(out, reference):
        output = out[:, :HEATMAP].reshape(B, K, H, W)
        weight = KEYPOINT_WEIGHT.to(out.device) if weights else None
        value = criterion(output, KEYPOINT_TARGET.to(out.device), weight)
        return value.square().sum() if criterion.reduction == "none" else value
    return loss, HEATMAP


def regression_disparity(generator, criterion, mode, weights=False):
    module = RegressionDisparity(generator, criterion)

    def loss(out, reference):
        y, y_adv = heatmaps(out)
        weight = KEYPOINT_WEIGHT.to(out.device) if weights else None
        return module(y, y_adv, weight, mode=mode)
    return loss, 2 * HEATMAP


def pseudo_labels_then(generator, criterion):
    def loss(out, reference):
        y, y_adv = heatmaps(out)
        ground_truth, ground_false = generator(y)
        assert not ground_truth.requires_grad and not ground_false.requires_grad
        return criterion(y_adv, ground_truth) + criterion(y_adv, ground_false)
    return loss, 2 * HEATMAP


def gradient_layer(layer, sign):
    coeff = sign * (layer.coeff() if hasattr(layer, "coeff") else 1.0)

    def loss(out, reference):
        h = layer_reference(coeff)(out) if reference else layer(out)
        return classifier_discrepancy(h.softmax(1), (2 * out).softmax(1)) + entropy(h.softmax(1))
    return loss, C


CASES = {
    "classifier_discrepancy": (lambda out, ref: classifier_discrepancy(out[:, :C].softmax(1), out[:, C:].softmax(1)),
                               2 * C),
    "entropy": (lambda out, ref: entropy(out.softmax(1)), C),
    "entropy_3d": (lambda out, ref: entropy(out.reshape(B, 2, C).softmax(2)), 2 * C),
    # 1.2 sigmoid: some elements above the bound (gradient 0), none on it
    "shift_log": (lambda out, ref: shift_log(1.2 * torch.sigmoid(out)).mean(), C),
    "shift_log_offset": (lambda out, ref: shift_log(torch.sigmoid(out), offset=1e-2).sum(), C),
    "classification_mdd": classification_mdd(),
    "classification_mdd_sum_margin1": classification_mdd(margin=1., reduction="sum"),
    "classification_mdd_none_weights": classification_mdd(reduction="none", weights=True),
    "classification_mdd_spatial": classification_mdd(spatial=2, weights=True),
    "regression_mdd_l1": regression_mdd(),
    "regression_mdd_mse_sum": regression_mdd(F.mse_loss, reduction="sum", margin=2.),
    "regression_mdd_mse_none_weights": regression_mdd(F.mse_loss, reduction="none", weights=True),
    "regression_mdd_l1_weights": regression_mdd(weights=True),
    "regression_mdd_callable": regression_mdd(smooth_l1),
    "margin_disparity_discrepancy": (generic_mdd, 4 * C),
    "joints_mse": joints_loss(JointsMSELoss()),
    "joints_mse_none_weights": joints_loss(JointsMSELoss(reduction="none"), weights=True),
    "joints_kl": joints_loss(JointsKLLoss()),
    "joints_kl_epsilon_weights": joints_loss(JointsKLLoss(epsilon=1e-7), weights=True),
    **{f"regression_disparity_{g}_{c}_{mode}": regression_disparity(
        PseudoLabelGenerator2d(K, H, W, sigma=2) if g == "truncated" else FastPseudoLabelGenerator2d(sigma=2),
        JointsKLLoss(epsilon=1e-7) if c == "kl" else JointsMSELoss(), mode)
       for g in ("truncated", "fast") for c in ("kl", "mse") for mode in ("min", "max")},
    "regression_disparity_kl_weights": regression_disparity(
        PseudoLabelGenerator2d(K, H, W, sigma=2), JointsKLLoss(), "max", weights=True),
    "regression_disparity_mse_weights": regression_disparity(
        FastPseudoLabelGenerator2d(sigma=2), JointsMSELoss(), "min", weights=True),
    "pseudo_label_2d_then_kl": pseudo_labels_then(PseudoLabelGenerator2d(K, H, W, sigma=2), JointsKLLoss()),
    "fast_pseudo_label_2d_then_mse": pseudo_labels_then(FastPseudoLabelGenerator2d(sigma=2), JointsMSELoss()),
    "gradient_reverse_layer": gradient_layer(GradientReverseLayer(), -1.0),
    "warm_start_gradient_reverse_layer": gradient_layer(
        warmed(WarmStartGradientReverseLayer(alpha=1., lo=0., hi=0.5, max_iters=1000)), -1.0),
    "warm_start_gradient_layer": gradient_layer(
        warmed(WarmStartGradientLayer(alpha=1., lo=0., hi=0.5, max_iters=1000)), 1.0),
}


def model_and_input(out_features, device):
    """x (B, 6) -> Linear -> tanh -> Linear -> (B, out_features), float64, seeded."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, out_features)).double().to(device)
    x = torch.randn(B, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(device)
    return model, x.requires_grad_()


def penalised_gradients(case, device, reference, wrap=lambda loss_fn: loss_fn):
    """The issue's gradient penalty: loss + |d loss / d x|^2 + |d loss / d out|^2, backward; returns
    the gradients of the parameters and of x. `wrap` wraps the loss function (torch.compile)."""
    loss_fn, out_features = CASES[case]
    model, x = model_and_input(out_features, device)
    with reference_route(reference):
        out = model(x)
        loss = wrap(loss_fn)(out, reference)
        grads = torch.autograd.grad(loss, [x, out], create_graph=True)
        assert all(g.requires_grad for g in grads), "the gradient must be differentiable under create_graph=True"
        (loss + sum(g.square().sum() for g in grads)).backward()
    return [p.grad for p in model.parameters()] + [x.grad]


@pytest.mark.skipif(not NATIVE, reason="compares the native operators with the reference")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(CASES))
def test_gradient_penalty_matches_reference(case, device):
    got = penalised_gradients(case, device, reference=False)
    want = penalised_gradients(case, device, reference=True)
    assert_gradients_close(case, got, want)


def assert_gradients_close(case, got, want):
    """SPEC's float64 tolerance; where pseudo labels enter, their float32 values differ from the
    reference's by the last bit (SPEC: rtol 1e-6), and so do the gradients."""
    labels = case.startswith(("regression_disparity", "pseudo_label", "fast_pseudo_label"))
    for i, (g, w) in enumerate(zip(got, want)):
        what = f"{case}: gradient {i} of the penalised loss"
        if labels:
            torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-9, msg=lambda m: f"{what}: {m}")
        else:
            assert_close(g, w, torch.float64, what)


COMPILED_CASES = ["classifier_discrepancy", "entropy", "shift_log", "classification_mdd",
                  "classification_mdd_spatial", "regression_mdd_mse_none_weights", "joints_mse", "joints_kl",
                  "regression_disparity_truncated_kl_min", "regression_disparity_fast_mse_max"]


@pytest.mark.skipif(not NATIVE, reason="compares the native operators with the reference")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", COMPILED_CASES)
def test_gradient_penalty_under_torch_compile(case, device):
    """torch.compile(fullgraph=True) with the eager backend: Dynamo captures the losses' operators in
    one graph that runs them eagerly, so the double backward goes through their autograd kernels."""
    torch._dynamo.reset()
    got = penalised_gradients(case, device, reference=False,
                              wrap=lambda fn: torch.compile(fn, backend="eager", fullgraph=True))
    want = penalised_gradients(case, device, reference=True)
    assert_gradients_close(case, got, want)


@pytest.mark.skipif(not NATIVE, reason="compiles the native operators")
def test_double_backward_of_an_inductor_graph_behaves_as_the_compiled_reference():
    """AOTAutograd (the default backend) and double backward are torch's business: torch 2.14 raises at the
    second differentiation of any compiled graph, tllib's composition included; torch 2.11 returns a gradient
    that is a constant there. hal_ext's compiled loss must do exactly what the compiled reference does:
    the same outcome, and the same parameter gradients where there are any."""
    case = "classification_mdd"

    def outcome(reference):
        torch._dynamo.reset()
        loss_fn, out_features = CASES[case]
        model, x = model_and_input(out_features, "cpu")
        with reference_route(reference):
            out = model(x)
            loss = torch.compile(loss_fn, fullgraph=True)(out, reference)
            try:
                g, = torch.autograd.grad(loss, [x], create_graph=True)
                (loss + g.square().sum()).backward()
            except RuntimeError as error:
                assert "double backward" in str(error), str(error)
                return "raises", None
        return ("differentiable" if g.requires_grad else "constant"), [p.grad for p in model.parameters()]

    (kind, got), (want_kind, want) = outcome(False), outcome(True)
    assert kind == want_kind
    if got is not None:
        assert_gradients_close(case, got, want)


@pytest.mark.skipif(not NATIVE, reason="the native autograd kernels keep their inputs")
def test_input_modified_in_place_raises_under_create_graph():
    """The CPU forwards that save unit gradients keep their inputs by reference: the fused backward does
    not read them, a create_graph backward does and refuses an input modified in place, naming it."""
    p1 = uniform((B, C), 0, 1, 0).requires_grad_()
    p2 = uniform((B, C), 0, 1, 1)
    a = p1 * 1.0
    loss = classifier_discrepancy(a, p2)
    a.add_(1.0)
    with pytest.raises(RuntimeError, match=r"hal_ext::classifier_discrepancy: predictions1 was modified by an "
                                           r"inplace operation.*create_graph"):
        torch.autograd.grad(loss, [p1], create_graph=True, retain_graph=True)
    g, = torch.autograd.grad(loss, [p1])
    assert_close(g, torch.sign(p1.detach() - p2) / p1.numel(), torch.float64, "first-order gradient")


# --- gradgradcheck at points away from the kinks (sign, argmax ties, the shift_log bound) -------------

def uniform(shape, low, high, seed):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * (high - low) + low


def normal(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def shift_log_points():
    x = uniform((B, C), 0.05, 0.9, 0)
    x[::2] = uniform((B // 2, C), 1.1, 1.5, 1)  # above the bound: gradient 0
    return x


def mdd_target_logits(shape):
    """Target logits, one sample's predicted class so unlikely that 1 - p_h + 1e-6 >= 1 (gradient 0)."""
    z = normal(shape, 7)
    z[0] = 0.0
    z[0, 0] = -30.0
    return z


def classification_mdd_check(reduction, weights=False, spatial=0):
    shape = (B, C, spatial) if spatial else (B, C)
    sample = (B, spatial) if spatial else (B,)
    y_s, y_t = normal(shape, 1), normal(shape, 2)
    y_t[0] = 0.0
    y_t[0, 0] = 1.0  # the sample of mdd_target_logits predicts class 0
    w_s, w_t = (uniform(sample, 0.5, 1.5, 3), uniform(sample, 0.5, 1.5, 4)) if weights else (None, None)
    module = ClassificationMarginDisparityDiscrepancy(4., reduction=reduction)

    def make(device):
        const = [t.to(device) if t is not None else None for t in (y_s, y_t, w_s, w_t)]
        return (lambda z_s, z_t: module(const[0], z_s, const[1], z_t, const[2], const[3]),
                [normal(shape, 5), mdd_target_logits(shape)])
    return make


def regression_mdd_check(loss_function, reduction, weights=False):
    y_s, y_t = normal((B, 3), 1), normal((B, 3), 2)
    w_s, w_t = (uniform((B, 3), 0.5, 1.5, 3), uniform((3,), 0.5, 1.5, 4)) if weights else (None, None)
    module = RegressionMarginDisparityDiscrepancy(2., loss_function=loss_function, reduction=reduction)

    def make(device):
        const = [t.to(device) if t is not None else None for t in (y_s, y_t, w_s, w_t)]
        # y_adv = y + a value of size >= 0.1: away from l1's kink
        offset = lambda seed: uniform((B, 3), 0.1, 1.0, seed) * torch.where(normal((B, 3), seed) > 0, 1., -1.)  # noqa
        return (lambda a_s, a_t: module(const[0], a_s, const[1], a_t, const[2], const[3]),
                [y_s + offset(5), y_t + offset(6)])
    return make


def heatmap_check(loss_of, weights=False, shape=(2, 2, 4, 5)):
    target = uniform(shape, 0.0, 1.0, 1)
    weight = uniform(shape[:2], 0.5, 1.5, 2) if weights else None

    def make(device):
        t, w = target.to(device), weight.to(device) if weights else None
        return (lambda output: loss_of(output, t, w)), [normal(shape, 3)]
    return make


def disparity_check(generator, criterion, mode, weights=False):
    module = RegressionDisparity(generator, criterion)
    return heatmap_check(lambda y_adv, y, w: module(y, y_adv, w, mode=mode), weights, shape=(1, 2, 7, 6))


GRADGRAD = {
    "classifier_discrepancy": lambda device: (classifier_discrepancy, [uniform((B, C), 0, 1, 0),
                                                                       uniform((B, C), 0, 1, 1)]),
    "entropy": lambda device: (entropy, [uniform((B, C), 0.1, 1, 0)]),
    "entropy_3d": lambda device: (entropy, [uniform((B, 2, C), 0.1, 1, 0)]),
    "shift_log": lambda device: (shift_log, [shift_log_points()]),
    "shift_log_offset": lambda device: (lambda x: shift_log(x, offset=1e-2), [shift_log_points()]),
    **{f"classification_mdd_{r}": classification_mdd_check(r) for r in ("mean", "sum", "none")},
    "classification_mdd_weights": classification_mdd_check("none", weights=True),
    "classification_mdd_spatial": classification_mdd_check("mean", weights=True, spatial=2),
    **{f"regression_mdd_{f.__name__}_{r}": regression_mdd_check(f, r)
       for f in (F.l1_loss, F.mse_loss) for r in ("mean", "sum", "none")},
    "regression_mdd_mse_weights": regression_mdd_check(F.mse_loss, "mean", weights=True),
    "joints_mse": heatmap_check(JointsMSELoss()),
    "joints_mse_none_weights": heatmap_check(JointsMSELoss(reduction="none"), weights=True),
    "joints_kl": heatmap_check(JointsKLLoss()),
    "joints_kl_none_epsilon_weights": heatmap_check(JointsKLLoss(reduction="none", epsilon=1e-3), weights=True),
    **{f"regression_disparity_{g}_{c}_{mode}": disparity_check(
        PseudoLabelGenerator2d(2, 7, 6, sigma=1) if g == "truncated" else FastPseudoLabelGenerator2d(sigma=1),
        JointsKLLoss(epsilon=1e-7) if c == "kl" else JointsMSELoss(), mode)
       for g in ("truncated", "fast") for c in ("kl", "mse") for mode in ("min", "max")},
    "regression_disparity_weights_none": disparity_check(
        PseudoLabelGenerator2d(2, 7, 6, sigma=1), JointsKLLoss(reduction="none"), "max", weights=True),
    "gradient_reverse_layer": lambda device: (GradientReverseLayer(), [normal((B, C), 0)]),
    "warm_start_gradient_layer": lambda device: (warmed(WarmStartGradientLayer(hi=0.5)), [normal((B, C), 0)]),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(GRADGRAD))
def test_gradgradcheck(case, device):
    fn, inputs = GRADGRAD[case](device)
    inputs = [t.to(device).requires_grad_() for t in inputs]
    if NATIVE and not case.startswith(("gradient_reverse", "warm_start")):
        assert native_node_in_graph(fn(*inputs)), "the native operator must be under test"
    assert torch.autograd.gradgradcheck(fn, inputs)


def native_node_in_graph(out, depth=3):
    """Whether a hal_ext autograd node is within `depth` steps of out's grad_fn (JointsKLLoss 'none' puts
    its mean over the keypoints on top of the operator)."""
    frontier = [out.grad_fn]
    for _ in range(depth):
        if any(node is not None and "hal_ext" in node.name() for node in frontier):
            return True
        frontier = [nxt for node in frontier if node is not None for nxt, _ in node.next_functions]
    return False


def internal_op_calls():
    """One call of each internal op on inputs that require grad: (name, thunk returning a float output)."""
    x = uniform((B, C), 0.1, 0.9, 0).requires_grad_()
    y = uniform((B, C), 0.1, 0.9, 1)
    one = torch.ones((), dtype=torch.float64)
    ops = torch.ops.hal_ext
    _, stats, argmax = ops.classification_mdd(y, y, y, y, None, None, 4., 1)
    heat = uniform((2, 2, 6, 6), 0.1, 0.9, 2).requires_grad_()
    return [
        ("_shift_log_backward", lambda: ops._shift_log_backward(torch.ones(B, C, dtype=torch.float64), x, 1e-6)),
        ("_classifier_discrepancy_with_grad", lambda: ops._classifier_discrepancy_with_grad(x, y)[1]),
        ("_classifier_discrepancy_backward", lambda: ops._classifier_discrepancy_backward(one, x, y)[0]),
        ("_mcd_entropy_backward", lambda: ops._mcd_entropy_backward(one.requires_grad_(), y.mean(0), B)),
        ("_classification_mdd_backward", lambda: ops._classification_mdd_backward(one, x, y, stats, argmax, 1)[0]),
        ("_joints_mse_loss_backward", lambda: ops._joints_mse_loss_backward(one, heat, heat.detach() + 1, None, 1)),
    ]


@pytest.mark.skipif(not NATIVE, reason="registered with the native operators")
@pytest.mark.parametrize("index", range(6))
def test_internal_op_raises_when_differentiated(index):
    """hal_ext's internal forward-with-gradient and backward ops have no derivative: differentiating one
    raises an error naming it, instead of torch's fallback (a warning, and no gradient)."""
    name, call = internal_op_calls()[index]
    out = call()
    assert out.requires_grad
    with pytest.raises(RuntimeError, match=rf"hal_ext::{name} is an internal op .* cannot be differentiated twice"):
        out.sum().backward()
