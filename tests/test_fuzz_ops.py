"""Every hal_ext:: operator, the internal ones too, fuzzed in a subprocess (tests/op_fuzz.py): each call
returns or raises a Python exception; no crash, no hang and, under `make test-asan`, no AddressSanitizer
or UBSan report (the subprocess inherits the preloaded sanitizer runtime and dies on the first report).

HAL_EXT_FUZZ=ci (default): seed 0, 300 calls per operator. HAL_EXT_FUZZ=long: a random seed (printed;
HAL_EXT_FUZZ_SEED fixes it) and 5,000 calls per operator. HAL_EXT_FUZZ_CALLS overrides the count."""
import json
import os
import pathlib
import random
import subprocess
import sys

import pytest

from helpers import NATIVE
from op_fuzz import is_internal, operator_names

pytestmark = pytest.mark.skipif(not NATIVE, reason="the fuzz harness drives the native operators")

PROFILE = os.environ.get("HAL_EXT_FUZZ", "ci")
if PROFILE not in ("ci", "long"):
    raise ValueError(f"HAL_EXT_FUZZ must be 'ci' or 'long', got {PROFILE!r}")
SEED = int(os.environ.get("HAL_EXT_FUZZ_SEED", 0 if PROFILE == "ci" else random.SystemRandom().randrange(2**31)))
CALLS = int(os.environ.get("HAL_EXT_FUZZ_CALLS", 300 if PROFILE == "ci" else 5000))
TIMEOUT_S = 1800 if PROFILE == "ci" else None
HARNESS = pathlib.Path(__file__).with_name("op_fuzz.py")


def run_harness():
    command = [sys.executable, str(HARNESS), "--seed", str(SEED), "--calls", str(CALLS), "--trace"]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as error:
        last = (error.stderr or b"")[-2000:]
        last = last.decode(errors="replace") if isinstance(last, bytes) else last
        pytest.fail(f"op_fuzz (seed {SEED}) hung: no answer within {TIMEOUT_S} s; last calls:\n{last}")
    if proc.returncode != 0:
        # The tail names the last call (--trace) and holds the sanitizer report or the fatal signal.
        pytest.fail(f"op_fuzz (seed {SEED}, {CALLS} calls per op) died with exit status {proc.returncode}; "
                    f"reproduce with: python {HARNESS.name} --seed {SEED} --calls {CALLS} --trace\n"
                    f"{proc.stderr[-6000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def summary():
    result = run_harness()
    print(f"op_fuzz: seed {SEED}, {result['total_calls']} calls over {len(result['ops'])} operators "
          f"in {result['seconds']} s")
    return result


def test_every_operator_is_fuzzed(summary):
    names = operator_names()
    assert len(names) >= 20, f"only {len(names)} hal_ext operators registered: {names}"
    assert sorted(summary["ops"]) == names
    for name, counts in summary["ops"].items():
        calls = sum(v for k, v in counts.items() if k.endswith(("_returned", "_raised")))
        assert calls == CALLS, f"{name}: {calls} calls, expected {CALLS}"
        assert counts.get("drawn_raised", 0) + counts.get("drawn_returned", 0) > 0, f"{name}: no drawn calls"


def test_fuzz_reaches_the_kernels(summary):
    """The mutated and saved-tensor calls are not all rejected by the argument checks: some run."""
    for name, counts in summary["ops"].items():
        assert counts.get("mutated_returned", 0) + counts.get("saved_returned", 0) > 0, (name, counts)


def test_backward_operators_get_real_saved_tensors(summary):
    """Every internal backward operator was called by autograd with its forward's real saved tensors, and
    the fuzz mutated those."""
    backward = [n for n in summary["ops"] if is_internal(n) and n.endswith("_backward")]
    assert backward, "no internal backward operator registered"
    for name in backward:
        counts = summary["ops"][name]
        assert counts["recorded_real_calls"] > 0, f"{name}: no forward recorded a call to it"
        assert counts.get("saved_raised", 0) + counts.get("saved_returned", 0) > 0, (name, counts)
