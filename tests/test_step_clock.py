"""The training-step benchmark's in-step loss clock (benchmarks/step_clock.py): cutting the graph at the
model outputs to time the losses must not change what the model receives, and the step measurement
reports its documented fields (no timing assertions)."""
import pytest
import torch
import torch.nn as nn

from benchmarks import train_steps
from benchmarks.step_clock import LossClock
from hal_ext.alignment.mcd import classifier_discrepancy, entropy
from hal_ext.alignment.regda import PseudoLabelGenerator2d, RegressionDisparity
from hal_ext.keypoint_detection import JointsKLLoss


def _parameter_grads(model):
    return [p.grad.clone() for p in model.parameters()]


def test_clocked_backward_gives_the_combined_backward_gradients():
    torch.manual_seed(0)
    K, size = 3, 8
    model = nn.Conv2d(2, 2 * K, 3, padding=1).double()
    x = torch.randn(2, 2, size, size, dtype=torch.float64)
    target = torch.rand(2, K, size, size, dtype=torch.float64)
    criterion = JointsKLLoss()
    disparity = RegressionDisparity(PseudoLabelGenerator2d(K, size, size), JointsKLLoss(epsilon=1e-7))

    def outputs():
        return model(x).chunk(2, 1)

    y, y_adv = outputs()
    extra = y.square().mean()  # a model-side loss that no timed loss reads
    (extra + criterion(y, target) + 4.0 * disparity(y, y_adv, mode="max")).backward()
    want = _parameter_grads(model)

    model.zero_grad()
    clock = LossClock("cpu")
    y, y_adv = outputs()
    extra = y.square().mean()
    y_c, y_adv_c = clock.cut(y, y_adv)
    clock.loss(criterion, y_c, target)
    clock.loss(disparity, y_c, y_adv_c, mode="max", coefficient=4.0)
    clock.backward(extra)
    got = _parameter_grads(model)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-14)
    forward_s, backward_s = clock.totals()
    assert len(clock.forward_spans) == 2 and len(clock.backward_spans) == 2
    assert forward_s >= 0 and backward_s >= 0


def test_one_leaf_read_by_two_losses_gets_both_gradients():
    torch.manual_seed(1)
    head = nn.Linear(4, 5).double()
    f = torch.randn(6, 4, dtype=torch.float64)
    p1, p2 = head(f).softmax(1), head(f.flip(0)).softmax(1)
    (0.01 * entropy(p1) - classifier_discrepancy(p1, p2)).backward()
    want = _parameter_grads(head)
    head.zero_grad()
    clock = LossClock("cpu")
    p1, p2 = clock.cut(head(f).softmax(1), head(f.flip(0)).softmax(1))
    clock.loss(entropy, p1, coefficient=0.01)
    clock.loss(classifier_discrepancy, p1, p2, coefficient=-1.0)
    clock.backward()
    for g, w in zip(_parameter_grads(head), want):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-14)


def test_measure_reports_the_share_of_every_contender():
    steps = {}
    for kind in ("noop", "bytes", "eager", "hal_ext"):
        torch.manual_seed(0)
        steps[kind], _ = train_steps.regda_step(train_steps.regda_losses(kind, 2, 8), "cpu", batch=2,
                                                num_keypoints=2, size=8)
    stats = train_steps.measure(steps, "cpu", warmup=1, min_steps=2, max_steps=2, budget_s=0)
    assert set(stats) == {"noop", "bytes", "eager", "hal_ext"}
    for name, s in stats.items():
        assert s["reps"] == 2, name
        assert 0 <= s["loss_forward_s"] and 0 <= s["loss_backward_s"], name
        assert 0 <= s["loss_share"] <= 1, name


def _leaf_grads(loss, *shapes, requires_grad=(True,) * 8, return_leaves=False):
    """Gradients of loss(*leaves) * 3 for random leaves of the given shapes (None where unused)."""
    leaves = [torch.rand(s, dtype=torch.float64, requires_grad=r) for s, r in zip(shapes, requires_grad)]
    value = loss(*leaves)
    inputs = [x for x in leaves if x.requires_grad]
    grads = iter(torch.autograd.grad(value * 3, inputs, allow_unused=True))
    grads = [next(grads) if x.requires_grad else None for x in leaves]
    return (grads, leaves) if return_leaves else grads


@pytest.mark.parametrize("method", ["mcd_entropy", "mcd_discrepancy", "mdd", "regda_criterion", "regda_disparity"])
def test_bytes_only_losses_differentiate_what_hal_ext_differentiates(method):
    """The bytes-only contender writes a gradient for exactly the inputs hal_ext's loss differentiates, of
    their shape, in one pass that reads the input and its partner (an input of the same shape without a
    gradient), scaled by the incoming gradient: it moves the bytes the real loss must move."""
    shapes, requires_grad = {"mcd_entropy": ([(4, 5)], None), "mcd_discrepancy": ([(4, 5)] * 2, None),
                             "mdd": ([(4, 5)] * 4, None),
                             "regda_criterion": ([(2, 3, 8, 8), (2, 3, 8, 8), (2, 3)], (True, False, False)),
                             "regda_disparity": ([(2, 3, 8, 8), (2, 3, 8, 8), (2, 3)], (True, True, False))}[method]
    losses = {}
    for kind in ("bytes", "hal_ext"):
        if method.startswith("mcd"):
            ns = train_steps.mcd_losses(kind)
            losses[kind] = ns.entropy if method == "mcd_entropy" else ns.discrepancy
        elif method == "mdd":
            losses[kind] = train_steps.mdd_losses(kind)
        else:
            criterion, disparity = train_steps.regda_losses(kind, 3, 8)
            losses[kind] = criterion if method == "regda_criterion" else disparity
    kwargs = {"requires_grad": requires_grad} if requires_grad else {}
    torch.manual_seed(0)
    want = _leaf_grads(losses["hal_ext"], *shapes, **kwargs)
    torch.manual_seed(0)
    got, leaves = _leaf_grads(losses["bytes"], *shapes, return_leaves=True, **kwargs)
    assert [g is None for g in got] == [g is None for g in want]
    for g, w in zip(got, want):
        assert g is None or (g.shape == w.shape and g.dtype == w.dtype)
    x = [t.detach() for t in leaves]
    expected = {"mcd_entropy": lambda: [x[0] * 1e-3 * 3], "mcd_discrepancy": lambda: [x[0] * 1e-3 * 3, x[1] * 1e-3 * 3],
                "mdd": lambda: [None, (x[1] + x[0]) * 3, None, (x[3] + x[2]) * 3],
                "regda_criterion": lambda: [(x[0] + x[1]) * 3, None, None],
                "regda_disparity": lambda: [None, (x[1] + x[0]) * 3, None]}[method]()
    for g, e in zip(got, expected):
        assert (g is None) == (e is None)
        if e is not None:
            torch.testing.assert_close(g, e, rtol=0, atol=0)
