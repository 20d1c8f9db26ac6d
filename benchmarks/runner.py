"""Runs the registry: for each case, shape and mode, the contenders side by side in this process.

Contenders: `eager` (the tllib-semantics reference), `compile` (`torch.compile(dynamic=False)` of the
reference, or of the case's `compile_target`), `hal_ext` (the public API), and `floor` (the do-nothing
custom op with the same tensors in and out; see floor.py). Mode `fwd` calls the op on inputs that do
not require grad; `fwd+bwd` calls it on inputs that do and then `torch.autograd.grad` of its output
(a ones gradient for non-scalar outputs) with respect to the differentiable inputs. With `amp`
(`--amp`), every contender's forward runs under `torch.autocast` (the inputs are in its dtype, as a
layer's outputs under autocast are): the eager and compile contenders run tllib's code under autocast.
"""
import sys
import time

import torch

from . import memory, timing
from .cases import Unavailable
from .floor import floor_op

CONTENDERS = ("eager", "compile", "hal_ext", "floor")

PRESETS = {
    # quick: the first shape set, forward+backward only (forward for ops without backward), short budgets
    "quick": {"shape_sets": ("quick",), "modes": "main", "budget_s": 0.25, "min_reps": 5, "max_reps": 25,
              "sample_s": 0.004, "warmup": 3},
    # sweep: only the scaling sweeps (on CUDA up to ~1 GiB per tensor), forward+backward
    "sweep": {"shape_sets": ("sweep",), "modes": "main", "budget_s": 1.0, "min_reps": 5, "max_reps": 40,
              "sample_s": 0.01, "warmup": 3},
    "full": {"shape_sets": ("full", "sweep"), "modes": "all", "budget_s": 1.5, "min_reps": 7, "max_reps": 60,
             "sample_s": 0.01, "warmup": 5},
}


def configure_dynamo():
    import torch._dynamo.config as config

    for key in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(config, key):
            setattr(config, key, 4096)


def _under_autocast(fn, device, dtype):
    device_type = torch.device(device).type

    def run(*inputs):
        with torch.autocast(device_type, dtype=dtype):
            return fn(*inputs)
    return run


def _call(fn, inputs, mode, diff):
    if mode == "fwd":
        return lambda: fn(*inputs)
    wrt = [inputs[i] for i in diff]
    grads = []  # incoming gradients (ones) for non-scalar outputs, made once, outside the timed calls

    def run():
        out = fn(*inputs)
        outs = out if isinstance(out, tuple) else (out,)
        if not grads:
            grads.extend(torch.ones_like(o) if o.dim() else None for o in outs)
        return torch.autograd.grad(outs, wrt, grads)
    return run


def build_contenders(case, shape, mode, want):
    """{name: (fn, source)} for the contenders in `want`; hal_ext missing -> Unavailable."""
    hal = case.hal(shape)  # raises Unavailable first, so nothing is compiled for a missing op
    out = {}
    ref_fn, ref_src = case.reference(shape)
    if "eager" in want:
        out["eager"] = (ref_fn, ref_src)
    if "compile" in want:
        target, src = case.compile_target(shape) if case.compile_target else (ref_fn, f"torch.compile({ref_src})")
        out["compile"] = (torch.compile(target, dynamic=False), src)
    if "hal_ext" in want:
        out["hal_ext"] = (hal, case.api)
    if "floor" in want:
        n_inputs = len(case.make_inputs(_tiny(shape), "cpu", torch.float32))
        out["floor"] = (floor_op(n_inputs, case.outputs, bool(case.diff)), f"do-nothing custom_op ({n_inputs} tensors -> {case.outputs})")
    return out


def _tiny(shape):
    return tuple(min(s, 2) for s in shape)


