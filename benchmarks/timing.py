"""Timing: contenders measured side by side, interleaved, after warm-up; the copy bandwidth.

One *sample* of a contender is `inner` back-to-back calls timed as a block (`inner` is calibrated in
warm-up so that a sample lasts about `sample_s`); the per-call time is the block time / `inner`.
Samples of all contenders are interleaved (the order rotates every repetition) so that a slow
drift of the machine hits every contender alike. On CUDA each block is bracketed by CUDA events
and the host synchronises only once, after the last repetition.
"""
import gc
import statistics
import time

import torch


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def summarize(samples):
    """Median and interquartile range of per-call times (seconds)."""
    s = sorted(samples)
    if len(s) >= 2:
        q1, _, q3 = statistics.quantiles(s, n=4, method="inclusive")
    else:
        q1 = q3 = s[0]
    return {"median_s": statistics.median(s), "q1_s": q1, "q3_s": q3, "reps": len(s)}


def _time_once(fn, device):
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def measure(fns, device, *, warmup=3, min_reps=5, max_reps=50, sample_s=0.01, budget_s=1.0,
            max_inner=1000):
    """Times every callable of `fns` ({name: fn()}); returns {name: summary} (see `summarize`),
    each summary also carrying `inner` (calls per sample).

    `warmup` untimed calls each (the first one includes compilation), then repetitions until
    `budget_s` of measured time is spent, at least `min_reps` and at most `max_reps`."""
    single = {}
    for name, fn in fns.items():
        for _ in range(max(1, warmup) - 1):
            fn()
        single[name] = max(_time_once(fn, device), 1e-7)
    inner = {n: int(min(max_inner, max(1, round(sample_s / t)))) for n, t in single.items()}
    per_rep = sum(inner[n] * single[n] for n in fns)
    reps = int(min(max_reps, max(min_reps, budget_s // max(per_rep, 1e-9))))
    names = list(fns)
    samples = {n: [] for n in names}
    cuda = torch.device(device).type == "cuda"
    events = []
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for r in range(reps):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                fn, n = fns[name], inner[name]
                if cuda:
                    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    begin.record()
                    for _ in range(n):
                        fn()
                    end.record()
                    events.append((name, n, begin, end))
                else:
                    start = time.perf_counter()
                    for _ in range(n):
                        fn()
                    samples[name].append((time.perf_counter() - start) / n)
        if cuda:
            torch.cuda.synchronize()
            for name, n, begin, end in events:
                samples[name].append(begin.elapsed_time(end) / 1e3 / n)
    finally:
        if gc_was_enabled:
            gc.enable()
    return {n: {**summarize(samples[n]), "inner": inner[n]} for n in names}


def copy_bandwidth(device, nbytes=None, budget_s=1.0):
    """This machine's copy bandwidth in GB/s (1e9 bytes/s): `dst.copy_(src)` on buffers far larger
    than the caches (256 MiB on CPU, 1 GiB on CUDA), counting the bytes read plus the bytes written."""
    if nbytes is None:
        nbytes = (1 << 30) if torch.device(device).type == "cuda" else (256 << 20)
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    result = measure({"copy": lambda: dst.copy_(src)}, device, warmup=2, min_reps=5, max_reps=30,
                     sample_s=0.0, budget_s=budget_s)["copy"]
    del src, dst
    return {"gbps": 2 * nbytes / result["median_s"] / 1e9, "buffer_bytes": nbytes,
            "q1_gbps": 2 * nbytes / result["q3_s"] / 1e9, "q3_gbps": 2 * nbytes / result["q1_s"] / 1e9}
