"""hal_ext._C's direct entry points (csrc/python/direct_calls.cpp): the public functions call them for
plain tensors in eager mode. They must give the torch.ops route's values and gradients bit for bit,
keep every dispatch-level feature (dispatch modes, threads), step aside for torch-function modes and
tensor subclasses, and reject bad arguments with errors that name them."""
import threading

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from hal_ext import _native
from hal_ext.alignment.mcd import classifier_discrepancy, entropy
from hal_ext.alignment.regda import FastPseudoLabelGenerator2d, PseudoLabelGenerator2d, RegressionDisparity
from hal_ext.keypoint_detection import JointsKLLoss, JointsMSELoss
from hal_ext.ops.classification_mdd import classification_mdd
from hal_ext.ops.regression_mdd import regression_mdd
from helpers import DEVICES, NATIVE

pytestmark = pytest.mark.skipif(not NATIVE, reason="the direct entry points are part of the native library")

MEAN = 1  # torch's reduction code for 'mean'


def cases(device):
    """(name, public call, the same op through torch.ops, inputs)."""
    g = torch.Generator().manual_seed(0)

    def probs(*shape):
        return torch.randn(*shape, generator=g).softmax(1).to(device)

    def logits(*shape):
        return (3 * torch.randn(*shape, generator=g)).to(device)

    ops = torch.ops.hal_ext
    heatmap = torch.rand(2, 3, 8, 8, generator=g).to(device)
    weight = torch.rand(2, 3, generator=g).to(device)
    disparity_kl = RegressionDisparity(PseudoLabelGenerator2d(3, 8, 8), JointsKLLoss(epsilon=1e-7))
    disparity_mse = RegressionDisparity(FastPseudoLabelGenerator2d(sigma=1.5), JointsMSELoss())
    return [
        ("classifier_discrepancy", classifier_discrepancy, ops.classifier_discrepancy.default,
         [probs(32, 31), probs(32, 31)]),
        ("entropy", entropy, lambda p: ops.mcd_entropy.default(p)[0], [probs(64, 1000)]),
        ("classification_mdd", lambda *y: classification_mdd(*y, margin=4.),
         lambda *y: ops.classification_mdd.default(*y, None, None, 4., MEAN)[0],
         [logits(32, 31) for _ in range(4)]),
        ("classification_mdd k-dim none", lambda *y: classification_mdd(*y, margin=2, reduction="none"),
         lambda *y: ops.classification_mdd.default(*y, None, None, 2., 0)[0],
         [logits(4, 5, 3, 2) for _ in range(4)]),
        ("regression_mdd l1", lambda *y: regression_mdd(*y, margin=1., loss_function=F.l1_loss),
         lambda *y: ops.regression_mdd.default(*y, None, None, 1., 0, MEAN), [logits(256, 3) for _ in range(4)]),
        ("regression_mdd mse sum", lambda *y: regression_mdd(*y, margin=3, loss_function=F.mse_loss, reduction="sum"),
         lambda *y: ops.regression_mdd.default(*y, None, None, 3., 1, 2), [logits(64, 2) for _ in range(4)]),
        ("joints_kl_loss", lambda z: JointsKLLoss()(z, heatmap, weight),
         lambda z: ops.joints_kl_loss.default(z, heatmap, weight, MEAN, 0.), [logits(2, 3, 8, 8)]),
        ("joints_kl_loss none eps", lambda z: JointsKLLoss("none", epsilon=1e-3)(z, heatmap),
         lambda z: ops.joints_kl_loss.default(z, heatmap, None, 0, 1e-3).mean(-1), [logits(2, 3, 8, 8)]),
        ("joints_mse_loss", lambda z: JointsMSELoss()(z, heatmap, weight),
         lambda z: ops.joints_mse_loss.default(z, heatmap, weight, MEAN), [logits(2, 3, 8, 8)]),
        ("regression_disparity kl max", lambda y, y_adv: disparity_kl(y, y_adv, weight, mode="max"),
         lambda y, y_adv: ops.regression_disparity.default(y.detach(), y_adv, weight, 1, 2., 0, 1, MEAN, 1e-7),
         [logits(2, 3, 8, 8), logits(2, 3, 8, 8)]),
        ("regression_disparity fast mse", lambda y, y_adv: disparity_mse(y, y_adv),
         lambda y, y_adv: ops.regression_disparity.default(y.detach(), y_adv, None, 0, 1.5, 1, 0, MEAN, 0.),
         [logits(2, 3, 8, 8), logits(2, 3, 8, 8)]),
    ]


