"""Training-step benchmark: one iteration of each method's loop as tllib's example scripts run it
(mcd.py: three steps, two heads, num_k=4 generator updates; mdd.py: one step; regda.py: three steps),
with a small backbone so that the losses' share is visible. Four contenders, each with its own
identically initialised model and optimisers: `eager` uses the tllib-semantics losses (hal_ext.reference /
benchmarks.baselines, tllib's NumPy pseudo-label generator for RegDA), `hal_ext` uses hal_ext's public
API, `noop` uses losses that cost nothing but keep the graph (`(y_adv * 0).sum()`), a cross-check of
the direct measurement, and `bytes` uses losses that only move the bytes a fused loss must move (each
input read once and each input gradient written once, in one pass, no arithmetic): where the losses'
tensors are large (RegDA's heatmaps) the share that no implementation of them goes below on the
machine; where they are small (MCD, MDD) its cost is the call overhead of a Python autograd.Function,
which hal_ext's C++ calls undercut. A method whose hal_ext API is missing is skipped with a note. Only
the losses differ: models, data and optimisers are the same code.

Every loss call goes through a `LossClock` (step_clock.py): its forward and its own backward down to
the model outputs are timed inside the real step, so each step reports the share of its time spent in
the losses; `measure` takes the median over at least 15 steps per contender, interleaved.
"""
import statistics
import time
from types import SimpleNamespace

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import baselines, timing
from .cases import Unavailable, public, reference
from .step_clock import LossClock


