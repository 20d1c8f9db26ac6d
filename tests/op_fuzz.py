"""Fuzz harness over every ``hal_ext::`` operator the dispatcher knows, the ``_``-prefixed internal ones too.

The operators are enumerated at run time (``torch._C._dispatch_get_all_op_names()``), and their arguments
are drawn from their schemas, so a new operator is fuzzed without anyone adding it here. Three kinds of call:

- *drawn*: every argument drawn from its type alone: tensors of rank 0-5, every dtype (float, integer,
  bool, complex), contiguous, transposed, expanded (stride 0), sliced or offset views, empty and
  one-element shapes, NaN/Inf/huge values, some on the meta device; integers and floats at their edges.
- *mutated*: a call the operator accepts (found by drawing shared shapes), with one or two arguments
  then replaced: other content (NaN, Inf, indices past the end, negative), shape, dtype, layout, device,
  None for a tensor, an edge scalar.
- *saved*: the internal operators' real arguments, recorded (a dispatch mode) while the public operators
  run forward and backward in every dtype and rank, so a backward op sees the very statistics and
  index tensors its forward saved, then mutated as above: indices past the end, negative, NaN
  statistics, wrong shape and dtype.

Every call must return or raise a Python exception. A crash, a hang or (in the sanitizer build, `make
test-asan`) an AddressSanitizer/UBSan report ends the process: run the harness in a subprocess
(``tests/test_fuzz_ops.py`` does). Before each call it writes a line naming the operator and the call
number to stderr when ``--trace`` is given, so the last line before a crash names the culprit.

    python tests/op_fuzz.py --seed 0 --calls 300      # 300 calls per operator, deterministic
"""
import argparse
import collections
import json
import math
import os
import random
import sys
import time

if __name__ == "__main__":  # run as a script: the hal_ext of this checkout
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

import hal_ext  # noqa: E402  (loads the native library and its fake kernels)

MAX_ELEMENTS = 4096
FLOAT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
OTHER_DTYPES = [torch.int64, torch.int32, torch.int8, torch.uint8, torch.bool, torch.complex64]
EDGE_INTS = [0, 1, 2, 3, -1, -2, 4, 7, 255, 2**31 - 1, 2**31, -(2**31), 2**62, -(2**62), 2**63 - 1, -(2**63)]
EDGE_FLOATS = [0.0, -0.0, 1.0, 0.5, 2.0, -1.0, 1e-7, 1e-300, 5e-324, 1e300, 1e308, -1e308,
               math.inf, -math.inf, math.nan]
TRACE = False  # print each call to stderr before making it (run(trace=True))
EDGE_VALUES = [math.nan, math.inf, -math.inf, 0.0, -0.0, 1e38, -1e38, 1e-45, 65504.0, -65504.0]


def operator_names():
    """Every operator registered in the hal_ext namespace (public and internal), sorted."""
    return sorted(n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("hal_ext::"))


def overload(name):
    return getattr(torch.ops.hal_ext, name).default


def is_internal(name):
    return name.startswith("_")


# ---- drawing ----

def draw_shape(rng, rank=None):
    rank = rng.choice([0, 1, 2, 2, 3, 4, 4, 5]) if rank is None else rank
    while True:
        shape = [rng.choice([0, 1, 1, 2, 3, 4, 5, 7, 8, 16]) for _ in range(rank)]
        if math.prod(shape) <= MAX_ELEMENTS:
            return shape


def fill(rng, shape, dtype):
    gen = torch.Generator().manual_seed(rng.getrandbits(31))
    if dtype.is_floating_point or dtype.is_complex:
        t = torch.randn(shape, generator=gen, dtype=torch.float64) * rng.choice([1.0, 1.0, 10.0, 1e-3])
        if t.numel() and rng.random() < 0.3:
            flat = t.view(-1)
            for _ in range(rng.randint(1, 3)):
                flat[rng.randrange(flat.numel())] = rng.choice(EDGE_VALUES)
        return t.to(dtype)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=gen).bool()
    low, high = (0, 20) if dtype == torch.uint8 else (-3, 20)
    return torch.randint(low, high, shape, generator=gen).to(dtype)


