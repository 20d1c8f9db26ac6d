"""Mixed precision (issue 17): under torch.autocast every public loss returns the dtype that tllib's
composition returns under the same autocast on that device, its value is within SPEC's half-precision
tolerance of the float64 reference on the same half-precision inputs, gradients reach the inputs in
their own dtype, and the parameters' gradients match tllib's under autocast; also under torch.compile,
and in a GradScaler training loop.

The expected dtype is never written down here: it is what the tllib-semantics reference
(hal_ext.reference, the same torch calls as tllib) returns under the same autocast, so the tests follow
the op lists of whichever torch runs them (they may differ between releases)."""
import functools

import pytest
import torch
import torch.nn.functional as F

from hal_ext.alignment.mcd import classifier_discrepancy, entropy
from hal_ext.alignment.mdd import (ClassificationMarginDisparityDiscrepancy, MarginDisparityDiscrepancy,
                                   RegressionMarginDisparityDiscrepancy, shift_log)
from hal_ext.alignment.regda import FastPseudoLabelGenerator2d, PseudoLabelGenerator2d, RegressionDisparity
from hal_ext.keypoint_detection import JointsKLLoss, JointsMSELoss
from hal_ext.reference import keypoint_detection as ref_keypoint
from hal_ext.reference import mcd as ref_mcd
from hal_ext.reference import mdd as ref_mdd
from hal_ext.reference import regda as ref_regda
from helpers import DEVICES, assert_close, grad_output_like

HALF_DTYPES = [torch.bfloat16, torch.float16]
N, C = 8, 5             # logits (N, C): a layer's (N, 4C) output split in four
B, K, H, W = 2, 3, 8, 8  # heatmaps (B, K, H, W): a layer's (B, 2KHW) output split in two
WIDTH = {"cls": 4 * C, "heat": 2 * K * H * W}
ROWS = {"cls": N, "heat": B}


def reference_disparity(generator, criterion):
    """tllib's RegressionDisparity: pseudo labels from y, then the criterion against them."""
    def disparity(y, y_adv, weight=None, mode="min"):
        ground_truth, ground_false = generator(y.detach())
        return criterion(y_adv, ground_truth if mode == "min" else ground_false, weight)
    return disparity


def classification_inputs(logits):
    y_s, y_s_adv, y_t, y_t_adv = logits.chunk(4, dim=1)
    return y_s, y_s_adv, y_t, y_t_adv


def probabilities(logits):
    p1, p2 = logits[:, :C].softmax(1), logits[:, C:2 * C].softmax(1)
    return p1, p2


def heatmaps(logits):
    y, y_adv = logits.reshape(-1, 2 * K, H, W).chunk(2, dim=1)
    return y, y_adv


def keypoint_inputs(logits):
    """(output, target): a target in [0, 1] that gets no gradient, in the layer's dtype."""
    output, raw = heatmaps(logits)
    return output, raw.detach().sigmoid()


def keypoint_inputs_float32_target(logits):
    """(output, target) with a float32 target, as a data loader gives it."""
    output, raw = heatmaps(logits)
    return output, raw.detach().float().sigmoid()


