"""One torch.compile(fullgraph=True) training step through every fused op: no graph break, and the
same loss and gradients as eager (issue 2)."""
import pytest
import torch

from hal_ext.alignment.mcd import classifier_discrepancy, entropy
from hal_ext.alignment.mdd import (ClassificationMarginDisparityDiscrepancy, RegressionMarginDisparityDiscrepancy,
                                   shift_log)
from hal_ext.alignment.regda import FastPseudoLabelGenerator2d, PseudoLabelGenerator2d, RegressionDisparity
from hal_ext.keypoint_detection import JointsKLLoss, JointsMSELoss
from helpers import DEVICES, NATIVE

pytestmark = pytest.mark.skipif(not NATIVE, reason="compiles the native operators")

cls_mdd = ClassificationMarginDisparityDiscrepancy(margin=4.)
reg_mdd = RegressionMarginDisparityDiscrepancy(margin=1.)
disparity_kl = RegressionDisparity(PseudoLabelGenerator2d(3, height=8, width=8, sigma=2), JointsKLLoss())
disparity_mse = RegressionDisparity(FastPseudoLabelGenerator2d(sigma=2), JointsMSELoss())
generator = PseudoLabelGenerator2d(3, height=8, width=8, sigma=2)


def every_loss(logits1, logits2, factors, heatmaps, heatmaps_adv):
    p1, p2 = logits1.softmax(1), logits2.softmax(1)
    ground_truth, ground_false = generator(heatmaps)
    return (classifier_discrepancy(p1, p2)
            + entropy(p1)
            + shift_log(p2).mean()
            + cls_mdd(logits1, logits2, logits2, logits1)
            + reg_mdd(factors, factors * 2, factors * 3, factors * 0.5)
            + JointsKLLoss()(heatmaps_adv, ground_truth)
            + JointsMSELoss()(heatmaps_adv, ground_false)
            + disparity_kl(heatmaps, heatmaps_adv, mode="min")
            + disparity_mse(heatmaps, heatmaps_adv, mode="max"))


@pytest.mark.parametrize("device", DEVICES)
def test_fullgraph_step_matches_eager(device):
    g = torch.Generator().manual_seed(0)
    inputs = [torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g), torch.rand(8, 3, generator=g),
              torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)]
    inputs = [t.to(device) for t in inputs]
    eager_leaves = [t.clone().requires_grad_() for t in inputs]
    compiled_leaves = [t.clone().requires_grad_() for t in inputs]
    eager = every_loss(*eager_leaves)
    eager.backward()
    torch._dynamo.reset()
    compiled = torch.compile(every_loss, fullgraph=True)(*compiled_leaves)
    compiled.backward()
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    for e, c in zip(eager_leaves, compiled_leaves):
        torch.testing.assert_close(c.grad, e.grad, rtol=1e-5, atol=1e-6)