def with_layout(rng, t, layout=None):
    """`t`'s values in another memory layout: transposed, expanded, sliced or at a storage offset."""
    layout = layout or rng.choice(["contiguous", "transposed", "expanded", "sliced", "offset"])
    if layout == "transposed" and t.dim() >= 2:
        return t.transpose(0, -1).contiguous().transpose(0, -1)
    if layout == "expanded" and t.dim() >= 1 and t.numel():
        return t.narrow(0, 0, 1).expand(t.shape)  # stride 0 along dim 0 (values of the first row)
    if layout == "sliced" and t.dim() >= 1:
        big = torch.repeat_interleave(t, 2, dim=-1) if t.numel() else torch.empty(*t.shape[:-1], 2 * t.shape[-1],
                                                                                     dtype=t.dtype)
        return big[..., ::2]
    if layout == "offset":
        flat = torch.cat([t.reshape(-1)[:1].clone(), t.reshape(-1)]) if t.numel() else t.reshape(-1)
        return flat[1:].view(t.shape) if t.numel() else t
    return t


def draw_tensor(rng, shape=None, dtype=None):
    shape = draw_shape(rng) if shape is None else shape
    if dtype is None:
        dtype = rng.choice(FLOAT_DTYPES + FLOAT_DTYPES + OTHER_DTYPES)
    t = with_layout(rng, fill(rng, shape, dtype))
    return t.to("meta") if rng.random() < 0.05 else t


def draw_value(rng, type_name):
    if type_name == "Tensor":
        return draw_tensor(rng)
    if type_name == "Optional[Tensor]":
        return None if rng.random() < 0.4 else draw_tensor(rng)
    if type_name in ("int", "SymInt"):
        return rng.choice(EDGE_INTS)
    if type_name == "float":
        return rng.choice(EDGE_FLOATS)
    if type_name == "bool":
        return rng.random() < 0.5
    if type_name == "Optional[int]":  # `ScalarType? out_dtype`: the schema prints a ScalarType as int
        return None if rng.random() < 0.5 else rng.choice(FLOAT_DTYPES + OTHER_DTYPES)
    raise NotImplementedError(f"op_fuzz cannot draw a {type_name}: teach draw_value about it")


def arg_types(name):
    return [str(a.type) for a in overload(name)._schema.arguments]


# ---- calls the operators accept ----

def plausible_args(rng, types, dtype, rank):
    """Tensors of one shared shape and dtype, no optional tensors, small ints and positive floats."""
    shape = draw_shape(rng, rank)
    args = []
    for t in types:
        if t == "Tensor":
            args.append(fill(rng, shape, dtype).clamp_(-5, 5))
        elif t in ("Optional[Tensor]", "Optional[int]"):
            args.append(None)
        elif t in ("int", "SymInt"):
            args.append(rng.choice([0, 1, 2]))
        elif t == "float":
            args.append(rng.choice([0.5, 1.0, 2.0, 4.0]))
        elif t == "bool":
            args.append(rng.random() < 0.5)
        else:
            raise NotImplementedError(f"op_fuzz cannot draw a {t}")
    return args


def find_accepted_calls(rng, name, tries=200, wanted=6):
    """Up to `wanted` argument lists (different dtypes and ranks) the operator returns for."""
    types = arg_types(name)
    found, seen = [], set()
    op = overload(name)
    for i in range(tries):
        dtype = FLOAT_DTYPES[i % len(FLOAT_DTYPES)]
        rank = rng.choice([1, 2, 2, 3, 4, 4])
        args = plausible_args(rng, types, dtype, rank)
        trace(name, "search", i, args)
        try:
            op(*args)
        except Exception:
            continue
        key = (dtype, rank)
        if key not in seen:
            seen.add(key)
            found.append(args)
            if len(found) >= wanted:
                break
    return found


class _Recorder(TorchDispatchMode):
    """Records every hal_ext operator call (its real arguments) made below autograd."""

    def __init__(self):
        super().__init__()
        self.calls = collections.defaultdict(list)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "hal_ext" and not kwargs:
            self.calls[func._opname].append(list(args))
        return func(*args, **kwargs)


