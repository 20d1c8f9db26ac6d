"""Shared test machinery: devices, SPEC tolerances, float64 oracles and mismatch reports."""
import os

import torch

import hal_ext

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
FLOAT_DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]

# (rtol, atol) against the float64 reference, from SPEC "Numerics and dtypes".
TOLERANCES = {
    torch.float64: (1e-9, 1e-12),
    torch.float32: (1e-5, 1e-6),
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (1e-2, 1e-2),
}
# Reductions over more than 1e5 elements may use rtol 1e-4 in float32 (SPEC).
LARGE_REDUCTION_TOLERANCES = {**TOLERANCES, torch.float32: (1e-4, 1e-6)}

NATIVE = hal_ext.native_available()


def tolerance(dtype, reduced_elements=0):
    table = LARGE_REDUCTION_TOLERANCES if reduced_elements > 100_000 else TOLERANCES
    return table[dtype]


def describe(t):
    t = t.detach()
    flags = []
    if t.is_floating_point():
        if torch.isnan(t).any():
            flags.append(f"{int(torch.isnan(t).sum())} NaN")
        if torch.isinf(t).any():
            flags.append(f"{int(torch.isinf(t).sum())} Inf")
    return f"{tuple(t.shape)} {t.dtype}" + (f" ({', '.join(flags)})" if flags else "")


def assert_close(actual, expected, dtype, what, reduced_elements=0):
    """Compares `actual` (computed in `dtype`) with the float64 `expected`; NaN must match NaN.

    On failure the message names `what`, the tolerances, the mismatching indices and NaN/Inf counts."""
    rtol, atol = tolerance(dtype, reduced_elements)
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}"
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    bad = ~(torch.isclose(a, e, rtol=rtol, atol=atol, equal_nan=True))
    if bad.any():
        idx = bad.nonzero()[:5].tolist()
        samples = ", ".join(f"{tuple(i)}: got {a[tuple(i)].item():.9g} expected {e[tuple(i)].item():.9g}" for i in idx)
        raise AssertionError(
            f"{what} ({dtype}, rtol={rtol}, atol={atol}): {int(bad.sum())}/{bad.numel()} elements differ; "
            f"first: {samples}; actual {describe(a)}, expected {describe(e)}")


def assert_within_ulps(actual, expected, what, magnitude, ulps=8):
    """`actual` equals `expected` (same dtype, NaN where it has NaN) up to rounding: within `ulps` units of
    `expected`'s dtype relative to each value, or to `magnitude`, a bound on the terms that a value is
    the difference of (values that cancel to near 0)."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, what
    eps = torch.finfo(expected.dtype).eps * ulps
    torch.testing.assert_close(actual, expected, rtol=eps, atol=eps * magnitude, equal_nan=True,
                               msg=lambda m: f"{what}: {m}")


def as_oracle(t):
    """A float64 leaf copy of `t` for the reference computation."""
    return t.detach().to(torch.float64).requires_grad_(t.requires_grad)


def make_leaves(*tensors, requires_grad=True):
    return [t.detach().clone().requires_grad_(requires_grad) for t in tensors]


def grad_output_like(out, seed=1234):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.device, out.dtype)


def compare_with_reference(fn, ref_fn, inputs, dtype, differentiable, reduced_elements=0, what="output"):
    """Runs fn on `inputs` (already in `dtype`) and ref_fn on float64 copies; compares outputs, then the
    gradients of the inputs whose index is in `differentiable` for a random incoming gradient."""
    leaves = [t.detach().clone().requires_grad_(i in differentiable) for i, t in enumerate(inputs)]
    oracle = [t.detach().to(torch.float64).requires_grad_(i in differentiable) for i, t in enumerate(inputs)]
    out = fn(*leaves)
    expected = ref_fn(*oracle)
    assert out.dtype == dtype, f"{what}: dtype {out.dtype}, expected {dtype}"
    assert_close(out, expected, dtype, what, reduced_elements)
    if not differentiable:
        return
    g = grad_output_like(expected)
    grads = torch.autograd.grad(out, [leaves[i] for i in differentiable], g.to(out.dtype), allow_unused=True)
    ref_grads = torch.autograd.grad(expected, [oracle[i] for i in differentiable], g, allow_unused=True)
    for i, got, want in zip(differentiable, grads, ref_grads):
        if want is None:
            want = torch.zeros_like(oracle[i])
        if got is None:
            got = torch.zeros_like(leaves[i])
        assert got.dtype == dtype, f"grad of input {i}: dtype {got.dtype}, expected {dtype}"
        assert_close(got, want, dtype, f"{what}: gradient of input {i}", reduced_elements)


def expects_cuda_kernels():
    """CI builds with HAL_EXT_CUDA=1 and must then have compiled the CUDA kernels."""
    return os.environ.get("HAL_EXT_CUDA", "auto") == "1"