def run_one(case, shape, mode, device, dtype, opts, log=print):
    """Measures one (case, shape, mode); returns a result row (see report.py for the fields)."""
    torch.manual_seed(0)
    amp = opts.get("amp")
    dtype_label = str(dtype).replace("torch.", "")
    row = {"op": case.name, "api": case.api, "kind": case.kind, "shape": list(shape), "mode": mode,
           "dtype": f"autocast-{dtype_label}" if amp else dtype_label, "device": str(device), "notes": case.notes}
    inputs = case.make_inputs(shape, device, dtype)
    if mode == "fwd+bwd":
        for i in case.diff:
            inputs[i].requires_grad_(True)
    torch._dynamo.reset()
    contenders = build_contenders(case, shape, mode, opts["contenders"])
    itemsize = inputs[0].element_size()
    row["bytes"] = int(case.bytes(shape, itemsize, mode))
    fns, errors, first_call = {}, {}, {}
    for name, (fn, src) in contenders.items():
        call = _call(_under_autocast(fn, device, amp) if amp else fn, inputs, mode, case.diff)
        start = time.perf_counter()
        try:
            call()
            timing.sync(device)
        except Exception as error:  # a contender that fails is reported, the others still run
            errors[name] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:300]
            continue
        first_call[name] = time.perf_counter() - start
        fns[name] = call
    p = opts["preset"]
    stats = timing.measure(fns, device, warmup=p["warmup"], min_reps=opts.get("reps") or p["min_reps"],
                           max_reps=opts.get("reps") or p["max_reps"], sample_s=p["sample_s"],
                           budget_s=p["budget_s"]) if fns else {}
    hal_median = stats.get("hal_ext", {}).get("median_s")
    row["contenders"] = {}
    for name, (fn, src) in contenders.items():
        entry = {"source": src}
        if name in errors:
            entry["error"] = errors[name]
        else:
            entry.update(stats[name])
            entry["first_call_s"] = first_call[name]
            if hal_median and name != "floor":  # the floor is reported the other way up: row["hal_ext_over_floor"]
                entry["ratio_to_hal_ext"] = stats[name]["median_s"] / hal_median
            if opts.get("memory", True):
                entry["memory"] = memory.peak_extra(fns[name], device)
        row["contenders"][name] = entry
    if hal_median:
        gbps = row["bytes"] / hal_median / 1e9
        row["hal_ext_gbps"] = gbps
        if opts.get("bandwidth_gbps"):
            row["hal_ext_bandwidth_fraction"] = gbps / opts["bandwidth_gbps"]
        floor = stats.get("floor", {}).get("median_s")
        if floor:
            row["hal_ext_over_floor"] = hal_median / floor
    return row


def shapes_for(case, opts):
    if opts.get("shapes"):
        return [s for s in opts["shapes"] if len(s) == len(case.shapes["quick"][0])]
    keys = list(opts["preset"]["shape_sets"])
    if "sweep" in keys and torch.device(opts["device"]).type == "cuda":
        keys.append("sweep_cuda")
    out = []
    for key in keys:
        for s in case.shapes.get(key, []):
            if s not in out:
                out.append(s)
    return out


def modes_for(case, opts):
    if opts.get("modes"):
        return [m for m in opts["modes"] if m in case.modes]
    return list(case.modes) if opts["preset"]["modes"] == "all" else [case.modes[-1]]


def run_all(cases, opts, log=print):
    """Measures every (case, shape, mode); a case whose hal_ext API is missing is skipped with a note."""
    rows, skipped, plan = [], [], []
    for case in cases:
        try:
            case.hal(case.shapes["quick"][0])
        except Unavailable as error:
            skipped.append({"op": case.name, "reason": str(error)})
            log(f"skip {case.name}: {error}", flush=True)
            continue
        plan += [(case, shape, mode) for shape in shapes_for(case, opts) for mode in modes_for(case, opts)]
    for k, (case, shape, mode) in enumerate(plan, 1):
        tag = f"[{k}/{len(plan)}] {case.name} {'x'.join(map(str, shape))} {mode}"
        log(f"{tag}: measuring ...", flush=True)
        row = run_one(case, shape, mode, opts["device"], opts["dtype"], opts, log)
        rows.append(row)
        log(f"{tag}: {format_row_brief(row)}", flush=True)
    return rows, skipped


def format_time(s):
    if s is None:
        return "-"
    if s >= 1:
        return f"{s:.2f}s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f}ms"
    return f"{s * 1e6:.1f}us"


def format_row_brief(row):
    parts = []
    for name in CONTENDERS:
        c = row["contenders"].get(name)
        if c is None:
            continue
        if "error" in c:
            parts.append(f"{name} ERROR")
            continue
        ratio = c.get("ratio_to_hal_ext")
        parts.append(f"{name} {format_time(c['median_s'])}" + (f" ({name}/hal {ratio:.2f}x)" if ratio and name != "hal_ext" else ""))
    if "hal_ext_over_floor" in row:
        parts.append(f"hal/floor {row['hal_ext_over_floor']:.2f}")
    return ", ".join(parts)


if __name__ == "__main__":
    sys.exit("run `python -m benchmarks`")
