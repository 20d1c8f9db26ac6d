"""The examples (examples/mcd.py, mdd.py, regda.py) run a handful of iterations with both loss
back-ends: every loss is finite, and with the same seed the hal_ext run follows the reference run's
loss trajectory to float tolerance (the drop-in claim, end to end through a training loop)."""
import importlib.util
import math
import os
import sys

import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
METHODS = ["mcd", "mdd", "regda"]


def load_example(method):
    if EXAMPLES not in sys.path:
        sys.path.insert(0, EXAMPLES)
    spec = importlib.util.spec_from_file_location(f"example_{method}", os.path.join(EXAMPLES, f"{method}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(method, backend, tmp_path):
    return load_example(method).main(["--quick", "--losses", backend, "--out", str(tmp_path)])


@pytest.mark.parametrize("method", METHODS)
def test_backends_follow_the_same_trajectory(method, tmp_path):
    ref = run(method, "reference", tmp_path)
    fused = run(method, "hal_ext", tmp_path)
    assert ref["history"].keys() == fused["history"].keys()
    for key, expected in ref["history"].items():
        actual = fused["history"][key]
        assert len(actual) == len(expected) > 0, key
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert math.isfinite(a) and math.isfinite(e), f"{method} {key}[{i}]: {a} vs {e}"
            assert math.isclose(a, e, rel_tol=1e-4, abs_tol=1e-5), \
                f"{method} {key}[{i}]: hal_ext {a!r} vs reference {e!r}"
    for summary in (ref, fused):
        assert summary["finite"]
        assert math.isfinite(summary["ms_per_iter"])
    assert not os.listdir(tmp_path), "--quick must not write results"


@pytest.mark.parametrize("method", METHODS)
def test_backend_switch_selects_the_right_implementation(method):
    load_example(method)  # puts examples/ on sys.path
    import _losses
    fused = _losses.load(method, "hal_ext")
    for name, obj in vars(fused).items():
        assert obj.__module__.startswith("hal_ext.") and not obj.__module__.startswith("hal_ext.reference"), \
            f"{method}/hal_ext: {name} comes from {obj.__module__}"
    reference = _losses.load(method, "reference")
    assert vars(reference).keys() == vars(fused).keys()
    for name, obj in vars(reference).items():
        # the reference functions themselves, or _losses' tllib-shaped modules around them
        assert obj.__module__.startswith("hal_ext.reference.") or obj.__module__ == "_losses", \
            f"{method}/reference: {name} comes from {obj.__module__}"


def test_unknown_backend_is_an_error():
    load_example("mcd")
    import _losses
    with pytest.raises(ValueError, match="backend"):
        _losses.load("mcd", "tllib")
