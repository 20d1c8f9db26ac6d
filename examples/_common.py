"""Shared machinery of the examples: seeding, infinite mini-batch iterators, a text progress bar,
timing, argument parsing and the result summary. Nothing here depends on the loss back-end."""
import argparse
import contextlib
import json
import os
import random
import sys
import time
from typing import Dict, Iterator, List, Optional, Sequence

import torch

# Run from a checkout (`python examples/mcd.py`): use the hal_ext next to this folder.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isdir(os.path.join(_ROOT, "hal_ext")) and _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

# Runs write to the git-ignored runs/ folder; the committed results/ change only on request (--out).
RUNS_DIR = os.path.join(_ROOT, "runs", "examples")


DTYPES = {"float32": torch.float32, "float64": torch.float64}


def base_parser(description: str, iters: int, quick_iters: int) -> argparse.ArgumentParser:
    """The options every example shares; each script adds its own hyper-parameters."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--losses", choices=("reference", "hal_ext"), default="hal_ext",
                   help="loss back-end: the pure-torch tllib-semantics reference, or hal_ext's fused API")
    p.add_argument("--iters", type=int, default=iters, help="training iterations (default: %(default)s)")
    p.add_argument("--quick", action="store_true",
                   help=f"a handful of iterations ({quick_iters}) on less data, for CI; no plot")
    p.add_argument("--seed", type=int, default=0, help="seed of data, initialisation and batches")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="float32",
                   help="dtype of the data, the model and the losses (default: %(default)s; in float64 the two "
                        "back-ends follow the same trajectory to about 1e-9 on any CPU)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)")
    p.add_argument("--out", default=RUNS_DIR, help="folder for the PNG and the JSON summary (default: runs/examples, "
                   "ignored by git; `--out examples/results` updates the committed results)")
    p.add_argument("--no-plot", action="store_true", help="do not save the PNG")
    p.add_argument("--print-freq", type=int, default=0, help="progress updates (0: automatic)")
    p.set_defaults(quick_iters=quick_iters)
    return p


def finish_args(args: argparse.Namespace) -> argparse.Namespace:
    if args.quick:
        args.iters = min(args.iters, args.quick_iters)
        args.no_plot = True
    torch.set_num_threads(max(1, args.threads))
    return args


@contextlib.contextmanager
def default_dtype(name: str):
    """Runs an example with torch's default dtype set to --dtype (data, parameters and losses follow it),
    and restores the previous default afterwards (the tests call the examples in one process)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(DTYPES[name])
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


class ForeverDataIterator:
    """Endless shuffled mini-batches (drop_last) over tensors that share their first dimension,
    like tllib's ForeverDataIterator over a DataLoader, drawn from its own generator."""

    def __init__(self, tensors: Sequence[torch.Tensor], batch_size: int, seed: int):
        self.tensors = tensors
        self.batch_size = batch_size
        self.n = tensors[0].shape[0]
        assert self.n >= batch_size, "dataset smaller than a batch"
        self.generator = torch.Generator().manual_seed(seed)
        self._new_epoch()

    def _new_epoch(self):
        self.order = torch.randperm(self.n, generator=self.generator)
        self.pos = 0

    def __iter__(self) -> Iterator:
        return self

    def __next__(self):
        if self.pos + self.batch_size > self.n:
            self._new_epoch()
        idx = self.order[self.pos:self.pos + self.batch_size]
        self.pos += self.batch_size
        return tuple(t[idx] for t in self.tensors)


class ProgressBar:
    """A plain-text progress bar: redrawn in place on a terminal, a line per update otherwise."""

    def __init__(self, total: int, prefix: str, updates: int = 0, width: int = 24):
        self.total = max(1, total)
        self.prefix = prefix
        self.width = width
        self.tty = sys.stdout.isatty()
        self.every = max(1, self.total // (updates or (50 if self.tty else 5)))
        self.start = time.perf_counter()

    def update(self, i: int, **values) -> None:
        done = i + 1
        if done % self.every and done != self.total:
            return
        filled = int(self.width * done / self.total)
        bar = "#" * filled + "." * (self.width - filled)
        elapsed = time.perf_counter() - self.start
        stats = " ".join(f"{k} {v:.4g}" for k, v in values.items())
        line = f"{self.prefix} [{bar}] {done}/{self.total} {elapsed:5.1f}s {stats}"
        if self.tty:
            sys.stdout.write("\r" + line + ("\n" if done == self.total else ""))
        else:
            sys.stdout.write(line + "\n")
        sys.stdout.flush()


class IterTimer:
    """Wall time per training iteration (the first `skip` iterations, warm-up, are not counted)."""

    def __init__(self, skip: int = 3):
        self.skip = skip
        self.count = 0
        self.total = 0.0
        self._t = None

    def __enter__(self):
        self._t = time.perf_counter()
        return self

    def __exit__(self, *exc):
        dt = time.perf_counter() - self._t
        self.count += 1
        if self.count > self.skip:
            self.total += dt

    @property
    def ms_per_iter(self) -> float:
        n = self.count - self.skip
        return 1e3 * self.total / n if n > 0 else float("nan")


def lr_decay(lr: float, gamma: float, decay: float):
    """tllib's inverse-decay schedule factor, for LambdaLR."""
    return lambda x: lr * (1. + gamma * float(x)) ** (-decay)


def finite(history: Dict[str, List[float]]) -> bool:
    return all(all(v == v and abs(v) != float("inf") for v in vals) for vals in history.values())


def save_summary(args: argparse.Namespace, name: str, summary: dict) -> Optional[str]:
    """Prints the summary and, for full runs, writes it as JSON next to the PNG."""
    print(f"== {name} ({args.losses} losses, {args.iters} iterations, seed {args.seed})")
    for k, v in summary.items():
        if not isinstance(v, (dict, list)):
            print(f"   {k}: {v:.2f}" if isinstance(v, float) else f"   {k}: {v}")
    if args.quick:
        return None
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"{name}_{args.losses}.json")
    with open(path, "w") as f:
        json.dump({"args": {k: v for k, v in vars(args).items() if k != "out"},
                   **{k: v for k, v in summary.items() if k != "history"}}, f, indent=1)
    return path


def plot_path(args: argparse.Namespace, name: str) -> str:
    os.makedirs(args.out, exist_ok=True)
    return os.path.join(args.out, f"{name}_{args.losses}.png")


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def smooth(values: List[float], k: int = 25) -> List[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= k:
            acc -= values[i - k]
        out.append(acc / min(i + 1, k))
    return out
