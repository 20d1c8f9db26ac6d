"""Soak test (not a CI test): every hal_ext op forward + backward N times, reporting resident memory
(RSS) and allocator memory (glibc malloc in-use bytes on CPU, the CUDA caching allocator on GPU) after
warm-up and at the end. Exits 1 if memory grew by more than --tolerance-mib.

    python scripts/soak.py                     # 10,000 iterations per op on the CPU
    python scripts/soak.py --iters 200 --device cuda
    python scripts/soak.py --iters 2 --device cuda --small   # the compute-sanitizer drive in gpu_check.sh
"""
import argparse
import ctypes
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import torch  # noqa: E402

import hal_ext  # noqa: E402
import op_catalog as cat  # noqa: E402

MIB = 1 << 20


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _malloc_in_use():
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
    except (OSError, AttributeError):
        return None
    return lambda: (lambda m: m.uordblks + m.hblkhd)(libc.mallinfo2())


MALLOC_IN_USE = _malloc_in_use()


def allocator_bytes(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return torch.cuda.memory_allocated()
    return MALLOC_IN_USE() if MALLOC_IN_USE else float("nan")


def step(fn, inputs, differentiable):
    leaves = [t.detach().requires_grad_(i in differentiable) for i, t in enumerate(inputs)]
    out = fn(*leaves)
    if differentiable:
        out.sum().backward() if out.dim() else out.backward()
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=10_000, help="forward+backward iterations per op")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--ops", default=None, help="comma-separated public names (default: every available op)")
    parser.add_argument("--small", action="store_true", help="the smallest example shapes (sanitizer drive); default: 4x the batch")
    parser.add_argument("--tolerance-mib", type=float, default=8.0, help="allowed growth per op after warm-up")
    args = parser.parse_args()

    names = args.ops.split(",") if args.ops else cat.available()
    missing = [n for n in names if cat.load(n) is None]
    if missing:
        sys.exit(f"ops not available on this tree: {missing}")
    warmup = min(max(args.iters // 100, 1), 50)
    print(f"hal_ext soak: {args.iters} forward+backward iterations per op on {args.device} "
          f"(warm-up {warmup}); torch {torch.__version__}; native={hal_ext.native_available()}; "
          f"absent ops: {cat.absent() or 'none'}", flush=True)
    header = f"{'op':42} {'s':>7} {'RSS start MiB':>14} {'RSS end MiB':>12} {'alloc start MiB':>16} {'alloc end MiB':>14} {'growth MiB':>11}"
    print(header)
    failed = []
    scale = 1 if args.small else 4
    for name in names:
        fn, inputs, differentiable, _ = cat.example(name, device=args.device, scale=scale)
        for _ in range(warmup):
            step(fn, inputs, differentiable)
        rss0, alloc0 = rss_bytes(), allocator_bytes(args.device)
        t0 = time.perf_counter()
        for _ in range(args.iters):
            step(fn, inputs, differentiable)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        rss1, alloc1 = rss_bytes(), allocator_bytes(args.device)
        growth = max(rss1 - rss0, alloc1 - alloc0) / MIB
        flag = ""
        if growth > args.tolerance_mib:
            failed.append(name)
            flag = "  GROWTH"
        print(f"{name:42} {dt:7.1f} {rss0 / MIB:14.1f} {rss1 / MIB:12.1f} {alloc0 / MIB:16.2f} {alloc1 / MIB:14.2f} "
              f"{growth:11.2f}{flag}", flush=True)
    if failed:
        print(f"memory grew by more than {args.tolerance_mib} MiB for: {failed}")
        sys.exit(1)
    print("no growth beyond tolerance")


if __name__ == "__main__":
    main()
