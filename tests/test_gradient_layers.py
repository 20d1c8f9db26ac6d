"""Gradient reverse / gradient layers (SPEC, "Gradient layers")."""
import math

import pytest
import torch

from hal_ext.modules.gl import WarmStartGradientLayer
from hal_ext.modules.grl import GradientReverseLayer, WarmStartGradientReverseLayer


def expected_coeff(alpha, lo, hi, i, max_iters):
    return 2 * (hi - lo) / (1 + math.exp(-alpha * i / max_iters)) - (hi - lo) + lo


def input_grad(layer, x):
    x = x.detach().clone().requires_grad_()
    y = layer(x)
    assert torch.equal(y, x)
    y.backward(torch.ones_like(y))
    return x.grad


def test_gradient_reverse_layer_negates():
    assert torch.equal(input_grad(GradientReverseLayer(), torch.randn(3, 4)), -torch.ones(3, 4))


@pytest.mark.parametrize("layer_cls, sign", [(WarmStartGradientReverseLayer, -1.0), (WarmStartGradientLayer, 1.0)])
def test_warm_start_schedule(layer_cls, sign):
    layer = layer_cls(alpha=1.0, lo=0.0, hi=0.1, max_iters=1000, auto_step=False)
    x = torch.randn(2, 3)
    assert torch.equal(input_grad(layer, x), torch.zeros(2, 3) * sign)  # coeff(0) == lo == 0
    for _ in range(500):
        layer.step()
    want = sign * expected_coeff(1.0, 0.0, 0.1, 500, 1000)
    assert torch.allclose(input_grad(layer, x), torch.full((2, 3), want))
    assert layer.iter_num == 500


@pytest.mark.parametrize("layer_cls", [WarmStartGradientReverseLayer, WarmStartGradientLayer])
def test_auto_step_counts_forwards(layer_cls):
    layer = layer_cls(auto_step=True)
    for _ in range(3):
        layer(torch.randn(2))
    assert layer.iter_num == 3


def test_defaults_match_tllib():
    layer = WarmStartGradientReverseLayer()
    assert (layer.alpha, layer.lo, layer.hi, layer.max_iters, layer.auto_step) == (1.0, 0.0, 1.0, 1000, False)
