"""Every loss inside a small model under DistributedDataParallel (gloo, 2 CPU processes on 127.0.0.1):
the averaged gradients equal the single-process gradients of the same two per-rank losses."""
import datetime
import os
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

import op_catalog as cat

WORLD = 2
FEATURES = 6
TIMEOUT_S = 120


class AllLosses(nn.Module):
    """For each available op: its differentiable inputs are `base + 0.001 * Linear(x)` (so every loss
    sends gradient into its own parameters), the others are data; forward returns the summed loss."""

    def __init__(self, names):
        super().__init__()
        self.names = names
        self.heads = nn.ModuleDict()
        torch.manual_seed(0)
        for name in names:
            _, inputs, differentiable, _ = cat.example(name, dtype=torch.float64)
            for i in differentiable:
                width = inputs[i][0].numel()
                self.heads[f"{name}_{i}"] = nn.Linear(FEATURES, width, dtype=torch.float64)

    def forward(self, x, data):
        total = x.new_zeros(())
        for name in self.names:
            fn, inputs, differentiable, _ = data[name]
            inputs = list(inputs)
            for i in differentiable:
                n = inputs[i].shape[0]
                delta = self.heads[f"{name}_{i}"](x[:n]).view_as(inputs[i])
                inputs[i] = inputs[i] + 0.001 * delta
            out = fn(*inputs)
            assert torch.isfinite(out).all(), f"{name}: non-finite loss {out}"
            if differentiable:
                total = total + out.sum()
        return total


def rank_data(names, rank):
    return {name: cat.example(name, dtype=torch.float64, seed=100 + rank) for name in names}


def rank_features(rank):
    return torch.randn(16, FEATURES, dtype=torch.float64, generator=torch.Generator().manual_seed(rank))


def worker(rank, port, names, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))
    try:
        model = nn.parallel.DistributedDataParallel(AllLosses(names))
        for step in range(2):  # two steps: the second runs with DDP's bucket order settled
            model.zero_grad()
            loss = model(rank_features(rank), rank_data(names, rank))
            loss.backward()
        grads = {k: p.grad.clone() for k, p in model.module.named_parameters()}
        torch.save({"grads": grads, "loss": loss.detach()}, os.path.join(out_dir, f"rank{rank}.pt"))
        # Both ranks leave together: a rank that tears its gloo group down while the other still uses the
        # connection can abort the other process (5 runs of 56 on the 2-core VM without the barrier, 0 of 60 with it).
        dist.barrier()
        del model  # DDP's reducer and its gloo work objects go while the group is alive
    finally:
        dist.destroy_process_group()
    # The results are written and both ranks are past the barrier. Leave without the interpreter's
    # finalization, where gloo's threads can still abort the process ("terminate called without an active
    # exception": 3 of about 70 runs on the 2-core Xeon VM, 2026-12-05, after the barrier).
    os._exit(0)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch built without gloo")
def test_ddp_gradients_equal_single_process(tmp_path):
    names = cat.available()
    context = mp.spawn(worker, args=(free_port(), names, str(tmp_path)), nprocs=WORLD, join=False)
    deadline = time.monotonic() + TIMEOUT_S
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for p in context.processes:
                p.kill()
            pytest.fail(f"DDP workers did not finish in {TIMEOUT_S}s")
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    single = AllLosses(names)
    losses = [single(rank_features(r), rank_data(names, r)) for r in range(WORLD)]
    (sum(losses) / WORLD).backward()
    expected = {k: p.grad for k, p in single.named_parameters()}
    assert expected, "no parameter received a gradient"
    for r, result in enumerate(results):
        assert torch.allclose(result["loss"], losses[r].detach(), rtol=1e-12, atol=0), f"rank {r} loss"
        assert result["grads"].keys() == expected.keys()
        for k, want in expected.items():
            got = result["grads"][k]
            assert torch.allclose(got, want, rtol=1e-10, atol=1e-13), f"rank {r} {k}: max diff {(got - want).abs().max()}"
    # both ranks hold the same (all-reduced) gradient
    for k in expected:
        assert torch.equal(results[0]["grads"][k], results[1]["grads"][k]), k