def _backbone(out_channels=32):
    """Two stride-2 convolutions: a toy stand-in for tllib's ResNet backbones."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, out_channels, 3, 2, 1), nn.BatchNorm2d(out_channels), nn.ReLU())


def _sgd(params):
    return torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4, nesterov=True)


# ---- MCD ---------------------------------------------------------------------------------------

def _noop(*tensors, **options):
    """A loss that costs nothing but keeps the graph: zero times the first tensor argument, summed."""
    return (tensors[0] * 0).sum()


class _BytesOnly(torch.autograd.Function):
    """A loss that moves the bytes a fused loss must move, in one pass, and computes nothing: the forward
    writes the gradient of each input that needs one in a single pass that also reads a partner input,
    one of the same shape that gets no gradient, where there is one (`input + partner`; else
    `input * 1e-3`), and sums the inputs left unread; so each input is read once and each gradient
    written once, in the forward as hal_ext's CPU kernels write theirs. The backward returns the
    gradients, scaled in place unless the incoming gradient is exactly 1 on the CPU (hal_ext's rule).
    The value is 0."""

    @staticmethod
    def forward(ctx, *tensors):
        partners = [j for j, t in enumerate(tensors) if not ctx.needs_input_grad[j]]
        grads, read = [], set()
        for i, t in enumerate(tensors):
            if not ctx.needs_input_grad[i]:
                grads.append(None)
                continue
            j = next((j for j in partners if j not in read and tensors[j].shape == t.shape), None)
            grads.append(torch.mul(t, 1e-3) if j is None else torch.add(t, tensors[j]))
            read.update((i, j))
        for j, t in enumerate(tensors):
            if j not in read:
                t.sum()
        ctx.grads = grads
        return tensors[0].new_zeros(())

    @staticmethod
    def backward(ctx, grad):
        grads, ctx.grads = ctx.grads, None
        if grad.device.type != "cpu" or grad.item() != 1.0:
            grads = [g.mul_(grad) if g is not None else None for g in grads]
        return tuple(grads)


def _bytes_only(*tensors):
    """`_BytesOnly` over the tensors that are given (None skipped)."""
    return _BytesOnly.apply(*(t for t in tensors if t is not None))


def mcd_losses(kind):
    if kind == "noop":
        return SimpleNamespace(entropy=_noop, discrepancy=_noop)
    if kind == "bytes":
        return SimpleNamespace(entropy=_bytes_only, discrepancy=_bytes_only)
    if kind == "hal_ext":
        return SimpleNamespace(entropy=public("hal_ext.alignment.mcd", "entropy"),
                               discrepancy=public("hal_ext.alignment.mcd", "classifier_discrepancy"))
    return SimpleNamespace(entropy=reference("mcd", "entropy", None)[0],
                           discrepancy=reference("mcd", "classifier_discrepancy", None)[0])


def mcd_step(losses, device, batch=32, num_classes=31, num_k=4):
    head_cls = public("hal_ext.alignment.mcd", "ImageClassifierHead")
    G = _backbone().to(device)
    F1, F2 = head_cls(32, num_classes, 64).to(device), head_cls(32, num_classes, 64).to(device)
    opt_g, opt_f = _sgd(G.parameters()), _sgd(list(F1.parameters()) + list(F2.parameters()))
    x = torch.randn(2 * batch, 3, 16, 16, device=device)
    labels = torch.randint(num_classes, (batch,), device=device)

    def heads():
        g = G(x)
        (y1_s, y1_t), (y2_s, y2_t) = F1(g).chunk(2, 0), F2(g).chunk(2, 0)
        return y1_s, y2_s, F.softmax(y1_t, 1), F.softmax(y2_t, 1)

    def source_loss(clock, y1_s, y2_s, y1_t, y2_t):
        """The cross-entropies (the model's); the entropies enter the clock's objective."""
        y1_t, y2_t = clock.cut(y1_t, y2_t)
        clock.loss(losses.entropy, y1_t, coefficient=0.01)
        clock.loss(losses.entropy, y2_t, coefficient=0.01)
        return F.cross_entropy(y1_s, labels) + F.cross_entropy(y2_s, labels), (y1_t, y2_t)

    def step(clock):
        opt_g.zero_grad(), opt_f.zero_grad()
        ce, _ = source_loss(clock, *heads())
        clock.backward(ce)
        opt_g.step(), opt_f.step()
        opt_g.zero_grad(), opt_f.zero_grad()
        ce, (y1_t, y2_t) = source_loss(clock, *heads())
        clock.loss(losses.discrepancy, y1_t, y2_t, coefficient=-1.0)
        clock.backward(ce)
        opt_f.step()
        for _ in range(num_k):
            opt_g.zero_grad()
            y = heads()
            clock.loss(losses.discrepancy, *clock.cut(y[2], y[3]))
            clock.backward()
            opt_g.step()
    return step, f"batch {batch}+{batch}, 3x16x16, C={num_classes}, num_k={num_k}"


# ---- MDD ---------------------------------------------------------------------------------------

class _MDDClassifier(nn.Module):
    """tllib's MDD ImageClassifier layout (bottleneck, head, adversarial head behind a warm-start GRL)."""

    def __init__(self, num_classes, width=64):
        super().__init__()
        grl = public("hal_ext.modules.grl", "WarmStartGradientReverseLayer")
        self.backbone = nn.Sequential(_backbone(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.bottleneck = nn.Sequential(nn.Linear(32, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Dropout(0.5))
        make_head = lambda: nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Dropout(0.5), nn.Linear(width, num_classes))
        self.head, self.adv_head = make_head(), make_head()
        self.grl = grl(alpha=1.0, lo=0.0, hi=0.1, max_iters=1000, auto_step=False)

    def forward(self, x):
        f = self.bottleneck(self.backbone(x))
        return self.head(f), self.adv_head(self.grl(f))

    def step(self):
        self.grl.step()


def mdd_losses(kind):
    if kind == "noop":
        return _noop
    if kind == "bytes":  # tllib's MDD differentiates the adversarial outputs only
        return lambda y_s, y_s_adv, y_t, y_t_adv: _bytes_only(y_s.detach(), y_s_adv, y_t.detach(), y_t_adv)
    if kind == "hal_ext":
        return public("hal_ext.alignment.mdd", "ClassificationMarginDisparityDiscrepancy")(margin=4.0)
    return baselines.classification_mdd


def mdd_step(mdd, device, batch=32, num_classes=31):
    model = _MDDClassifier(num_classes).to(device)
    opt = _sgd(model.parameters())
    x = torch.randn(2 * batch, 3, 16, 16, device=device)
    labels = torch.randint(num_classes, (batch,), device=device)

    def step(clock):
        opt.zero_grad()
        outputs, outputs_adv = model(x)
        (y_s, y_t), (y_s_adv, y_t_adv) = outputs.chunk(2, 0), outputs_adv.chunk(2, 0)
        ce = F.cross_entropy(y_s, labels)
        clock.loss(mdd, *clock.cut(y_s, y_s_adv, y_t, y_t_adv), coefficient=-1.0)
        model.step()
        clock.backward(ce)
        opt.step()
    return step, f"batch {batch}+{batch}, 3x16x16, C={num_classes}, margin 4"


# ---- RegDA -------------------------------------------------------------------------------------

class _PoseNet(nn.Module):
    """tllib's PoseResNet2d layout at toy size: backbone, upsampling to 64x64, head, and head_adv
    behind a warm-start gradient layer."""

    def __init__(self, num_keypoints, feature_dim=8):
        super().__init__()
        gl = public("hal_ext.modules.gl", "WarmStartGradientLayer")
        self.backbone = _backbone(feature_dim)
        self.upsampling = nn.Sequential(
            nn.ConvTranspose2d(feature_dim, feature_dim, 4, 2, 1), nn.BatchNorm2d(feature_dim), nn.ReLU(),
            nn.ConvTranspose2d(feature_dim, feature_dim, 4, 2, 1), nn.BatchNorm2d(feature_dim), nn.ReLU())
        make_head = lambda: nn.Sequential(nn.Conv2d(feature_dim, feature_dim, 3, 1, 1), nn.BatchNorm2d(feature_dim),
                                          nn.ReLU(), nn.Conv2d(feature_dim, num_keypoints, 1))
        self.head, self.head_adv = make_head(), make_head()
        self.gl_layer = gl(alpha=1.0, lo=0.0, hi=0.1, max_iters=1000, auto_step=False)

    def forward(self, x):
        f = self.upsampling(self.backbone(x))
        return self.head(f), self.head_adv(self.gl_layer(f))

    def step(self):
        self.gl_layer.step()


def regda_losses(kind, num_keypoints, size):
    if kind == "noop":
        return _noop, lambda y, y_adv, weight=None, mode="min": _noop(y_adv)
    if kind == "bytes":  # the disparity reads y for its pseudo labels and differentiates y_adv only
        return _bytes_only, lambda y, y_adv, weight=None, mode="min": _bytes_only(y.detach(), y_adv, weight)
    if kind == "hal_ext":
        regda, kp = "hal_ext.alignment.regda", "hal_ext.keypoint_detection"
        criterion = public(kp, "JointsKLLoss")()
        gen = public(regda, "PseudoLabelGenerator2d")(num_keypoints, size, size)
        disparity = public(regda, "RegressionDisparity")(gen, public(kp, "JointsKLLoss")(epsilon=1e-7))
        return criterion, disparity
    gen = baselines.TableGenerator2d(num_keypoints, size, size)
    kl = lambda o, t, w: baselines.joints_kl(o, t, w, epsilon=1e-7)
    return baselines.joints_kl, baselines.regression_disparity(gen, kl)


def regda_step(losses, device, batch=32, num_keypoints=21, size=64):
    criterion, disparity = losses
    model = _PoseNet(num_keypoints).to(device)
    opt_f = _sgd(list(model.backbone.parameters()) + list(model.upsampling.parameters()))
    opt_h, opt_h_adv = _sgd(model.head.parameters()), _sgd(model.head_adv.parameters())
    x_s, x_t = (torch.randn(batch, 3, size, size, device=device) for _ in range(2))
    label_s = baselines.fast_pseudo_label_2d(torch.randn(batch, num_keypoints, size, size, device=device))[0]
    w_s = w_t = torch.ones(batch, num_keypoints, device=device)
    margin, trade_off = 4.0, 1.0

    def step(clock):
        opt_f.zero_grad(), opt_h.zero_grad(), opt_h_adv.zero_grad()
        y_s, y_s_adv = clock.cut(*model(x_s))
        clock.loss(criterion, y_s, label_s, w_s)
        clock.loss(disparity, y_s, y_s_adv, w_s, mode="min", coefficient=margin * trade_off)
        clock.backward()
        opt_f.step(), opt_h.step(), opt_h_adv.step()
        opt_h_adv.zero_grad()
        y_t, y_t_adv = clock.cut(*model(x_t))
        clock.loss(disparity, y_t, y_t_adv, w_t, mode="max", coefficient=trade_off)
        clock.backward()
        opt_h_adv.step()
        opt_f.zero_grad()
        y_t, y_t_adv = clock.cut(*model(x_t))
        clock.loss(disparity, y_t, y_t_adv, w_t, mode="min", coefficient=trade_off)
        clock.backward()
        opt_f.step()
        model.step()
    return step, f"batch {batch}, 3x{size}x{size} -> {num_keypoints}x{size}x{size} heatmaps, JointsKLLoss"


METHODS = {
    "mcd": (mcd_losses, mcd_step),
    "mdd": (mdd_losses, mdd_step),
    "regda": (lambda kind: regda_losses(kind, 21, 64), regda_step),
}


def measure(steps, device, warmup=2, min_steps=15, max_steps=40, budget_s=1.5):
    """Runs the steps ({contender: step(clock)}) interleaved, the order rotating every round, after
    `warmup` untimed steps each; at least `min_steps` rounds, more while the budget lasts. Per contender:
    the step time (median, quartiles), the losses' forward and backward time per step (medians) and
    their share of the step (median of the per-step shares)."""
    clocks = {name: LossClock(device) for name in steps}
    for name, step in steps.items():
        for _ in range(warmup):
            clocks[name].reset()
            step(clocks[name])
    timing.sync(device)
    names = list(steps)
    records = {name: [] for name in names}
    spent, rounds = 0.0, 0
    while rounds < min_steps or (rounds < max_steps and spent < budget_s):
        for name in names[rounds % len(names):] + names[:rounds % len(names)]:
            clock = clocks[name]
            clock.reset()
            start = time.perf_counter()
            steps[name](clock)
            timing.sync(device)
            step_s = time.perf_counter() - start
            forward_s, backward_s = clock.totals()
            records[name].append((step_s, forward_s, backward_s))
            spent += step_s
        rounds += 1
    out = {}
    for name, rec in records.items():
        summary = timing.summarize([r[0] for r in rec])
        out[name] = {**summary,
                     "loss_forward_s": statistics.median(r[1] for r in rec),
                     "loss_backward_s": statistics.median(r[2] for r in rec),
                     "loss_s": statistics.median(r[1] + r[2] for r in rec),
                     "loss_share": statistics.median((r[1] + r[2]) / r[0] for r in rec)}
    return out


def run(methods, device, budget_s=1.5, min_steps=15, max_steps=40, kinds=("noop", "bytes", "eager", "hal_ext"),
        log=print):
    """[{method, setting, contenders: {noop, bytes, eager, hal_ext: see `measure`}} | {method, skipped}]."""
    out = []
    for method in methods:
        make_losses, make_step = METHODS[method]
        log(f"[train] {method}: measuring ...", flush=True)
        try:
            steps, setting = {}, None
            for kind in kinds:
                torch.manual_seed(0)
                steps[kind], setting = make_step(make_losses(kind), device)
        except Unavailable as error:
            out.append({"method": method, "skipped": str(error)})
            log(f"[train] {method}: SKIPPED ({error})", flush=True)
            continue
        stats = measure(steps, device, min_steps=min_steps, max_steps=max_steps, budget_s=budget_s)
        out.append({"method": method, "setting": setting, "contenders": stats})
        log(f"[train] {method}: " + ", ".join(f"{k} {1 / s['median_s']:.1f} it/s, losses {100 * s['loss_share']:.1f}%"
                                             for k, s in stats.items()), flush=True)
    return out
