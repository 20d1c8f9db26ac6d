"""Input checks run before any kernel: they raise TypeError/ValueError naming the argument, the
expected and the received value. (The C++ operators check again, so direct op calls are safe too.)"""
import torch

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}


def check_float_tensor(t, name):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name} must be a float16, bfloat16, float32 or float64 tensor, got {t.dtype}")


def check_paired(a, a_name, b, b_name):
    """`b` must be a float tensor on `a`'s device with `a`'s shape."""
    check_float_tensor(b, b_name)
    if a.device != b.device:
        raise ValueError(f"{b_name} must be on the device of {a_name} ({a.device}), got {b.device}")
    if a.shape != b.shape:
        raise ValueError(f"{b_name} must have the same shape as {a_name} {tuple(a.shape)}, got {tuple(b.shape)}")


def check_min_dim(t, name, min_dim, layout):
    if t.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dimensions {layout}, got shape {tuple(t.shape)}")


def reduction_code(reduction):
    """'none' | 'mean' | 'sum' -> the integer the operators take (torch's numbering)."""
    try:
        return REDUCTIONS[reduction]
    except (KeyError, TypeError):
        raise ValueError(f"reduction must be one of 'none', 'mean', 'sum', got {reduction!r}") from None


def same_dtype(*tensors):
    """Casts the tensors to their promoted dtype, as torch's arithmetic would (a no-op when equal)."""
    dtype = tensors[0].dtype
    if all(t.dtype == dtype for t in tensors):
        return tensors
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return tuple(t.to(dtype) for t in tensors)


def result_dtype(out_dtype, dtype):
    """The dtype an op writes its result in (csrc/common/loss_dtype.h): ``dtype`` for ``out_dtype=None``,
    else ``out_dtype``, which must be ``dtype`` or its accumulation dtype (float32 for float16/bfloat16)."""
    if out_dtype is None:
        return dtype
    acc = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    if out_dtype not in (dtype, acc):
        raise TypeError(f"out_dtype must be None, {dtype} or {acc} for {dtype} inputs, got {out_dtype}")
    return out_dtype
