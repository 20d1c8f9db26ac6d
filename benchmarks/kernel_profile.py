"""Where a contender's forward+backward spends its device time, kernel by kernel (torch.profiler).

    python -m benchmarks.kernel_profile --device cuda --ops shift_log,joints_kl
    python -m benchmarks.kernel_profile --device cpu --ops joints_kl --shape 32x21x64x64

For each op, at its largest shape of the run's sweep (sweep_cuda on a GPU) or at --shape, it calls
each contender's fwd+bwd (as runner.py times it: a ones gradient for non-scalar outputs) a few times
under the profiler and prints the kernels (or, on the CPU, the operators) that took the most self
time, with the bytes the fused op must move over that total as GB/s. A diagnostic for a GPU session
whose sweep shows a contender far from the copy bandwidth; it asserts nothing.
"""
import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from . import cases, runner, timing
from .__main__ import _shape_list, _subset


def profile_call(fn, device, iters):
    for _ in range(2):  # warm-up: compilation, allocator, first launches
        fn()
    timing.sync(device)
    cuda = torch.device(device).type == "cuda"
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        for _ in range(iters):
            fn()
        timing.sync(device)
    return prof


def kernel_rows(prof, cuda, iters):
    """[(name, self microseconds per call, count per call)], largest first: the CUDA kernels, or (cuda
    False) the operators."""
    rows = []
    for e in prof.key_averages():
        t = e.self_device_time_total if cuda else e.self_cpu_time_total
        if t > 0 and (not cuda or e.device_type == torch.autograd.DeviceType.CUDA):
            rows.append((e.key, t / iters, e.count / iters))
    return sorted(rows, key=lambda r: -r[1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--ops", required=True, help="comma-separated op names (python -m benchmarks --list)")
    p.add_argument("--shape", type=_shape_list, help="e.g. 512x21x64x64 (default: the op's largest sweep shape)")
    p.add_argument("--contenders", type=_subset(runner.CONTENDERS), default=["hal_ext", "compile"])
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--top", type=int, default=6)
    args = p.parse_args(argv)
    runner.configure_dynamo()
    cuda = torch.device(args.device).type == "cuda"
    by_name = {c.name: c for c in cases.all_cases()}
    for name in args.ops.split(","):
        case = by_name[name]
        shape = args.shape[0] if args.shape else (case.shapes.get("sweep_cuda" if cuda else "sweep")
                                                  or case.shapes["sweep"])[-1]
        mode = "fwd+bwd" if case.diff else "fwd"
        inputs = case.make_inputs(shape, args.device, torch.float32)
        for i in case.diff:
            inputs[i].requires_grad_()
        moved = case.bytes(shape, 4, mode)
        print(f"== {name} {'x'.join(map(str, shape))} {mode}: {moved / 1e6:.0f} MB to move", flush=True)
        for contender, (fn, _src) in runner.build_contenders(case, shape, mode, args.contenders).items():
            prof = profile_call(runner._call(fn, inputs, mode, case.diff), args.device, args.iters)
            rows = kernel_rows(prof, cuda, args.iters)
            total = sum(r[1] for r in rows)
            print(f"  {contender}: {total:.1f} us of {'kernels' if cuda else 'operators'} "
                  f"per call ({moved / total / 1e3:.0f} GB/s)")
            for key, us, count in rows[:args.top]:
                print(f"    {us:9.1f} us  x{count:g}  {key[:110]}")


if __name__ == "__main__":
    main()
