"""Gradient layers, as ``tllib.modules.gl`` (without its NumPy calls that NumPy >= 1.24 removed)."""
from typing import Any, Optional, Tuple

import torch
import torch.nn as nn
from torch.autograd import Function

from ._warm_start import WarmStartSchedule

__all__ = ["GradientFunction", "WarmStartGradientLayer"]


class GradientFunction(Function):
    """Identity forward; the backward pass multiplies the gradient by ``coeff``."""

    @staticmethod
    def forward(ctx: Any, input: torch.Tensor, coeff: Optional[float] = 1.0) -> torch.Tensor:
        ctx.coeff = coeff
        return input * 1.0

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> Tuple[torch.Tensor, Any]:
        return grad_output * ctx.coeff, None


class WarmStartGradientLayer(nn.Module, WarmStartSchedule):
    r"""Identity forward; the backward pass multiplies the gradient by the warm-start coefficient

    .. math:: c(i) = \frac{2 (hi - lo)}{1 + \exp(-\alpha i / N)} - (hi - lo) + lo

    Args:
        alpha (float, optional): :math:`\alpha`. Default: 1.0
        lo (float, optional): initial coefficient. Default: 0.0
        hi (float, optional): final coefficient. Default: 1.0
        max_iters (int, optional): :math:`N`. Default: 1000
        auto_step (bool, optional): call :meth:`step` after every forward pass. Default: False

    Example::

        >>> gl = WarmStartGradientLayer(alpha=1., lo=0., hi=0.1, max_iters=1000, auto_step=False)
        >>> y = gl(torch.randn(4, 8, requires_grad=True)); gl.step()
    """

    def __init__(self, alpha: Optional[float] = 1.0, lo: Optional[float] = 0.0, hi: Optional[float] = 1.,
                 max_iters: Optional[int] = 1000., auto_step: Optional[bool] = False):
        super().__init__()
        self._init_schedule(alpha, lo, hi, max_iters, auto_step)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        coeff = self.coeff()
        if self.auto_step:
            self.step()
        return GradientFunction.apply(input, coeff)
