"""hal_ext.alignment.regda modules: RegressionDisparity (generic composition) and PoseResNet2d (SPEC, RegDA)."""
import pytest
import torch
import torch.nn as nn

from hal_ext.alignment.regda import (FastPseudoLabelGenerator2d, PoseResNet2d, PseudoLabelGenerator2d,
                                     RegressionDisparity)
from hal_ext.modules.gl import WarmStartGradientLayer
from hal_ext.reference import regda as reference
from helpers import DEVICES


def weighted_mse(output, target, weight=None):
    """A criterion with tllib's (output, target, target_weight) signature."""
    loss = 0.5 * (output - target).square().mean(dim=(2, 3))
    if weight is not None:
        loss = loss * weight
    return loss.mean()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("generator", ["truncated", "fast"])
@pytest.mark.parametrize("with_weight", [False, True])
def test_regression_disparity_composition(device, generator, with_weight):
    B, K, H, W = 3, 4, 16, 12
    gen = PseudoLabelGenerator2d(K, H, W, sigma=2) if generator == "truncated" else FastPseudoLabelGenerator2d(2)
    ref = reference.pseudo_label_2d if generator == "truncated" else reference.fast_pseudo_label_2d
    loss = RegressionDisparity(gen, weighted_mse)
    y = torch.randn(B, K, H, W, device=device, requires_grad=True)
    y_adv = torch.randn(B, K, H, W, device=device, requires_grad=True)
    weight = torch.rand(B, K, device=device) if with_weight else None
    rgt, rgf = ref(y.detach().double(), 2)
    for mode, target in (("min", rgt), ("max", rgf)):
        out = loss(y, y_adv, weight, mode=mode)
        leaf = y_adv.detach().double().requires_grad_()
        expected = weighted_mse(leaf, target.double(), None if weight is None else weight.double())
        torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-7)
        g_y, g_adv = torch.autograd.grad(out, [y, y_adv], allow_unused=True)
        assert g_y is None, "the pseudo labels must not pass gradient to y"
        (want,) = torch.autograd.grad(expected, [leaf])
        torch.testing.assert_close(g_adv.double(), want, rtol=1e-5, atol=1e-8)
        assert loss.ground_truth.shape == (B, K, H, W) and loss.ground_false.shape == (B, K, H, W)
        torch.testing.assert_close(loss.ground_truth.cpu(), rgt.cpu(), rtol=1e-6, atol=0)
        torch.testing.assert_close(loss.ground_false.cpu(), rgf.cpu(), rtol=1e-6, atol=0)


def test_regression_disparity_default_mode_and_bad_mode():
    loss = RegressionDisparity(PseudoLabelGenerator2d(2, 8, 8), weighted_mse)
    y, y_adv = torch.randn(2, 2, 8, 8), torch.randn(2, 2, 8, 8)
    assert torch.equal(loss(y, y_adv), loss(y, y_adv, mode="min"))
    assert not torch.equal(loss(y, y_adv, mode="min"), loss(y, y_adv, mode="max"))
    with pytest.raises(ValueError, match=r"mode must be 'min' or 'max', got 'mean'"):
        loss(y, y_adv, mode="mean")
    with pytest.raises(ValueError, match="num_keypoints"):
        loss(torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8))


class Backbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, 2, 1)
        self.out_features = 8

    def forward(self, x):
        return torch.relu(self.conv(x))


def make_pose(**kwargs):
    torch.manual_seed(0)
    upsampling = nn.Sequential(nn.ConvTranspose2d(8, 16, 4, 2, 1), nn.BatchNorm2d(16), nn.ReLU())
    return PoseResNet2d(Backbone(), upsampling, 16, 5, **kwargs)


def test_pose_resnet_structure_and_state_dict_keys():
    model = make_pose()
    heads = [k for k in model.state_dict() if k.startswith("head")]
    expected = []
    for head in ("head", "head_adv"):
        expected += [f"{head}.0.weight", f"{head}.0.bias", f"{head}.1.weight", f"{head}.1.bias",
                     f"{head}.1.running_mean", f"{head}.1.running_var", f"{head}.1.num_batches_tracked",
                     f"{head}.3.weight", f"{head}.3.bias"]
    assert heads == expected
    assert isinstance(model.gl_layer, WarmStartGradientLayer)
    assert (model.gl_layer.alpha, model.gl_layer.lo, model.gl_layer.hi) == (1.0, 0.0, 0.1)
    assert model.gl_layer.max_iters == 1000 and model.gl_layer.auto_step is False
    assert isinstance(model.head[0], nn.Conv2d) and model.head[0].kernel_size == (3, 3) and model.head[0].padding == (1, 1)
    assert isinstance(model.head[1], nn.BatchNorm2d) and isinstance(model.head[2], nn.ReLU)
    assert model.head[3].kernel_size == (1, 1) and model.head[3].out_channels == 5
    for k in (1, 3):
        layers = PoseResNet2d(Backbone(), nn.Identity(), 8, 5, num_head_layers=k).head
        assert len(layers) == 3 * (k - 1) + 1


def test_pose_resnet_initialisation():
    torch.manual_seed(0)
    model = PoseResNet2d(Backbone(), nn.Identity(), 64, 17)
    for head in (model.head, model.head_adv):
        for m in head.modules():
            if isinstance(m, nn.Conv2d):
                assert torch.all(m.bias == 0)
                assert abs(m.weight.std().item() - 0.001) < 0.0001 and abs(m.weight.mean().item()) < 0.0001


def test_pose_resnet_forward_step_and_parameters():
    model = make_pose()
    x = torch.randn(2, 3, 16, 16)
    y, y_adv = model(x)
    assert y.shape == y_adv.shape == (2, 5, 16, 16)
    # At step 0 the warm-start coefficient is 0: y_adv passes no gradient to the shared features.
    (g,) = torch.autograd.grad(y_adv.sum(), [model.backbone.conv.weight])
    assert torch.all(g == 0)
    model.step()
    assert model.gl_layer.iter_num == 1
    y, y_adv = model(x)
    (g,) = torch.autograd.grad(y_adv.sum(), [model.backbone.conv.weight])
    assert g.abs().sum() > 0
    model.eval()
    out = model(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 5, 16, 16)
    groups = model.get_parameters(lr=0.5)
    assert [g["lr"] for g in groups] == [0.05, 0.5, 0.5, 0.5]
    assert [list(g["params"]) for g in groups][2] == list(model.head.parameters())
    assert [g["lr"] for g in make_pose(finetune=False).get_parameters()] == [1.0, 1.0, 1.0, 1.0]
    custom = WarmStartGradientLayer(alpha=2.0, hi=1.0)
    assert make_pose(gl=custom).gl_layer is custom


def test_regda_training_step_runs():
    model = make_pose()
    gen = PseudoLabelGenerator2d(5, 16, 16)
    loss = RegressionDisparity(gen, weighted_mse)
    x = torch.randn(2, 3, 16, 16)
    y, y_adv = model(x)
    total = loss(y, y_adv, mode="min") - loss(y, y_adv, mode="max")
    total.backward()
    model.step()
    assert model.head_adv[3].weight.grad is not None