# name -> (hal_ext loss, tllib-semantics reference, the loss inputs from a layer's output, layer kind)
CASES = {
    "classifier_discrepancy": (classifier_discrepancy, ref_mcd.classifier_discrepancy, probabilities, "cls"),
    "entropy": (entropy, ref_mcd.entropy, lambda z: probabilities(z)[:1], "cls"),
    "shift_log": (shift_log, ref_mdd.shift_log, lambda z: probabilities(z)[:1], "cls"),
    "classification_mdd": (ClassificationMarginDisparityDiscrepancy(margin=4.),
                           functools.partial(ref_mdd.classification_mdd, margin=4.), classification_inputs, "cls"),
    "classification_mdd_none": (ClassificationMarginDisparityDiscrepancy(margin=2., reduction="none"),
                                functools.partial(ref_mdd.classification_mdd, margin=2., reduction="none"),
                                classification_inputs, "cls"),
    "regression_mdd_l1": (RegressionMarginDisparityDiscrepancy(margin=1.), ref_mdd.regression_mdd,
                          classification_inputs, "cls"),
    "regression_mdd_mse_sum": (RegressionMarginDisparityDiscrepancy(margin=2., loss_function=F.mse_loss,
                                                                    reduction="sum"),
                               functools.partial(ref_mdd.regression_mdd, margin=2., loss_function=F.mse_loss,
                                                 reduction="sum"),
                               classification_inputs, "cls"),
    "regression_mdd_smooth_l1": (RegressionMarginDisparityDiscrepancy(loss_function=F.smooth_l1_loss),
                                 functools.partial(ref_mdd.regression_mdd, loss_function=F.smooth_l1_loss),
                                 classification_inputs, "cls"),
    "margin_disparity_discrepancy": (MarginDisparityDiscrepancy(ref_mdd.classification_source_disparity,
                                                                ref_mdd.classification_target_disparity),
                                     ref_mdd.classification_mdd, classification_inputs, "cls"),
    "joints_mse": (JointsMSELoss(), ref_keypoint.joints_mse_loss, keypoint_inputs, "heat"),
    "joints_kl_none": (JointsKLLoss(reduction="none", epsilon=1e-7),
                       functools.partial(ref_keypoint.joints_kl_loss, reduction="none", epsilon=1e-7),
                       keypoint_inputs, "heat"),
    "joints_kl_float32_target": (JointsKLLoss(), ref_keypoint.joints_kl_loss, keypoint_inputs_float32_target,
                                 "heat"),
    "regression_disparity_kl": (RegressionDisparity(PseudoLabelGenerator2d(K, height=H, width=W), JointsKLLoss()),
                                reference_disparity(lambda y: ref_regda.pseudo_label_2d(y, 2),
                                                    ref_keypoint.joints_kl_loss),
                                heatmaps, "heat"),
    "regression_disparity_mse": (RegressionDisparity(FastPseudoLabelGenerator2d(), JointsMSELoss()),
                                 reference_disparity(lambda y: ref_regda.fast_pseudo_label_2d(y, 2),
                                                     ref_keypoint.joints_mse_loss),
                                 heatmaps, "heat"),
}


def layer(kind, device):
    g = torch.Generator().manual_seed(7)
    linear = torch.nn.Linear(16, WIDTH[kind])
    with torch.no_grad():
        linear.weight.copy_(torch.randn(linear.weight.shape, generator=g) * 0.5)
        linear.bias.copy_(torch.randn(linear.bias.shape, generator=g))
    features = torch.randn(ROWS[kind], 16, generator=g)
    return linear.to(device), features.to(device)


def forward_and_grads(loss_fn, prepare, linear, features, device, dtype):
    """Runs the layer and the loss under autocast; returns (loss, loss inputs, their gradients, the
    parameters' gradients) for a fixed incoming gradient."""
    with torch.autocast(device, dtype=dtype):
        inputs = prepare(linear(features))
        loss = loss_fn(*inputs)
    g = grad_output_like(loss).to(loss.dtype)
    diff = [t for t in inputs if t.requires_grad]
    grads = torch.autograd.grad(loss, diff + list(linear.parameters()), g, allow_unused=True)
    return loss, inputs, grads[:len(diff)], grads[len(diff):]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("name", list(CASES))
def test_loss_under_autocast(name, dtype, device):
    hal_fn, ref_fn, prepare, kind = CASES[name]
    linear, features = layer(kind, device)
    loss, inputs, input_grads, param_grads = forward_and_grads(hal_fn, prepare, linear, features, device, dtype)
    ref_loss, _, _, ref_param_grads = forward_and_grads(ref_fn, prepare, linear, features, device, dtype)
    assert loss.dtype == ref_loss.dtype, f"{name}: {loss.dtype} under {dtype} autocast, tllib gives {ref_loss.dtype}"
    assert loss.shape == ref_loss.shape

    # The float64 reference on the same half-precision inputs (outside autocast).
    oracle = [t.detach().double().requires_grad_(t.requires_grad) for t in inputs]
    expected = ref_fn(*oracle)
    assert_close(loss, expected, dtype, f"{name} loss")
    diff = [t for t in oracle if t.requires_grad]
    expected_grads = torch.autograd.grad(expected, diff, grad_output_like(expected), allow_unused=True)
    for i, (got, want, x) in enumerate(zip(input_grads, expected_grads, [t for t in inputs if t.requires_grad])):
        if want is None or got is None:
            assert got is None or not got.any(), f"{name}: input {i} gets a gradient tllib does not give"
            continue
        assert got.dtype == x.dtype, f"{name}: gradient of input {i} is {got.dtype}, the input {x.dtype}"
        assert_close(got, want, dtype, f"{name}: gradient of input {i}")
    for p, got, want in zip(("weight", "bias"), param_grads, ref_param_grads):
        assert got.dtype == want.dtype == torch.float32
        assert_close_in_norm(got, want, f"{name}: gradient of the layer's {p} (vs tllib's under autocast)")


