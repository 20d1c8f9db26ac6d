"""`python -m benchmarks [--quick | --full] [--ops a,b] [--device cpu|cuda] [--dtype float32] ...`

Measures every op of the registry (cases.py) with three contenders side by side (tllib-semantics eager
reference, torch.compile of it, hal_ext) plus the overhead floor, then the training steps; prints the
table and writes JSON, Markdown and a PNG chart under runs/benchmarks/<machine>/ (ignored by git), or
with --record under benchmarks/results/<machine>/ (the committed results).
"""
import argparse
import logging
import os
import sys
import time

import torch

from . import cases, machine, report, runner, timing, train_steps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")  # committed, written only with --record
RUNS = os.path.join(ROOT, "runs", "benchmarks")  # ignored by git: the default
MODES = ("fwd", "fwd+bwd")


def _csv(text):
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def _shape_list(text):
    """--shapes: comma-separated shapes, each positive integers joined by 'x' (argparse type)."""
    shapes = []
    for item in _csv(text) or []:
        dims = item.lower().split("x")
        if not all(d.isdigit() and int(d) > 0 for d in dims):
            raise argparse.ArgumentTypeError(f"{item!r} is not a shape: expected positive integers joined by 'x', "
                                             "e.g. 32x31,256x345")
        shapes.append(tuple(int(d) for d in dims))
    if not shapes:
        raise argparse.ArgumentTypeError("expected at least one shape, e.g. 32x31")
    return shapes


def _subset(choices):
    def parse(text):
        items = _csv(text) or []
        unknown = [x for x in items if x not in choices]
        if unknown or not items:
            raise argparse.ArgumentTypeError(f"{', '.join(unknown) or repr(text)}: expected a comma-separated subset of "
                                             f"{','.join(choices)}")
        return items
    return parse


def _positive_int(text):
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def _device(parser, text):
    """The --device option as a torch device string; a device this machine lacks is a usage error."""
    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(text)
    except RuntimeError:
        parser.error(f"argument --device: expected cpu, cuda, cuda:N or auto, got {text!r}")
    if device.type not in ("cpu", "cuda"):
        parser.error(f"argument --device: expected cpu, cuda, cuda:N or auto, got {text!r}")
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0:
            parser.error(f"argument --device: {text} requested, but this machine has no usable CUDA device "
                         "(torch.cuda.is_available() is False); use --device cpu")
        if device.index is not None and device.index >= count:
            parser.error(f"argument --device: {text} requested, but this machine has {count} CUDA device(s)")
    return text