def record_internal_calls(accepted):
    """Runs each public operator's accepted calls forward and backward (random incoming gradients, and
    ones) with gradients required, and returns the recorded arguments of every hal_ext call below
    autograd, by operator name: the internal operators' real saved tensors."""
    recorder = _Recorder()
    for name, calls in accepted.items():
        if is_internal(name):
            continue
        op = overload(name)
        for args in calls:
            floats = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.is_floating_point()]
            for unit, grad_of in [(False, floats), (True, floats)] + [(False, [i]) for i in floats]:
                leaves = [a.detach().clone().requires_grad_(i in grad_of) if isinstance(a, torch.Tensor) else a
                          for i, a in enumerate(args)]
                trace(name, "record", unit, leaves)
                with recorder:
                    try:
                        outs = op(*leaves)
                        outs = outs if isinstance(outs, (tuple, list)) else (outs,)
                        outs = [o for o in outs if isinstance(o, torch.Tensor) and o.requires_grad]
                        if not outs:
                            continue
                        grads = [torch.ones_like(o) if unit else torch.randn_like(o) for o in outs]
                        torch.autograd.backward(outs, grads)
                    except Exception:
                        pass
    return recorder.calls


# ---- mutations ----

def mutate_content(rng, t):
    if t.numel() == 0 or t.device.type == "meta":
        return t
    out = t.detach().clone().contiguous()
    flat = out.view(-1)
    if t.dtype.is_floating_point:  # edited in float64, then rounded (out-of-range values become Inf)
        wide = out.double()
        if rng.random() < 0.3:
            wide.fill_(rng.choice(EDGE_VALUES))
        else:
            for _ in range(rng.randint(1, 3)):
                wide.view(-1)[rng.randrange(flat.numel())] = rng.choice(EDGE_VALUES)
        return wide.to(t.dtype)
    if t.dtype in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        info = torch.iinfo(t.dtype)
        biggest = max(2, int(t.abs().max()) if t.dtype != torch.uint8 else int(t.max()))
        candidates = [-1, -2, biggest, biggest + 1, 2 * biggest, 2**16, 2**31 - 1, 2**31, 2**32, info.max, info.min]
        for _ in range(rng.randint(1, 3)):
            v = rng.choice(candidates)
            flat[rng.randrange(flat.numel())] = max(info.min, min(info.max, v))
        return out
    if t.dtype == torch.bool:
        return ~out
    return out


def mutate_shape(rng, t):
    kind = rng.choice(["flatten", "unsqueeze", "squeeze", "grow", "shrink", "empty", "one", "transpose"])
    if kind == "flatten":
        return t.reshape(-1)
    if kind == "unsqueeze":
        return t.unsqueeze(rng.randint(0, t.dim()))
    if kind == "squeeze" and t.dim():
        return t.reshape(t.shape[1:]) if t.shape[0] == 1 else t.narrow(0, 0, 1).reshape(t.shape[1:])
    if kind in ("grow", "shrink") and t.dim():
        d = rng.randrange(t.dim())
        if kind == "shrink" and t.shape[d] > 0:
            return t.narrow(d, 0, t.shape[d] - 1)
        return torch.cat([t, t.narrow(d, 0, min(1, t.shape[d]))], dim=d) if t.shape[d] else t
    if kind == "empty" and t.dim():
        return t.narrow(0, 0, 0)
    if kind == "one":
        return t.reshape(-1)[:1].reshape([1] * max(t.dim(), 1)) if t.numel() else t.new_zeros([1] * max(t.dim(), 1))
    if kind == "transpose" and t.dim() >= 2:
        return t.transpose(0, 1)
    return t.reshape(-1)


def mutate_tensor(rng, t):
    kind = rng.choice(["content", "content", "content", "shape", "shape", "dtype", "layout", "meta", "fresh"])
    try:
        return _mutate_tensor(rng, t, kind)
    except RuntimeError:  # a mutation that does not apply to this tensor (e.g. narrowing an empty dim)
        return draw_tensor(rng)


