"""The operator fuzz (tests/op_fuzz.py) run through the emulated CUDA kernels (tests/simt.py).

For every hal_ext operator that has a CUDA launcher (torch.ops.hal_ext_simt.<op>), op_fuzz's generator
makes CALLS argument lists: drawn from the schema alone, mutations of calls the CPU operator accepts, and
for the internal operators mutations of the real saved tensors their forward recorded. Each goes to the
CPU operator and to the emulated launcher. Both must raise the same kind of error (the exception class:
RuntimeError, ValueError, IndexError, ...), or both return, with the same shapes and dtypes, integer
outputs equal and floating outputs within twice the SPEC tolerance of each other (each is within SPEC of
the float64 truth) plus the rounding that inputs of large magnitude bring (close()). Values are not
compared where neither operator defines them (values_defined(): a backward call whose saved statistics
no longer match its inputs). Under `make test-simt-sanitize` AddressSanitizer, then ThreadSanitizer,
watch the emulated kernels, and a report ends the run.

Calls with meta tensors are not made: the emulated launchers run the CUDA launch path on CPU tensors,
and hal_ext's meta kernels are not theirs to check.

HAL_EXT_SIMT_FUZZ_CALLS: calls per operator (default 12, so the file adds seconds, not minutes, to
`make test`); HAL_EXT_SIMT_FUZZ_SEED: the seed (default 0). A failure names the call (its kind, number
and arguments) and both answers.
"""
import os
import random

import pytest
import torch

import op_fuzz
import simt
from helpers import NATIVE, tolerance

pytestmark = [
    pytest.mark.skipif(not NATIVE, reason="the emulated kernels are compared with the native CPU operators"),
    # op_fuzz's dtype mutation casts complex tensors to real on purpose
    pytest.mark.filterwarnings("ignore:Casting complex values to real:UserWarning"),
]

SEED = int(os.environ.get("HAL_EXT_SIMT_FUZZ_SEED", "0"))
CALLS = int(os.environ.get("HAL_EXT_SIMT_FUZZ_CALLS", "12"))
NAMES = op_fuzz.operator_names() if NATIVE else []

@pytest.fixture(scope="module")
def ops():
    return simt.load()


@pytest.fixture(scope="module")
def bases():
    """Per operator, the argument lists its mutated calls start from: calls the CPU operator accepts
    and, for the internal operators, the real arguments autograd gave them (op_fuzz)."""
    rng = random.Random(SEED)
    accepted = {name: op_fuzz.find_accepted_calls(rng, name) for name in NAMES}
    # the recorded backward calls' incoming gradients come from torch's global generator: seeded here, so
    # that the calls do not depend on which tests ran before, and restored after
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        recorded = op_fuzz.record_internal_calls(accepted)
    result = {}
    for name in NAMES:
        types = op_fuzz.arg_types(name)
        # detached: the calls compare values, and the emulated launchers have no autograd kernel
        saved = ([[a.detach() if isinstance(a, torch.Tensor) else a for a in c] for c in recorded.get(name, [])
                  if len(c) == len(types)] if op_fuzz.is_internal(name) else [])
        result[name] = ("saved", saved) if saved else ("mutated", accepted[name])
    return result


def has_meta(args):
    return any(isinstance(a, torch.Tensor) and a.device.type == "meta" for a in args)


def outcome(op, args):
    try:
        out = op(*args)
    except Exception as error:  # every Python exception is an answer; the comparison judges it
        return None, error
    return (list(out) if isinstance(out, (tuple, list)) else [out]), None


def _answer(error):
    return "returned" if error is None else f"raised {type(error).__name__}: {(str(error) or ' ').splitlines()[0]}"


def input_scale(args):
    """The largest finite magnitude among the floating-point inputs, at least 1."""
    scale = 1.0
    for a in args:
        if isinstance(a, torch.Tensor) and a.is_floating_point() and a.numel():
            finite = a[torch.isfinite(a)]
            if finite.numel():
                scale = max(scale, float(finite.abs().max()))
    return scale