def values_and_grads(fn, inputs):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    out.sum().backward()
    return out.detach(), [t.grad for t in leaves]


@pytest.mark.parametrize("device", DEVICES)
def test_public_calls_match_the_torch_ops_route_bitwise(device):
    assert _native.direct_calls() is not None
    for name, public, through_ops, inputs in cases(device):
        out, grads = values_and_grads(public, inputs)
        expected, expected_grads = values_and_grads(through_ops, inputs)
        assert torch.equal(out, expected), name
        assert any(grad is not None for grad in grads), name
        for grad, expected_grad in zip(grads, expected_grads):
            assert (grad is None and expected_grad is None) or torch.equal(grad, expected_grad), name


def test_public_calls_use_the_direct_entry_points(monkeypatch):
    calls = []
    module = _native._DIRECT

    class Spy:
        def __getattr__(self, name):
            calls.append(name)
            return getattr(module, name)

    monkeypatch.setattr(_native, "_DIRECT", Spy())
    for name, public, _, inputs in cases("cpu"):
        public(*inputs)
    assert calls == ["classifier_discrepancy", "mcd_entropy", "classification_mdd", "classification_mdd",
                     "regression_mdd", "regression_mdd", "joints_kl_loss", "joints_kl_loss", "joints_mse_loss",
                     "regression_disparity", "regression_disparity"]


def test_regression_disparity_keeps_its_pseudo_labels_on_the_direct_route():
    y, y_adv = torch.randn(2, 3, 8, 8, requires_grad=True), torch.randn(2, 3, 8, 8, requires_grad=True)
    disparity = RegressionDisparity(PseudoLabelGenerator2d(3, 8, 8), JointsKLLoss())
    disparity(y, y_adv, mode="min").backward()
    assert y.grad is None and y_adv.grad is not None  # y's peaks are pseudo labels
    assert torch.equal(disparity.ground_truth, PseudoLabelGenerator2d(3, 8, 8)(y.detach())[0])


HEATMAP_4D = [torch.rand(2, 3, 4, 4)] * 2


def disparity_args(y=None, y_adv=None, weight=None, sigma=2.0, shape=(3, 4, 4)):
    y = torch.rand(2, 3, 4, 4) if y is None else y
    return (y, torch.rand(2, 3, 4, 4) if y_adv is None else y_adv, weight, 0, sigma, 0, 1, MEAN, 0.0, *shape)


def test_dispatch_modes_still_see_the_operator():
    seen = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    p = torch.rand(8, 5)
    with Record():
        value = entropy(p)
    assert "hal_ext.mcd_entropy.default" in seen
    assert torch.equal(value, torch.ops.hal_ext.mcd_entropy(p)[0])


