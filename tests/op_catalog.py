"""Every public hal_ext op, how to load it, a standard example, and an independent float64 oracle
written from SPEC.md (not hal_ext.reference, so the reference is checked too).

Shared by the reliability tests (properties, threads, distributed, bad inputs) and scripts/soak.py.
An op whose module or attribute does not exist yet on this branch is *absent*: `load()` returns None
and the tests for it are not generated. Any other import error propagates. With
HAL_EXT_REQUIRE_ALL_OPS=1 (CI, gpu_check.sh) an absent op is an error, so nothing is silently left
out once every op has landed."""
import importlib
import os

import torch
import torch.nn.functional as F

# public name -> (module, attribute)
PUBLIC = {
    "classifier_discrepancy": ("hal_ext.alignment.mcd", "classifier_discrepancy"),
    "entropy": ("hal_ext.alignment.mcd", "entropy"),
    "shift_log": ("hal_ext.alignment.mdd", "shift_log"),
    "ClassificationMarginDisparityDiscrepancy": ("hal_ext.alignment.mdd", "ClassificationMarginDisparityDiscrepancy"),
    "RegressionMarginDisparityDiscrepancy": ("hal_ext.alignment.mdd", "RegressionMarginDisparityDiscrepancy"),
    "MarginDisparityDiscrepancy": ("hal_ext.alignment.mdd", "MarginDisparityDiscrepancy"),
    "PseudoLabelGenerator2d": ("hal_ext.alignment.regda", "PseudoLabelGenerator2d"),
    "FastPseudoLabelGenerator2d": ("hal_ext.alignment.regda", "FastPseudoLabelGenerator2d"),
    "RegressionDisparity": ("hal_ext.alignment.regda", "RegressionDisparity"),
    "JointsMSELoss": ("hal_ext.keypoint_detection", "JointsMSELoss"),
    "JointsKLLoss": ("hal_ext.keypoint_detection", "JointsKLLoss"),
}

# the tests of an op also need these (RegressionDisparity is driven by our generators and losses)
DEPENDS = {"RegressionDisparity": ["PseudoLabelGenerator2d", "FastPseudoLabelGenerator2d", "JointsMSELoss",
                                   "JointsKLLoss"]}