def assert_close_in_norm(got, want, what, rtol=1e-2):
    """Parameter gradients behind an autocast layer: both chains run the layer's backward (and tllib's
    its softmax/log backward) in half precision, where single elements can cancel; they must agree to
    `rtol` of the gradient's norm."""
    error = torch.linalg.vector_norm((got - want).double())
    scale = torch.linalg.vector_norm(want.double())
    assert error <= rtol * scale + 1e-6, f"{what}: |got - want| = {error:.3g}, |want| = {scale:.3g}, rtol {rtol}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_pseudo_label_generators_under_autocast(dtype, device):
    linear, features = layer("heat", device)
    with torch.autocast(device, dtype=dtype):
        y, _ = heatmaps(linear(features))
        maps = PseudoLabelGenerator2d(K, height=H, width=W)(y) + FastPseudoLabelGenerator2d()(y)
    expected = ref_regda.pseudo_label_2d(y.detach(), 2) + ref_regda.fast_pseudo_label_2d(y.detach(), 2)
    for got, want in zip(maps, expected):
        assert got.dtype == want.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=1e-6, atol=0)


def every_loss(names, which):
    """A function of the two layer outputs returning each case's loss (`which`: 0 hal_ext, 1 reference)."""
    def losses(z_cls, z_heat):
        return [CASES[n][which](*CASES[n][2](z_heat if CASES[n][3] == "heat" else z_cls)) for n in names]
    return losses


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_compiled_losses_under_autocast(dtype, device):
    """torch.compile(fullgraph=True) of every fused loss under autocast: the dtypes tllib gives, the
    eager values and gradients (the Autocast kernels are seen by the compiler, not only the wrappers)."""
    names = [n for n in CASES if n not in ("regression_mdd_smooth_l1", "margin_disparity_discrepancy")]
    fn, ref_fn = every_loss(names, 0), every_loss(names, 1)
    g = torch.Generator().manual_seed(3)
    z_cls = torch.randn(N, 4 * C, generator=g).to(device, dtype)
    z_heat = torch.randn(B, WIDTH["heat"], generator=g).to(device, dtype)
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True)
    results = {}
    for label, f in (("eager", fn), ("compiled", compiled), ("tllib", ref_fn)):
        leaves = [z_cls.clone().requires_grad_(), z_heat.clone().requires_grad_()]
        with torch.autocast(device, dtype=dtype):
            losses = f(*leaves)
        total = sum(loss.float().sum() for loss in losses)
        results[label] = (losses, torch.autograd.grad(total, leaves))
    for i, name in enumerate(names):
        eager, compiled_loss, tllib = (results[k][0][i] for k in ("eager", "compiled", "tllib"))
        assert compiled_loss.dtype == eager.dtype == tllib.dtype, f"{name}: {compiled_loss.dtype}, {tllib.dtype}"
        assert_close(compiled_loss, eager.double(), dtype, f"{name}: compiled vs eager")
    for got, want in zip(results["compiled"][1], results["eager"][1]):
        assert got.dtype == want.dtype == dtype
        assert_close(got, want.double(), dtype, "compiled vs eager input gradients")


@pytest.mark.parametrize("device", DEVICES)
def test_torch_ops_route_honours_autocast(device):
    """The operators themselves (torch.ops.hal_ext.*) carry the Autocast kernels, not only the Python
    wrappers; outside autocast, and for float32 inputs, nothing changes."""
    z = torch.randn(N, C, device=device, dtype=torch.bfloat16)
    cls = lambda: torch.ops.hal_ext.classification_mdd(z, z, z, z, None, None, 4., 1)[0]  # noqa: E731
    assert cls().dtype == torch.bfloat16
    with torch.autocast(device, dtype=torch.bfloat16):
        assert cls().dtype == torch.float32
        assert torch.ops.hal_ext.classification_mdd(z.float(), z.float(), z.float(), z.float(), None, None, 4.,
                                                    1)[0].dtype == torch.float32
        assert torch.ops.hal_ext.classification_mdd(z.double(), z.double(), z.double(), z.double(), None, None,
                                                    4., 1)[0].dtype == torch.float64
        h = torch.randn(B, K, H, W, device=device, dtype=torch.bfloat16)
        assert torch.ops.hal_ext.joints_mse_loss(h, h, None, 1).dtype == torch.float32
        with torch.autocast(device, enabled=False):
            assert torch.ops.hal_ext.joints_mse_loss(h, h, None, 1).dtype == torch.bfloat16


