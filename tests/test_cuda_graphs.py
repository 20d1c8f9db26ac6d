"""CUDA-graph capture (GPU only; scripts/gpu_check.sh runs it): every op, forward and backward, and a
whole RegDA step (pseudo labels + fused RegressionDisparity, both modes) are captured once and replayed
on new data, giving bitwise the eager results. Capture fails on any host synchronisation (e.g. .item(),
a CPU round trip of the pseudo labels), which SPEC forbids."""
import pytest
import torch

import op_catalog as cat

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")


def eager(fn, inputs, differentiable):
    leaves = [t.detach().clone().requires_grad_(i in differentiable) for i, t in enumerate(inputs)]
    out = fn(*leaves)
    grads = torch.autograd.grad(out.sum(), [leaves[i] for i in differentiable]) if differentiable else []
    return [out.detach()] + [g.detach() for g in grads]


def capture(fn, static, differentiable):
    """Warm up on a side stream, capture forward + backward, return (graph, static outputs)."""
    leaves = [t.requires_grad_(i in differentiable) for i, t in enumerate(static)]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            eager(fn, leaves, differentiable)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn(*leaves)
        grads = torch.autograd.grad(out.sum(), [leaves[i] for i in differentiable]) if differentiable else []
    return graph, [out] + list(grads)


def assert_replay_matches(fn, make_inputs, differentiable, what):
    static = [t.clone() for t in make_inputs(0)]
    graph, outs = capture(fn, static, differentiable)
    for seed in (1, 2):
        fresh = make_inputs(seed)
        with torch.no_grad():
            for s, f in zip(static, fresh):
                s.copy_(f)
        graph.replay()
        torch.cuda.synchronize()
        want = eager(fn, fresh, differentiable)
        for i, (got, exp) in enumerate(zip(outs, want)):
            assert torch.equal(got, exp), f"{what}: replay output {i} differs (max {(got - exp).abs().max()})"


@pytest.mark.parametrize("name", cat.available())
def test_op_captures_and_replays(name):
    fn, _, differentiable, _ = cat.example(name, device="cuda")

    def make_inputs(seed):
        return cat.example(name, device="cuda", seed=seed)[1]

    assert_replay_matches(fn, make_inputs, differentiable, name)


@pytest.mark.skipif(any(cat.load(n) is None for n in ("RegressionDisparity", "PseudoLabelGenerator2d", "JointsKLLoss",
                                                       "FastPseudoLabelGenerator2d", "JointsMSELoss")),
                    reason="RegDA ops not on this branch")
@pytest.mark.parametrize("fast", [False, True])
def test_regda_step_captures_and_replays(fast):
    K, H = 21, 64
    gen = cat.load("FastPseudoLabelGenerator2d")(sigma=2) if fast else cat.load("PseudoLabelGenerator2d")(K, H, H)
    kl = cat.load("RegressionDisparity")(gen, cat.load("JointsKLLoss")())
    mse = cat.load("RegressionDisparity")(gen, cat.load("JointsMSELoss")())

    def step(y, y_adv):
        # RegDA's adversarial step: minimise on ground truth, maximise on ground false
        return kl(y, y_adv, mode="min") - 0.5 * mse(y, y_adv, mode="max")

    def make_inputs(seed):
        g = torch.Generator().manual_seed(seed)
        return [torch.randn(32, K, H, H, generator=g).cuda(), torch.randn(32, K, H, H, generator=g).cuda()]

    assert_replay_matches(step, make_inputs, (1,), f"RegDA step fast={fast}")