def load(name):
    """The public object, or None when its module/attribute (or one it is tested with) is not on this
    branch yet."""
    if any(load(dep) is None for dep in DEPENDS.get(name, ())):
        return None
    module_name, attr = PUBLIC[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name != module_name:
            raise
        obj = None
    else:
        obj = getattr(module, attr, None)
    if obj is None and os.environ.get("HAL_EXT_REQUIRE_ALL_OPS") == "1":
        raise ImportError(f"HAL_EXT_REQUIRE_ALL_OPS=1 but {module_name}.{attr} does not exist")
    return obj


def available():
    return [name for name in PUBLIC if load(name) is not None]


def absent():
    return [name for name in PUBLIC if load(name) is None]


# ---------------------------------------------------------------- float64 oracles from SPEC.md

def first_argmax(y, dim):
    """Lowest index among equal maxima; NaN counts as the maximum (the first NaN wins)."""
    y = y.detach()
    nan = torch.isnan(y)
    m = y.amax(dim, keepdim=True)
    candidate = torch.where(nan.any(dim, keepdim=True), nan, y == m)
    shape = [1] * y.dim()
    shape[dim] = y.shape[dim]
    index = torch.arange(y.shape[dim], device=y.device).view(shape).expand_as(y)
    return torch.where(candidate, index, torch.full_like(index, y.shape[dim])).amin(dim)


def reduce(loss, reduction):
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def oracle_classifier_discrepancy(p1, p2):
    return (p1 - p2).abs().mean()


def oracle_entropy(p):
    return -torch.log(p.mean(0) + 1e-6).mean()


def oracle_shift_log(x, offset=1e-6):
    """SPEC: log(min(x + offset, 1)), gradient g / (x + offset) where x + offset < 1, else 0 (0 at the
    bound x + offset == 1 itself, as torch 2.14's clamp); NaN propagates."""
    v = x + offset
    inside = v < 1
    # NaN input: NaN value, gradient 0 (as log(clamp(.)), whose clamp mask is false at NaN)
    outside = torch.where(torch.isnan(v), v.detach(), torch.zeros_like(v))
    return torch.where(inside, torch.log(torch.where(inside, v, torch.ones_like(v))), outside)


class _TargetDisparity(torch.autograd.Function):
    """L_t = shift_log(1 - softmax(z)[h]) along dim 1 with SPEC's closed-form gradient
    -p_h (onehot(h)_j - p_j) / (1 - p_h + 1e-6), 1 - p_h taken as the sum of the other
    probabilities (autograd through softmax cancels catastrophically when p_h is close to 1)."""

    @staticmethod
    def forward(ctx, z, h):
        p = F.softmax(z, 1)
        onehot = torch.zeros_like(p).scatter_(1, h, 1.0)
        p_h = p.gather(1, h)
        rest = (p * (1 - onehot)).sum(1, keepdim=True)
        ctx.save_for_backward(p, onehot, p_h, rest)
        return oracle_shift_log(1.0 - p_h).squeeze(1)

    @staticmethod
    def backward(ctx, g):
        p, onehot, p_h, rest = ctx.saved_tensors
        denom = rest + 1e-6
        factor = torch.where(1.0 - p_h + 1e-6 >= 1, torch.zeros_like(denom), -p_h / denom)
        # onehot - p, with 1 - p_h at h taken as the sum of the others
        return g.unsqueeze(1) * factor * torch.where(onehot > 0, rest, -p), None


def oracle_mdd_combine(l_s, l_t, margin, reduction, w_s=None, w_t=None):
    if w_s is None:
        w_s = torch.ones_like(l_s)
    if w_t is None:
        w_t = torch.ones_like(l_t)
    return reduce(-margin * l_s * w_s + l_t * w_t, reduction)


def oracle_classification_mdd(y_s, y_s_adv, y_t, y_t_adv, w_s=None, w_t=None, margin=4, reduction="mean"):
    h_s = first_argmax(y_s, 1).unsqueeze(1)
    # cross entropy through log_softmax, as tllib (F.cross_entropy): a +inf logit makes the whole
    # column NaN there, where logsumexp - z would keep the other classes finite
    l_s = -F.log_softmax(y_s_adv, 1).gather(1, h_s).squeeze(1)
    h_t = first_argmax(y_t, 1).unsqueeze(1)
    l_t = _TargetDisparity.apply(y_t_adv, h_t)
    return oracle_mdd_combine(l_s, l_t, margin, reduction, w_s, w_t)


def oracle_regression_mdd(y_s, y_s_adv, y_t, y_t_adv, w_s=None, w_t=None, margin=1, loss="l1", reduction="mean"):
    if loss == "l1":
        l_s, l_t = (y_s_adv - y_s.detach()).abs(), (y_t_adv - y_t.detach()).abs()
    else:
        l_s, l_t = (y_s_adv - y_s.detach()) ** 2, (y_t_adv - y_t.detach()) ** 2
    return oracle_mdd_combine(l_s, l_t, margin, reduction, w_s, w_t)


def _trunc(v):
    return int(v)  # Python int(): toward zero, as tllib


def oracle_pseudo_labels(y, sigma=2):
    """PseudoLabelGenerator2d per SPEC: tllib's truncated Gaussian around the first argmax (x = y = 0
    unless the maximum is > 0), float32; ground_false = clamp(sum over other keypoints, 0, 1)."""
    B, K, H, W = y.shape
    flat = y.detach().reshape(B, K, H * W).to("cpu", torch.float64)
    idx = first_argmax(flat, 2) if H * W else torch.zeros(B, K, dtype=torch.long)
    gt = torch.zeros(B, K, H, W, dtype=torch.float32)
    t = 3 * sigma
    c = float(int((2 * t + 1) // 2))
    X = torch.arange(W, dtype=torch.float32)
    Y = torch.arange(H, dtype=torch.float32)
    for b in range(B):
        for k in range(K):
            i = int(idx[b, k])
            m = flat[b, k, i] if H * W else torch.tensor(float("nan"))
            x, yy = (i % W, i // W) if bool(m > 0) else (0, 0)
            ul, br = _trunc(x - t), _trunc(x + t + 1)
            ul_y, br_y = _trunc(yy - t), _trunc(yy + t + 1)
            dx = ((X - ul) - c) ** 2
            dy = ((Y - ul_y) - c) ** 2
            g = torch.exp(-(dy[:, None] + dx[None, :]) / (2 * sigma ** 2))
            mask = torch.zeros(H, W, dtype=torch.bool)
            mask[max(0, ul_y):max(0, min(br_y, H)), max(0, ul):max(0, min(br, W))] = True
            gt[b, k] = torch.where(mask, g, torch.zeros(()))
    total = gt.double().sum(1, keepdim=True)
    gf = (total - gt.double()).clamp(0, 1).float() if K else gt.clone()
    return gt.to(y.device), gf.to(y.device)


def oracle_fast_pseudo_labels(y, sigma=2):
    B, K, H, W = y.shape
    flat = y.detach().reshape(B, K, H * W).to("cpu", torch.float64)
    idx = first_argmax(flat, 2)
    px, py = (idx % W).float(), (idx // W).float()
    X = torch.arange(W, dtype=torch.float32)
    Y = torch.arange(H, dtype=torch.float32)
    d2 = (Y.view(1, 1, H, 1) - py.view(B, K, 1, 1)) ** 2 + (X.view(1, 1, 1, W) - px.view(B, K, 1, 1)) ** 2
    g = torch.exp(d2 / (-2 * sigma * sigma))
    gt = torch.where(g > 1e-2, g, torch.zeros(()))
    gf = (gt.double().sum(1, keepdim=True) - gt.double()).clamp(0, 1).float()
    return gt.to(y.device), gf.to(y.device)


def oracle_joints_mse(output, target, target_weight=None, reduction="mean"):
    B, K, H, W = output.shape  # explicit H * W: reshape(B, K, -1) is ambiguous for an empty batch
    loss = 0.5 * (output.reshape(B, K, H * W) - target.reshape(B, K, H * W)) ** 2
    if target_weight is not None:
        loss = loss * target_weight.reshape(B, K, 1)
    return loss.mean() if reduction == "mean" else loss.mean(-1)


def oracle_joints_kl(output, target, target_weight=None, reduction="mean", epsilon=0.0):
    B, K, H, W = output.shape
    q = F.log_softmax(output.reshape(B, K, H * W), -1)
    t = target.reshape(B, K, H * W) + epsilon
    t = t / t.sum(-1, keepdim=True)
    loss = F.kl_div(q, t, reduction="none").sum(-1)
    if target_weight is not None:
        loss = loss * target_weight.reshape(B, K)
    return loss.mean() if reduction == "mean" else loss.mean(-1)  # SPEC: 'none' is (B,), tllib's code


# ---------------------------------------------------------------- standard examples
# example(name, device, dtype, seed) -> (fn, inputs, differentiable, oracle): fn(*inputs) -> tensor
# (a loss: forward + backward works) and oracle(*float64 inputs) -> tensor. Small, fixed shapes.

def example(name, device="cpu", dtype=torch.float32, seed=0, scale=1):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.rand(*shape, generator=g).to(device, dtype)

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(device, dtype)

    obj = load(name)
    N, C, K, H = 8 * scale, 31, 5, 16
    if name == "classifier_discrepancy":
        return obj, [rand(N, C).softmax(1), rand(N, C).softmax(1)], (0, 1), oracle_classifier_discrepancy
    if name == "entropy":
        return obj, [randn(N, C).softmax(1)], (0,), oracle_entropy
    if name == "shift_log":
        x = 0.05 + 0.9 * rand(N, C)
        return (lambda x: obj(x).sum()), [x], (0,), (lambda x: oracle_shift_log(x).sum())
    if name == "ClassificationMarginDisparityDiscrepancy":
        loss = obj(margin=4, reduction="mean")
        return loss, [randn(N, C), randn(N, C), randn(N, C), randn(N, C)], (1, 3), oracle_classification_mdd
    if name == "RegressionMarginDisparityDiscrepancy":
        loss = obj(margin=1, reduction="mean")
        return loss, [rand(N, K), rand(N, K), rand(N, K), rand(N, K)], (1, 3), oracle_regression_mdd
    if name == "MarginDisparityDiscrepancy":
        def l1(y, y_adv):
            return (y_adv - y.detach()).abs()
        loss = obj(l1, l1, margin=2, reduction="sum")
        return (loss, [rand(N, K), rand(N, K), rand(N, K), rand(N, K)], (1, 3),
                lambda *a: oracle_regression_mdd(*a, margin=2, reduction="sum"))
    if name in ("PseudoLabelGenerator2d", "FastPseudoLabelGenerator2d"):
        gen = obj(K, H, H, sigma=2) if name == "PseudoLabelGenerator2d" else obj(sigma=2)
        oracle = oracle_pseudo_labels if name == "PseudoLabelGenerator2d" else oracle_fast_pseudo_labels

        def run(y):
            gt, gf = gen(y)
            return torch.stack([gt, gf])

        return run, [randn(2 * scale, K, H, H)], (), (lambda y: torch.stack(oracle(y, 2)))
    if name == "RegressionDisparity":
        gen_cls = load("PseudoLabelGenerator2d")
        crit_cls = load("JointsKLLoss")
        disparity = obj(gen_cls(K, H, H, sigma=2), crit_cls())

        def run(y, y_adv):
            return disparity(y, y_adv, mode="min") + 0.5 * disparity(y, y_adv, mode="max")

        def oracle(y, y_adv):
            gt, gf = oracle_pseudo_labels(y, 2)
            return oracle_joints_kl(y_adv, gt.double()) + 0.5 * oracle_joints_kl(y_adv, gf.double())

        return run, [randn(2 * scale, K, H, H), randn(2 * scale, K, H, H)], (1,), oracle
    if name == "JointsMSELoss":
        return (obj(), [randn(2 * scale, K, H, H), rand(2 * scale, K, H, H), rand(2 * scale, K)], (0,),
                oracle_joints_mse)
    if name == "JointsKLLoss":
        return (obj(), [randn(2 * scale, K, H, H), rand(2 * scale, K, H, H), rand(2 * scale, K)], (0,),
                oracle_joints_kl)
    raise KeyError(name)
