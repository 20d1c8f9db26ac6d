"""Peak extra memory of one call: the most memory the call held at once beyond what existed before
it (its temporaries, its outputs and gradients included).

- CUDA: the caching allocator's statistics (`max_memory_allocated` after `reset_peak_memory_stats`,
  minus `memory_allocated` before the call).
- CPU: torch keeps no CPU allocator statistics, and tracemalloc does not see torch's allocations, so
  the call runs once under `torch.profiler` with `profile_memory=True`: every allocation and free of
  torch's CPU allocator is recorded, and the peak of their running sum is the torch peak. NumPy
  buffers (tllib's pseudo-label generator) bypass torch's allocator but are reported to tracemalloc,
  so the tracemalloc peak of the same call is added when it reaches 1 MiB (below that it is the
  interpreter's own bookkeeping, a few KiB for every contender; NumPy's buffers in tllib's generator
  are tens of MiB). The sum is exact when only one of the two allocates (every hal_ext,
  torch.compile and pure-torch contender), and an upper bound otherwise. Both parts are in the JSON.
"""
import contextlib
import os
import sys
import tracemalloc

import torch

PYTHON_THRESHOLD = 1 << 20


def _cuda_peak(fn):
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    del out
    return {"peak_bytes": int(peak), "method": "cuda allocator max_memory_allocated"}


@contextlib.contextmanager
def _native_stderr_silenced():
    """Sends file descriptor 2 to /dev/null: kineto prints `USDT ... profiler_start/stop` lines from C++
    when a profiler starts and stops, one pair per measured call."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _cpu_peak(fn):
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    tracemalloc.start()
    try:
        with _native_stderr_silenced():
            prof.__enter__()
        try:
            out = fn()  # outside the silenced region: the call's own errors and warnings still show
            del out
        finally:
            with _native_stderr_silenced():
                prof.__exit__(None, None, None)
        _, numpy_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    records = [(e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    records.sort(key=lambda r: r[0])
    running = peak = 0
    for _, nbytes in records:
        running += nbytes
        peak = max(peak, running)
    counted = numpy_peak if numpy_peak >= PYTHON_THRESHOLD else 0
    return {"peak_bytes": int(peak + counted), "torch_peak_bytes": int(peak), "python_peak_bytes": int(numpy_peak),
            "method": "torch.profiler allocator events + tracemalloc (NumPy)"}


def peak_extra(fn, device):
    """{"peak_bytes": int, "method": str, ...} for one call of `fn()` (already warmed up)."""
    if torch.device(device).type == "cuda":
        return _cuda_peak(fn)
    return _cpu_peak(fn)
