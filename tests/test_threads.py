"""Thread safety and determinism: every op called from several Python threads at once gives bitwise the
results of serial calls; CPU results (values and gradients) are bitwise identical across runs and across
torch.set_num_threads(1) / (2)."""
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import op_catalog as cat
from helpers import DEVICES

OPS = cat.available()


def run(name, device, seed, scale=1):
    fn, inputs, differentiable, _ = cat.example(name, device=device, seed=seed, scale=scale)
    leaves = [t.detach().clone().requires_grad_(i in differentiable) for i, t in enumerate(inputs)]
    out = fn(*leaves)
    grads = []
    if differentiable:
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out.device, out.dtype)
        grads = list(torch.autograd.grad(out, [leaves[i] for i in differentiable], g))
    return [out.detach()] + grads


def assert_bitwise(a, b, what):
    assert len(a) == len(b), what
    for i, (x, y) in enumerate(zip(a, b)):
        assert x.shape == y.shape and x.dtype == y.dtype, f"{what}: tensor {i}"
        assert torch.equal(x, y) or (torch.isnan(x) == torch.isnan(y)).all() and torch.equal(
            x.nan_to_num(), y.nan_to_num()), f"{what}: tensor {i} differs (max {(x - y).abs().max()})"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", OPS)
def test_concurrent_calls_match_serial(name, device):
    seeds = list(range(6))
    serial = {s: run(name, device, s, scale=4) for s in seeds}
    jobs = seeds * 4
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda s: (s, run(name, device, s, scale=4)), jobs))
    for s, result in results:
        assert_bitwise(result, serial[s], f"{name} seed {s} in a thread")


@pytest.mark.parametrize("name", OPS)
def test_cpu_bitwise_across_thread_counts_and_runs(name):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run(name, "cpu", 3, scale=128)
        torch.set_num_threads(2)
        two = run(name, "cpu", 3, scale=128)
        again = run(name, "cpu", 3, scale=128)
    finally:
        torch.set_num_threads(before)
    assert_bitwise(two, one, f"{name}: 2 threads vs 1")
    assert_bitwise(again, two, f"{name}: second run")
