"""The C++ operators check their inputs again (issue 6): every torch.ops.hal_ext operator, forward and
backward, called directly with inconsistent tensors (mismatched shapes and ranks, empty auxiliary
tensors, integer dtypes, another device) raises a Python exception instead of reading out of bounds.
The operators and their schemas are discovered at run time, so ops that land later are covered."""
import pytest
import torch

from helpers import NATIVE

OTHER_DEVICE = "cuda" if torch.cuda.is_available() else "meta"


def hal_ext_ops():
    if not NATIVE:
        return []
    names = sorted({n.split("::")[1].split(".")[0] for n in torch._C._dispatch_get_all_op_names()
                    if n.startswith("hal_ext::")})
    return names


def schema(name):
    return getattr(torch.ops.hal_ext, name).default._schema


def build_args(name, variant):
    """Arguments for `name` following its schema; tensors are made inconsistent according to `variant`."""
    args = []
    first = True
    for arg in schema(name).arguments:
        t = str(arg.type)
        if t in ("Optional[Tensor]", "Tensor?", "Optional[int]"):  # Optional[int]: ScalarType? out_dtype
            v = None  # optional tensors (weights) and out_dtype are absent
        elif t.startswith("Tensor"):
            if variant == "mismatched":
                v = torch.rand(2, 3) if first else torch.rand(5)
            elif variant == "empty-aux":
                v = torch.rand(2, 3, 4, 5) if first else torch.rand(0)
            elif variant == "int":
                v = torch.ones(2, 3, 4, 5, dtype=torch.int64)
            elif variant == "rank-1":
                v = torch.rand(7)
            elif variant == "device":
                v = torch.rand(2, 3, 4, 5, device="cpu" if first else OTHER_DEVICE)
            else:
                raise ValueError(variant)
            first = False
        elif t in ("int", "SymInt"):
            v = 1
        elif t == "float":
            v = 1.0
        elif t == "bool":
            v = False
        else:
            pytest.fail(f"{name}: argument type {t} not handled by this test")
        args.append(v)
    return args


VARIANTS = ["mismatched", "empty-aux", "int", "rank-1", "device"]


def single_tensor(name):
    return sum(str(a.type) in ("Tensor", "Tensor[]") for a in schema(name).arguments) == 1


ANY_RANK = ("classifier_discrepancy", "_classifier_discrepancy_backward", "_classifier_discrepancy_with_grad",
            "shift_log", "_shift_log_backward", "mcd_entropy", "regression_mdd")


def applicable(name, variant):
    """Variants that make sense for the op: a device mix needs a GPU (a CPU/meta mix dispatches to
    the meta kernels, not to ours), a one-tensor op has nothing to mismatch, some ops take any rank."""
    if variant == "device":
        return OTHER_DEVICE != "meta"
    if variant in ("mismatched", "empty-aux", "device") and single_tensor(name):
        return False
    return not (variant == "rank-1" and name in ANY_RANK)


CASES = [(name, variant) for name in hal_ext_ops() for variant in VARIANTS if applicable(name, variant)]


@pytest.mark.skipif(not NATIVE, reason="direct operator calls need the native library")
@pytest.mark.parametrize("name, variant", CASES or [("(none)", "mismatched")])
def test_direct_call_with_inconsistent_tensors_raises(name, variant):
    args = build_args(name, variant)
    with pytest.raises((RuntimeError, ValueError, TypeError, IndexError, NotImplementedError)) as info:
        getattr(torch.ops.hal_ext, name)(*args)
    assert str(info.value), f"{name}: empty error message"
