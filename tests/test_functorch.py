"""torch.func transforms over the public losses. The native autograd kernels cannot run under functorch,
so under a transform the public functions take the pure-torch reference (hal_ext._native.native_route):
torch.func.grad must give the gradients torch.autograd gives on the native path, and torch.func.vmap
the per-example values of a loop."""
import pytest
import torch

from hal_ext.alignment.mcd import classifier_discrepancy, entropy
from hal_ext.alignment.mdd import (ClassificationMarginDisparityDiscrepancy, RegressionMarginDisparityDiscrepancy,
                                   shift_log)
from hal_ext.alignment.regda import PseudoLabelGenerator2d, RegressionDisparity
from hal_ext.keypoint_detection import JointsKLLoss, JointsMSELoss
from helpers import DEVICES, assert_close


def losses(device):
    """(name, loss of one differentiated tensor, that tensor, the other inputs); float64."""
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.rand(*shape, generator=g, dtype=torch.float64).to(device)

    def logits(*shape):
        return (3 * torch.randn(*shape, generator=g, dtype=torch.float64)).to(device)

    cls_mdd = ClassificationMarginDisparityDiscrepancy(margin=4.)
    reg_mdd = RegressionMarginDisparityDiscrepancy(margin=2.)
    disparity = RegressionDisparity(PseudoLabelGenerator2d(5, 16, 16), JointsKLLoss(epsilon=1e-7))
    heat_target, heat_weight = rand(4, 5, 16, 16), rand(4, 5)
    return [
        ("classifier_discrepancy", lambda p, q: classifier_discrepancy(p, q), rand(8, 7).softmax(1),
         [rand(8, 7).softmax(1)]),
        ("entropy", lambda p: entropy(p), rand(8, 7).softmax(1), []),
        ("shift_log", lambda x: shift_log(x).sum(), rand(8, 7), []),
        ("classification MDD", lambda z, y_s, y_t, z_t: cls_mdd(y_s, z, y_t, z_t), logits(8, 7),
         [logits(8, 7), logits(8, 7), logits(8, 7)]),
        ("regression MDD", lambda z, y_s, y_t, z_t: reg_mdd(y_s, z, y_t, z_t), logits(8, 3),
         [logits(8, 3), logits(8, 3), logits(8, 3)]),
        ("JointsMSELoss", lambda h: JointsMSELoss()(h, heat_target, heat_weight), rand(4, 5, 16, 16), []),
        ("JointsKLLoss", lambda h: JointsKLLoss()(h, heat_target, heat_weight), rand(4, 5, 16, 16), []),
        ("RegressionDisparity", lambda h_adv, h: disparity(h, h_adv, mode="min"), rand(4, 5, 16, 16),
         [rand(4, 5, 16, 16)]),
    ]


@pytest.mark.parametrize("device", DEVICES)
def test_func_grad_matches_autograd(device):
    for name, loss, x, others in losses(device):
        leaf = x.clone().requires_grad_()
        (expected,) = torch.autograd.grad(loss(leaf, *others), [leaf])
        got = torch.func.grad(loss)(x, *others)
        assert_close(got, expected, torch.float64, f"{name}: torch.func.grad")


@pytest.mark.parametrize("device", DEVICES)
def test_func_vmap_matches_a_loop(device):
    g = torch.Generator().manual_seed(1)
    p = torch.rand(3, 8, 7, generator=g, dtype=torch.float64).softmax(-1).to(device)
    q = torch.rand(3, 8, 7, generator=g, dtype=torch.float64).softmax(-1).to(device)
    for name, fn, args in [("classifier_discrepancy", classifier_discrepancy, (p, q)), ("entropy", entropy, (p,))]:
        got = torch.func.vmap(fn)(*args)
        expected = torch.stack([fn(*(a[i] for a in args)) for i in range(p.shape[0])])
        assert_close(got, expected, torch.float64, f"{name}: torch.func.vmap")