def _mutate_tensor(rng, t, kind):
    if kind == "content":
        return mutate_content(rng, t)
    if kind == "shape":
        return mutate_shape(rng, t)
    if kind == "dtype":
        return t.to(rng.choice([d for d in FLOAT_DTYPES + OTHER_DTYPES if d != t.dtype]))
    if kind == "layout":
        return with_layout(rng, t)
    if kind == "meta":
        return t.to("meta")
    return draw_tensor(rng)


def mutate_call(rng, args, types):
    """A copy of `args` with one or two arguments replaced. Half the time one of them is an integer tensor
    (a saved index such as an argmax or peaks) with changed content."""
    args = list(args)
    indices = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and not a.is_floating_point()
               and a.device.type != "meta"]
    if indices and rng.random() < 0.5:
        i = rng.choice(indices)
        args[i] = mutate_content(rng, args[i])
        if rng.random() < 0.7:
            return args
    for _ in range(rng.choice([1, 1, 1, 2])):
        i = rng.randrange(len(args))
        a = args[i]
        if isinstance(a, torch.Tensor):
            args[i] = None if types[i] == "Optional[Tensor]" and rng.random() < 0.15 else mutate_tensor(rng, a)
        elif a is None:
            args[i] = draw_tensor(rng)
        else:
            args[i] = draw_value(rng, types[i])
    return args


# ---- running ----

def describe(args):
    parts = []
    for a in args:
        if isinstance(a, torch.Tensor):
            parts.append(f"T{tuple(a.shape)}:{str(a.dtype).replace('torch.', '')}:{a.device.type}"
                         f"{'' if a.is_contiguous() else ':strided'}")
        else:
            parts.append(repr(a))
    return "(" + ", ".join(parts) + ")"


def trace(name, kind, i, args):
    if TRACE:
        print(f"op_fuzz: {name} {kind} #{i} {describe(args)}", file=sys.stderr, flush=True)


def run(seed, calls_per_op, trace_calls=False, ops=None):
    """Fuzzes every operator (or those named in `ops`); returns a summary dict."""
    global TRACE
    TRACE = trace_calls
    rng = random.Random(seed)
    names = ops or operator_names()
    torch.manual_seed(seed)
    accepted = {name: find_accepted_calls(rng, name) for name in names}
    recorded = record_internal_calls(accepted)
    summary = {"seed": seed, "calls_per_op": calls_per_op, "ops": {}}
    start = time.time()
    for name in names:
        op = overload(name)
        types = arg_types(name)
        bases = [c for c in recorded.get(name, []) if len(c) == len(types)] if is_internal(name) else []
        bases = bases or accepted[name]
        counts = collections.Counter()
        for i in range(calls_per_op):
            kind = "drawn" if not bases or i % 4 == 0 else ("saved" if is_internal(name) and recorded.get(name)
                                                             else "mutated")
            args = ([draw_value(rng, t) for t in types] if kind == "drawn"
                    else mutate_call(rng, rng.choice(bases), types))
            trace(name, kind, i, args)
            try:
                op(*args)
                counts[f"{kind}_returned"] += 1
            except Exception as error:  # every Python exception is an acceptable answer
                counts[f"{kind}_raised"] += 1
                counts[f"raised_{type(error).__name__}"] += 1
        counts["accepted_calls_found"] = len(accepted[name])
        counts["recorded_real_calls"] = len(recorded.get(name, []))
        summary["ops"][name] = dict(sorted(counts.items()))
    summary["seconds"] = round(time.time() - start, 1)
    summary["total_calls"] = calls_per_op * len(names)
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calls", type=int, default=300, help="calls per operator")
    parser.add_argument("--ops", default="", help="comma-separated operator names (default: all)")
    parser.add_argument("--trace", action="store_true", help="print each call to stderr before making it")
    args = parser.parse_args(argv)
    if not hal_ext.native_available():
        sys.exit("op_fuzz: the native library is not loaded: " + str(hal_ext.build_info().get("reason")))
    summary = run(args.seed, args.calls, args.trace, [o for o in args.ops.split(",") if o] or None)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