@pytest.mark.parametrize("device", DEVICES)
def test_out_dtype_argument(device):
    """The ops' out_dtype: the input dtype or its accumulation dtype, anything else a TypeError naming it."""
    z = torch.randn(N, C, device=device, dtype=torch.float16)
    loss = torch.ops.hal_ext.regression_mdd(z, z + 1, z, z * 2, None, None, 1., 0, 1, out_dtype=torch.float32)
    assert loss.dtype == torch.float32
    with pytest.raises(TypeError, match="out_dtype"):
        torch.ops.hal_ext.regression_mdd(z, z, z, z, None, None, 1., 0, 1, out_dtype=torch.float64)
    with pytest.raises(TypeError, match="out_dtype"):
        torch.ops.hal_ext.shift_log(z.float(), 1e-6, out_dtype=torch.float16)


class TinyModel(torch.nn.Module):
    """A trunk and two heads: classification logits for MCD/MDD and keypoint heatmaps for RegDA."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(11)
        self.trunk = torch.nn.Linear(16, 32)
        self.cls = torch.nn.Linear(32, 4 * C)
        self.heat = torch.nn.Linear(32, WIDTH["heat"])
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)

    def forward(self, x):
        f = torch.relu(self.trunk(x))
        return self.cls(f), self.heat(f)


def training_losses(backend):
    if backend == "hal_ext":
        cls_mdd, reg_mdd = ClassificationMarginDisparityDiscrepancy(margin=4.), RegressionMarginDisparityDiscrepancy()
        kl, disc, ent = JointsKLLoss(epsilon=1e-7), classifier_discrepancy, entropy
        disparity = RegressionDisparity(PseudoLabelGenerator2d(K, height=H, width=W), JointsMSELoss())
    else:
        cls_mdd = functools.partial(ref_mdd.classification_mdd, margin=4.)
        reg_mdd = ref_mdd.regression_mdd
        kl = functools.partial(ref_keypoint.joints_kl_loss, epsilon=1e-7)
        disc, ent = ref_mcd.classifier_discrepancy, ref_mcd.entropy
        disparity = reference_disparity(lambda y: ref_regda.pseudo_label_2d(y, 2), ref_keypoint.joints_mse_loss)

    def loss(model, x, target):
        z_cls, z_heat = model(x)
        logits = classification_inputs(z_cls)
        p1, p2 = probabilities(z_cls)
        y, y_adv = heatmaps(z_heat)
        return (cls_mdd(*logits) + reg_mdd(*logits) + disc(p1, p2) + ent(p1) + kl(y_adv, target)
                + disparity(y, y_adv, mode="max"))
    return loss


def train(backend, dtype, scaler_args, steps=10):
    model = TinyModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", **scaler_args) if scaler_args is not None else None
    loss_fn = training_losses(backend)
    g = torch.Generator().manual_seed(5)
    scales, skipped = [], []
    for _ in range(steps):
        x = torch.randn(B, 16, generator=g)
        target = torch.rand(B, K, H, W, generator=g)
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=dtype):
            loss = loss_fn(model, x, target)
        assert loss.dtype == torch.float32
        if scaler is None:
            loss.backward()
            optimizer.step()
            continue
        before = [p.detach().clone() for p in model.parameters()]
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scales.append(scaler.get_scale())
        skipped.append(all(torch.equal(a, p) for a, p in zip(before, model.parameters())))
    return model, scales, skipped


def test_grad_scaler_fp16_training_matches_reference():
    """fp16 CPU autocast with torch.amp.GradScaler('cpu'): the same steps are skipped (the initial scale
    overflows float16 gradients, then the growing scale overflows again), the scales match, and the parameters agree to half tolerance."""
    scaler_args = dict(init_scale=2.0 ** 16, growth_interval=2)
    model, scales, skipped = train("hal_ext", torch.float16, scaler_args)
    ref_model, ref_scales, ref_skipped = train("reference", torch.float16, scaler_args)
    assert skipped == ref_skipped and any(skipped) and not all(skipped), (skipped, ref_skipped)
    assert scales == ref_scales
    for (name, p), q in zip(model.named_parameters(), ref_model.parameters()):
        assert_close(p, q.double(), torch.float16, f"parameter {name} after fp16 GradScaler training")


def test_bf16_training_matches_reference():
    """bf16 CPU autocast without a scaler, five steps (tllib's composition rounds its log/softmax to
    bfloat16 on the CPU, hal_ext does not: the two drift apart slowly; ten steps reach 3e-2)."""
    model, _, _ = train("hal_ext", torch.bfloat16, None, steps=5)
    ref_model, _, _ = train("reference", torch.bfloat16, None, steps=5)
    for (name, p), q in zip(model.named_parameters(), ref_model.parameters()):
        assert_close(p, q.double(), torch.bfloat16, f"parameter {name} after bf16 training")