def import_cpp_extension_quietly():
    """torch.utils.cpp_extension, which inductor imports, logs on a machine without a GPU "No CUDA runtime
    is found, using CUDA_HOME=<its own guess>". That is about compiling extensions, which the benchmark
    never does (and the guess is not the toolkit setup.py builds with): import it once without that line."""
    logger = logging.getLogger("torch.utils.cpp_extension")

    def drop(record):
        return "No CUDA runtime is found" not in record.getMessage()

    logger.addFilter(drop)
    try:
        import torch.utils.cpp_extension  # noqa: F401
    finally:
        logger.removeFilter(drop)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    preset = p.add_mutually_exclusive_group()
    preset.add_argument("--quick", dest="preset", action="store_const", const="quick",
                        help="one shape per op, forward+backward, short budgets (default; ~1-2 min on 2 CPU cores)")
    preset.add_argument("--full", dest="preset", action="store_const", const="full",
                        help="every shape of tllib's scripts plus a scaling sweep per op, forward and forward+backward")
    preset.add_argument("--sweep", dest="preset", action="store_const", const="sweep",
                        help="only the scaling sweep of each op (larger sizes on CUDA), forward+backward")
    p.add_argument("--ops", type=_subset([c.name for c in cases.all_cases()]),
                   help="comma-separated op names (default: all; see --list)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda when available)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64", "float16", "bfloat16"])
    p.add_argument("--amp", action="store_true",
                   help="mixed precision: every contender under torch.autocast (bfloat16 on CPU, float16 on CUDA), "
                        "inputs in that dtype; replaces --dtype; no training steps")
    p.add_argument("--machine", help="results folder name (default: cpu-<model>-<cores>c, or the GPU model)")
    p.add_argument("--out", help="output folder (default: runs/benchmarks/<machine>, ignored by git)")
    p.add_argument("--record", action="store_true",
                   help="write to benchmarks/results/<machine>, the committed results (`make bench-record`)")
    p.add_argument("--name", help="file stem of the outputs (default: the preset, plus dtype / '-partial')")
    p.add_argument("--shapes", type=_shape_list,
                   help="override the shapes, e.g. 32x31,256x345 (applies to ops of that rank)")
    p.add_argument("--modes", type=_subset(MODES), help="fwd, fwd+bwd (default: preset's)")
    p.add_argument("--contenders", type=_subset(runner.CONTENDERS), default=list(runner.CONTENDERS),
                   help="subset of eager,compile,hal_ext,floor")
    p.add_argument("--reps", type=_positive_int, help="fixed number of interleaved repetitions")
    p.add_argument("--train", default="mcd,mdd,regda", type=_subset(("mcd", "mdd", "regda", "none")),
                   help="training-step methods to run, or 'none'")
    p.add_argument("--threads", type=_positive_int, help="torch.set_num_threads for CPU runs (default: torch's default)")
    p.add_argument("--bandwidth-mib", type=_positive_int,
                   help="copy-bandwidth buffer size (default 256 MiB on CPU, 1 GiB on CUDA)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    p.add_argument("--list", action="store_true", help="list the ops and their shapes, then exit")
    args = p.parse_args(argv)
    args.preset = args.preset or "quick"
    if args.record and args.out:
        p.error("argument --record: not allowed with --out (--record writes to benchmarks/results/<machine>)")
    if "none" in args.train and len(args.train) > 1:
        p.error("argument --train: 'none' cannot be combined with methods")
    args.device = _device(p, args.device)
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    started = time.perf_counter()
    all_cases = cases.all_cases()
    if args.list:
        for c in all_cases:
            print(f"{c.name:24s} {c.api}\n{'':24s} quick {c.shapes['quick']} modes {c.modes}")
        return 0
    device = args.device
    if args.amp:
        args.dtype = "float16" if torch.device(device).type == "cuda" else "bfloat16"
    dtype = getattr(torch, args.dtype)
    if args.ops:
        all_cases = [c for c in all_cases if c.name in args.ops]
    if args.threads:
        torch.set_num_threads(args.threads)
    import_cpp_extension_quietly()
    runner.configure_dynamo()
    meta = machine.describe(device, args.machine)
    print(f"==> hal_ext benchmark, preset {args.preset}, device {device}, "
          f"dtype {'autocast ' if args.amp else ''}{args.dtype}, "
          f"machine {meta['machine']}, torch {meta['torch']}, {meta['torch_threads']} threads", flush=True)
    if not meta["hal_ext_build"]["compiled"]:
        print(f"==> WARNING: hal_ext native library not loaded ({meta['hal_ext_build'].get('reason')}): "
              "the hal_ext column measures the pure-torch fallback", flush=True)
    print("==> measuring copy bandwidth ...", flush=True)
    bandwidth = timing.copy_bandwidth(device, args.bandwidth_mib << 20 if args.bandwidth_mib else None)
    print(f"==> copy bandwidth {bandwidth['gbps']:.1f} GB/s", flush=True)
    print("==> ops (the first torch.compile of a process, or of a fresh machine, takes longer)", flush=True)
    opts = {"preset": runner.PRESETS[args.preset], "device": device, "dtype": dtype, "bandwidth_gbps": bandwidth["gbps"],
            "contenders": args.contenders, "reps": args.reps, "memory": not args.no_memory,
            "shapes": args.shapes, "modes": args.modes, "amp": dtype if args.amp else None}
    rows, skipped = runner.run_all(all_cases, opts)
    methods = [] if args.train == ["none"] or args.amp else args.train
    train = train_steps.run(methods, device, budget_s=1.0 if args.preset == "quick" else 8.0,
                            max_steps=20 if args.preset == "quick" else 40) if methods else []
    compile_s = sum(r["contenders"].get("compile", {}).get("first_call_s", 0) for r in rows)
    meta.update({"compile_warmup_s": round(compile_s, 1)})
    meta.update({"preset": args.preset, "dtype": args.dtype, "amp": args.amp, "bandwidth": bandwidth, "argv": sys.argv[1:] if argv is None else list(argv),
                 "elapsed_s": round(time.perf_counter() - started, 1)})
    result = {"meta": meta, "results": rows, "train_steps": train, "skipped": skipped}
    report.print_report(result)
    partial = any([args.ops, args.shapes, args.modes, args.contenders != list(runner.CONTENDERS)])
    suffix = f"-amp-{args.dtype}" if args.amp else ("" if args.dtype == "float32" else f"-{args.dtype}")
    stem = args.name or args.preset + suffix + ("-partial" if partial else "")
    out = args.out or os.path.join(RESULTS if args.record else RUNS, meta["machine"])
    paths = report.write_all(result, out, stem)
    print(f"==> wrote {', '.join(paths.values())}")
    print(f"==> {meta['elapsed_s']:.0f} s in all, of which {compile_s:.0f} s compiling the torch.compile contender "
          f"(first calls; inductor caches them on disk for the next run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