def close(cpu, emulated, scale):
    """Where the two floating outputs agree: each is within SPEC's tolerance of the float64 truth, so
    they are within twice it of each other; plus rounding at the inputs' magnitude. With inputs of
    magnitude M, the intermediate values (a log-softmax's z - max, a difference of large terms) carry
    an absolute error of a few eps * M in either kernel, whatever its order of operations (65504 in
    float32: both miss a 1e-7 KL value by 4e-3, differently); 16 eps * M covers it."""
    rtol, atol = tolerance(cpu.dtype)
    slack = 16 * torch.finfo(cpu.dtype).eps * scale
    return torch.isclose(emulated.double(), cpu.double(), rtol=2 * rtol, atol=2 * atol + slack, equal_nan=True)


def compare(cpu, emulated, scale, compare_values=True):
    """None when the two outcomes agree, else what differs."""
    (cpu_out, cpu_error), (sim_out, sim_error) = cpu, emulated
    if cpu_error is not None or sim_error is not None:
        if cpu_error is None or sim_error is None or type(cpu_error) is not type(sim_error):
            return f"CPU {_answer(cpu_error)}; emulated CUDA {_answer(sim_error)}"
        return None
    if len(cpu_out) != len(sim_out):
        return f"CPU returned {len(cpu_out)} values, emulated CUDA {len(sim_out)}"
    for i, (c, s) in enumerate(zip(cpu_out, sim_out)):
        if not isinstance(c, torch.Tensor):
            if c != s:
                return f"output {i}: CPU {c!r}, emulated CUDA {s!r}"
            continue
        if c.shape != s.shape or c.dtype != s.dtype:
            return f"output {i}: CPU {tuple(c.shape)} {c.dtype}, emulated CUDA {tuple(s.shape)} {s.dtype}"
        if not compare_values:
            continue
        bad = ~close(c, s, scale) if c.dtype.is_floating_point else c != s
        if bad.any():
            idx = tuple(bad.nonzero()[0].tolist())
            return (f"output {i} ({c.dtype}): {int(bad.sum())}/{bad.numel()} elements differ; first {idx}: "
                    f"CPU {c[idx].item()!r}, emulated CUDA {s[idx].item()!r}")
    return None


def values_defined(name, args, base):
    """Whether the call's output values are defined. A backward operator's saved statistics describe
    the inputs its forward saw: once an input or a statistic is changed (floating-point tensors past the
    incoming gradient, args[0]), the values are garbage in, garbage out, and only returning or raising
    is specified (the CPU kernel may give NaN where the CUDA kernel gives Inf). Changed integer tensors
    (argmax, peaks) are indices the kernels must check or follow, so those calls are compared."""
    if base is None or not name.endswith("_backward"):
        return True
    return all(a is b for a, b in zip(args[1:], base[1:]) if isinstance(b, torch.Tensor) and b.is_floating_point())


@pytest.mark.parametrize("name", NAMES)
def test_fuzz_through_emulated_kernels(ops, bases, name):
    if not hasattr(ops, name):
        pytest.skip(f"{name} has no CUDA launcher (CPU-only operator)")
    cpu_op, sim_op = op_fuzz.overload(name), getattr(ops, name).default
    types = op_fuzz.arg_types(name)
    kind_of_base, base_calls = bases[name]
    rng = random.Random(f"{SEED}:{name}")
    failures, made, tries = [], 0, 0
    while made < CALLS:
        tries += 1
        assert tries <= 20 * CALLS, f"{name}: fewer than {CALLS} calls without meta tensors in {tries} draws"
        kind = "drawn" if not base_calls or made % 4 == 0 else kind_of_base
        base = None if kind == "drawn" else rng.choice(base_calls)
        args = [op_fuzz.draw_value(rng, t) for t in types] if base is None else op_fuzz.mutate_call(rng, base, types)
        if has_meta(args):
            continue
        difference = compare(outcome(cpu_op, args), outcome(sim_op, args), input_scale(args),
                             compare_values=values_defined(name, args, base if kind == "saved" else None))
        if difference:
            failures.append(f"{kind} call #{made} {op_fuzz.describe(args)}: {difference}")
        made += 1
    assert not failures, (f"{name} (seed {SEED}): {len(failures)} of {CALLS} fuzzed calls differ between the CPU "
                          f"operator and the emulated CUDA kernels:\n" + "\n".join(failures))