def test_torch_function_modes_and_subclasses_take_the_torch_ops_route():
    seen = []

    class Record(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.append(getattr(func, "__name__", str(func)))
            return func(*args, **(kwargs or {}))

    p1, p2 = torch.rand(6, 4), torch.rand(6, 4)
    assert _native.direct_calls() is not None
    with Record():
        assert _native.direct_calls() is None
        value = classifier_discrepancy(p1, p2)
    assert any("classifier_discrepancy" in s for s in seen)
    assert torch.equal(value, torch.ops.hal_ext.classifier_discrepancy(p1, p2))

    tagged = p1.as_subclass(Tagged)
    assert torch.equal(classifier_discrepancy(tagged, p2).as_subclass(torch.Tensor), value)


def test_calls_from_threads_agree():
    """The entry points release the GIL around the op, as torch.ops does."""
    p = torch.rand(256, 345)
    expected = entropy(p)
    results = [None] * 4

    def work(i):
        results[i] = [entropy(p) for _ in range(50)]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(torch.equal(r, expected) for rs in results for r in rs)


@pytest.mark.parametrize("call", [
    lambda d: d.mcd_entropy([0.5]),
    lambda d: d.mcd_entropy(torch.tensor(0.5)),
    lambda d: d.mcd_entropy(torch.ones(3, dtype=torch.int64)),
    lambda d: d.classifier_discrepancy(torch.rand(3), torch.rand(4)),
    lambda d: d.classifier_discrepancy(torch.rand(3), torch.rand(3, dtype=torch.float64)),
    lambda d: d.classifier_discrepancy(torch.rand(3), torch.nn.Parameter(torch.rand(3)).as_subclass(Tagged)),
    lambda d: d.classification_mdd(*[torch.rand(4, 3)] * 4, "4", 1),
    lambda d: d.classification_mdd(*[torch.rand(4, 3)] * 4, True, 1),
    lambda d: d.classification_mdd(*[torch.rand(4, 0)] * 4, 4.0, 1),
    lambda d: d.classification_mdd(*[torch.rand(4, 3)] * 3, torch.rand(5, 3), 4.0, 1),
    lambda d: d.regression_mdd(*[torch.rand(4, 3)] * 3, torch.rand(4, 3).double(), 1.0, 0, 1),
    lambda d: d.joints_kl_loss(torch.rand(2, 3, 4), torch.rand(2, 3, 4), None, 1, 0.0),
    lambda d: d.joints_kl_loss(*HEATMAP_4D, torch.rand(2, 3).double(), 1, 0.0),
    lambda d: d.joints_kl_loss(*HEATMAP_4D, torch.rand(2, 4), 1, 0.0),
    lambda d: d.joints_kl_loss(*HEATMAP_4D, [[1.0] * 3] * 2, 1, 0.0),
    lambda d: d.joints_kl_loss(*HEATMAP_4D, torch.rand(2, 3, requires_grad=True), 1, 0.0),
    lambda d: d.joints_kl_loss(HEATMAP_4D[0], torch.rand(2, 3, 4, 4, requires_grad=True), None, 1, 0.0),
    lambda d: d.joints_kl_loss(*HEATMAP_4D, None, 1, "0"),
    lambda d: d.joints_mse_loss(HEATMAP_4D[0], torch.rand(2, 3, 4, 4, device="meta"), None, 1),
    lambda d: d.regression_disparity(*disparity_args(y=torch.rand(2, 3, 4, 4).double())),
    lambda d: d.regression_disparity(*disparity_args(shape=(4, 4, 4))),
    lambda d: d.regression_disparity(*disparity_args(shape=(3, 4, 5))),
    lambda d: d.regression_disparity(*disparity_args(shape=(3, 4.0, 4))),
    lambda d: d.regression_disparity(*disparity_args(sigma=0.0)),
    lambda d: d.regression_disparity(*disparity_args(sigma=float("inf"))),
    lambda d: d.regression_disparity(*disparity_args(sigma=True)),
])
def test_uncommon_calls_are_left_to_the_python_wrapper(call):
    """Anything but exact tensors of one supported dtype and shape (and plain numbers) returns None
    without calling the op: the wrapper then validates it and names the bad argument."""
    assert call(_native.direct_calls()) is None


class Tagged(torch.Tensor):
    pass


@pytest.mark.parametrize("call, error, words", [
    (lambda d: d.mcd_entropy(), TypeError, ["mcd_entropy", "1", "got 0"]),
    (lambda d: d.classification_mdd(*[torch.rand(4, 3)] * 4, 4.0, 1.0), TypeError, ["reduction", "float"]),
    (lambda d: d.regression_mdd(*[torch.rand(4, 3)] * 4, 1.0, 7, 1), ValueError, ["loss_kind", "7"]),
    (lambda d: d.classifier_discrepancy(torch.rand(3), torch.rand(3, device="meta")), ValueError,
     ["predictions2", "meta"]),
])
def test_bad_arguments_name_themselves(call, error, words):
    with pytest.raises(error) as info:
        call(_native.direct_calls())
    for word in words:
        assert word in str(info.value)
