"""hal_ext.alignment.mdd modules: tllib's names, signatures, layer structure, initialisation, state-dict
keys, train/eval outputs, step() and get_parameters() (SPEC "MDD")."""
import inspect
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import hal_ext.alignment.mdd as mdd
from hal_ext.alignment.mdd import (ClassificationMarginDisparityDiscrepancy, GeneralModule, ImageClassifier,
                                   ImageRegressor, MarginDisparityDiscrepancy, RegressionMarginDisparityDiscrepancy,
                                   shift_log)
from hal_ext.modules.grl import WarmStartGradientReverseLayer

FEATURES, BOTTLENECK, WIDTH, CLASSES = 6, 10, 12, 5


class Backbone(nn.Module):
    """A tiny feature extractor with tllib's `out_features` attribute: (N, 3, 8, 8) -> (N, 6, 4, 4)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, FEATURES, 3, stride=2, padding=1)
        self.out_features = FEATURES

    def forward(self, x):
        return self.conv(x)


BACKBONE_KEYS = {"backbone.conv.weight": (FEATURES, 3, 3, 3), "backbone.conv.bias": (FEATURES,)}


def batch_norm_keys(prefix, n):
    return {f"{prefix}.weight": (n,), f"{prefix}.bias": (n,), f"{prefix}.running_mean": (n,),
            f"{prefix}.running_var": (n,), f"{prefix}.num_batches_tracked": ()}


# The state dict of tllib.alignment.mdd.ImageClassifier(backbone, 5, bottleneck_dim=10, width=12), written out.
CLASSIFIER_KEYS = {
    **BACKBONE_KEYS,
    "bottleneck.1.weight": (BOTTLENECK, FEATURES), "bottleneck.1.bias": (BOTTLENECK,),
    **batch_norm_keys("bottleneck.2", BOTTLENECK),
    "head.0.weight": (WIDTH, BOTTLENECK), "head.0.bias": (WIDTH,),
    "head.3.weight": (CLASSES, WIDTH), "head.3.bias": (CLASSES,),
    "adv_head.0.weight": (WIDTH, BOTTLENECK), "adv_head.0.bias": (WIDTH,),
    "adv_head.3.weight": (CLASSES, WIDTH), "adv_head.3.bias": (CLASSES,),
}


def regressor_head_keys(prefix, factors):
    return {f"{prefix}.0.weight": (WIDTH, BOTTLENECK, 3, 3), f"{prefix}.0.bias": (WIDTH,),
            **batch_norm_keys(f"{prefix}.1", WIDTH),
            f"{prefix}.3.weight": (WIDTH, WIDTH, 3, 3), f"{prefix}.3.bias": (WIDTH,),
            **batch_norm_keys(f"{prefix}.4", WIDTH),
            f"{prefix}.8.weight": (factors, WIDTH), f"{prefix}.8.bias": (factors,)}


# The state dict of tllib.alignment.mdd.ImageRegressor(backbone, 3, bottleneck_dim=10, width=12), written out.
REGRESSOR_KEYS = {
    **BACKBONE_KEYS,
    "bottleneck.0.weight": (BOTTLENECK, FEATURES, 3, 3), "bottleneck.0.bias": (BOTTLENECK,),
    **batch_norm_keys("bottleneck.1", BOTTLENECK),
    **regressor_head_keys("head", 3), **regressor_head_keys("adv_head", 3),
}


def fake_checkpoint(keys, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.tensor(7) if k.endswith("num_batches_tracked") else torch.randn(shape, generator=g))
            for k, shape in keys.items()}


def classifier(**kw):
    return ImageClassifier(Backbone(), CLASSES, bottleneck_dim=BOTTLENECK, width=WIDTH, **kw)


def regressor(**kw):
    return ImageRegressor(Backbone(), 3, bottleneck_dim=BOTTLENECK, width=WIDTH, **kw)


def test_signatures_and_defaults_match_tllib():
    def params(f):
        return [(p.name, p.default) for p in inspect.signature(f).parameters.values()]
    empty = inspect.Parameter.empty
    assert params(MarginDisparityDiscrepancy.__init__)[1:] == [
        ("source_disparity", empty), ("target_disparity", empty), ("margin", 4), ("reduction", "mean")]
    assert params(ClassificationMarginDisparityDiscrepancy.__init__)[1:] == [("margin", 4), ("kwargs", empty)]
    assert params(RegressionMarginDisparityDiscrepancy.__init__)[1:] == [
        ("margin", 1), ("loss_function", F.l1_loss), ("kwargs", empty)]
    assert params(ImageClassifier.__init__)[1:] == [
        ("backbone", empty), ("num_classes", empty), ("bottleneck_dim", 1024), ("width", 1024), ("grl", None),
        ("finetune", True), ("pool_layer", None)]
    assert params(ImageRegressor.__init__)[1:] == [
        ("backbone", empty), ("num_factors", empty), ("bottleneck", None), ("head", None), ("adv_head", None),
        ("bottleneck_dim", 1024), ("width", 1024), ("finetune", True)]
    assert params(shift_log) == [("x", empty), ("offset", 1e-6)]
    for name in mdd.__all__:
        doc = getattr(mdd, name).__doc__
        assert doc and ("Example" in doc or ">>>" in doc), name


def test_classifier_state_dict_keys_and_tllib_checkpoint_load():
    model = classifier()
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == CLASSIFIER_KEYS
    checkpoint = fake_checkpoint(CLASSIFIER_KEYS)
    model.load_state_dict(checkpoint)  # strict
    for k, v in model.state_dict().items():
        assert torch.equal(v, checkpoint[k]), k


def test_regressor_state_dict_keys_and_tllib_checkpoint_load():
    model = regressor()
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == REGRESSOR_KEYS
    checkpoint = fake_checkpoint(REGRESSOR_KEYS, seed=1)
    model.load_state_dict(checkpoint)
    for k, v in model.state_dict().items():
        assert torch.equal(v, checkpoint[k]), k


def test_classifier_structure_and_initialisation():
    torch.manual_seed(0)
    model = ImageClassifier(Backbone(), 31, bottleneck_dim=256, width=512)
    b = model.bottleneck
    assert [type(m) for m in b] == [nn.Sequential, nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Dropout]
    assert [type(m) for m in b[0]] == [nn.AdaptiveAvgPool2d, nn.Flatten]
    assert b[4].p == 0.5
    assert torch.all(b[1].bias == 0.1)
    assert abs(b[1].weight.std().item() - 0.005) < 0.0005 and abs(b[1].weight.mean().item()) < 0.0005
    for head in (model.head, model.adv_head):
        assert [type(m) for m in head] == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
        assert head[2].p == 0.5 and head[3].out_features == 31
        for layer in (head[0], head[3]):
            assert torch.all(layer.bias == 0)
            assert abs(layer.weight.std().item() - 0.01) < 0.001
    grl = model.grl_layer
    assert isinstance(grl, WarmStartGradientReverseLayer)
    assert (grl.alpha, grl.lo, grl.hi, grl.max_iters, grl.auto_step) == (1.0, 0.0, 0.1, 1000, False)
    assert model.num_classes == 31 and model.finetune is True
    # Same seed, same weights.
    torch.manual_seed(0)
    again = ImageClassifier(Backbone(), 31, bottleneck_dim=256, width=512)
    for (k, v), w in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(v, w), k


def test_regressor_structure_and_initialisation():
    model = regressor()
    assert [type(m) for m in model.bottleneck] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    for head in (model.head, model.adv_head):
        assert [type(m) for m in head] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Conv2d, nn.BatchNorm2d, nn.ReLU,
                                           nn.AdaptiveAvgPool2d, nn.Flatten, nn.Linear, nn.Sigmoid]
        for layer in (head[0], head[3], head[8]):
            assert torch.all(layer.bias == 0)
            assert layer.weight.abs().max() < 0.06  # N(0, 0.01), not the default init
    assert model.num_factors == 3 and model.num_classes == 3
    custom = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(BOTTLENECK, 3))
    model = regressor(head=custom)
    assert model.head is custom


@pytest.mark.parametrize("build, shape", [(classifier, (4, CLASSES)), (regressor, (4, 3))])
def test_train_and_eval_outputs_step_and_reversal(build, shape):
    torch.manual_seed(0)
    model = build()
    x = torch.randn(4, 3, 8, 8)
    outputs, outputs_adv = model(x)
    assert outputs.shape == shape and outputs_adv.shape == shape
    # At step 0 the reverse layer's coefficient is 0: the adversarial head sends no gradient back.
    outputs_adv.sum().backward()
    assert all(p.grad is None or torch.all(p.grad == 0) for p in model.backbone.parameters())
    for _ in range(500):
        model.step()
    assert model.grl_layer.iter_num == 500
    model.zero_grad()
    model(x)[1].sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())
    model.eval()
    out = model(x)
    assert isinstance(out, torch.Tensor) and out.shape == shape


def test_get_parameters():
    model = classifier()
    groups = model.get_parameters(base_lr=0.5)
    assert [g["lr"] for g in groups] == [0.05, 0.5, 0.5, 0.5]
    for group, module in zip(groups, (model.backbone, model.bottleneck, model.head, model.adv_head)):
        assert [id(p) for p in group["params"]] == [id(p) for p in module.parameters()]
    assert [g["lr"] for g in classifier(finetune=False).get_parameters()] == [1.0, 1.0, 1.0, 1.0]
    assert [g["lr"] for g in regressor().get_parameters()] == [0.1, 1.0, 1.0, 1.0]


def test_custom_grl_pool_and_general_module():
    grl = WarmStartGradientReverseLayer(alpha=2.0, hi=1.0, auto_step=True)
    model = classifier(grl=grl, pool_layer=nn.Flatten())
    assert model.grl_layer is grl and model.bottleneck[0].__class__ is nn.Flatten
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(12, 8))
    general = GeneralModule(backbone, 3, nn.Identity(), nn.Linear(8, 3), nn.Linear(8, 3))
    assert general.grl_layer.hi == 0.1
    outputs, outputs_adv = general(torch.randn(2, 12))
    assert outputs.shape == outputs_adv.shape == (2, 3)


def test_mdd_training_step():
    torch.manual_seed(0)
    model = classifier()
    model.step()
    loss_fn = ClassificationMarginDisparityDiscrepancy(margin=4.0)
    x = torch.randn(8, 3, 8, 8)
    outputs, outputs_adv = model(x)
    y_s, y_t = outputs.chunk(2)
    y_s_adv, y_t_adv = outputs_adv.chunk(2)
    transfer_loss = -loss_fn(y_s, y_s_adv, y_t, y_t_adv)
    (F.cross_entropy(y_s, torch.arange(4) % CLASSES) + transfer_loss).backward()
    assert model.adv_head[3].weight.grad.abs().sum() > 0
    assert model.bottleneck[1].weight.grad.abs().sum() > 0


def test_shift_log_reexport():
    from hal_ext.ops.shift_log import shift_log as op_shift_log
    assert shift_log is op_shift_log
    x = torch.tensor([0.0, 0.5, 1.0])
    assert torch.allclose(shift_log(x), torch.log(torch.clamp(x + 1e-6, max=1.0)))


def test_fallback_without_native_library():
    code = (
        "import torch, torch.nn.functional as F\n"
        "import hal_ext\n"
        "from hal_ext.alignment.mdd import ClassificationMarginDisparityDiscrepancy as C, "
        "RegressionMarginDisparityDiscrepancy as R\n"
        "from hal_ext.reference import mdd as ref\n"
        "assert not hal_ext.build_info()['compiled']\n"
        "ts = [torch.randn(6, 4, requires_grad=True) for _ in range(4)]\n"
        "out = C()(*ts); out.backward()\n"
        "assert torch.allclose(out, ref.classification_mdd(*ts))\n"
        "out = R(loss_function=F.mse_loss)(*ts); out.backward()\n"
        "assert torch.allclose(out, ref.regression_mdd(*ts, loss_function=F.mse_loss))\n"
    )
    env = dict(os.environ, HAL_EXT_DISABLE_NATIVE="1")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
