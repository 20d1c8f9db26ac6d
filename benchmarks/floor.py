"""The overhead floor: a do-nothing custom autograd operator with an op's tensor inputs and outputs.

`floor_op(n_inputs, outputs, differentiable)` returns a `torch.library.custom_op` that takes the op's
`n_inputs` tensors and returns uninitialised outputs of the op's shapes (`outputs`: "scalar" = one
0-d tensor, "like" = one tensor shaped like input 0, "like2" = two float32 tensors shaped like
input 0). Its backward saves the inputs and returns uninitialised gradients for the inputs that need
them. It does no arithmetic, so its time is what any operator pays for dispatch, autograd
bookkeeping and output allocation, through the Python `custom_op` machinery (which a C++ operator
with a C++ autograd kernel can undercut: hal_ext / floor below 1 is possible).
"""
import torch

_CACHE = {}


def floor_op(n_inputs, outputs="scalar", differentiable=True):
    key = (n_inputs, outputs, differentiable)
    if key in _CACHE:
        return _CACHE[key]
    params = ", ".join(f"Tensor a{i}" for i in range(n_inputs))
    returns = "(Tensor, Tensor)" if outputs == "like2" else "Tensor"
    name = f"hal_bench::floor_{n_inputs}_{outputs}"

    def forward(*inputs):
        x = inputs[0]
        if outputs == "scalar":
            return x.new_empty(())
        if outputs == "like":
            return torch.empty_like(x, memory_format=torch.contiguous_format)
        return (torch.empty(x.shape, dtype=torch.float32, device=x.device),
                torch.empty(x.shape, dtype=torch.float32, device=x.device))

    op = torch.library.custom_op(name, forward, mutates_args=(), schema=f"({params}) -> {returns}")

    @op.register_fake
    def _(*inputs):
        return forward(*inputs)

    if differentiable:
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(*inputs)

        def backward(ctx, *grads):
            saved = ctx.saved_tensors
            return tuple(torch.empty_like(t) if need else None for t, need in zip(saved, ctx.needs_input_grad))

        op.register_autograd(backward, setup_context=setup_context)
    _CACHE[key] = op
    return op
