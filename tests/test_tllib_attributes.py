"""tllib's public attributes that drop-in code may read (SPEC "Public attributes"): present, of tllib's
type, with tllib's values; the 64 MiB pseudo-label table is built only when first read."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from hal_ext.alignment.mdd import (ClassificationMarginDisparityDiscrepancy, MarginDisparityDiscrepancy,
                                   RegressionMarginDisparityDiscrepancy)
from hal_ext.alignment.regda import PseudoLabelGenerator2d, RegressionDisparity
from hal_ext.keypoint_detection import JointsKLLoss, JointsMSELoss


def truncated_gaussian_oracle(height, width, sigma, x, y):
    """SPEC's ground-truth map of a peak at column x, row y, pixel by pixel (float64 exponent, float32 result)."""
    t = 3 * sigma
    c = math.floor((2 * t + 1) / 2)
    ul_x, br_x = int(x - t), int(x + t + 1)
    ul_y, br_y = int(y - t), int(y + t + 1)
    out = np.zeros((height, width), dtype=np.float32)
    for Y in range(max(0, ul_y), min(br_y, height)):
        for X in range(max(0, ul_x), min(br_x, width)):
            d2 = ((X - ul_x) - c) ** 2 + ((Y - ul_y) - c) ** 2
            out[Y, X] = math.exp(-d2 / (2 * sigma ** 2))
    return out


def one_peak(height, width, x, y, num_keypoints=1):
    maps = torch.zeros(1, num_keypoints, height, width)
    maps[0, :, y, x] = 1.0
    return maps


@pytest.mark.parametrize("height,width,sigma", [(6, 7, 1.5), (9, 5, 1), (8, 8, 2)])
def test_heatmaps_table_equals_spec_at_every_peak(height, width, sigma):
    generator = PseudoLabelGenerator2d(num_keypoints=3, height=height, width=width, sigma=sigma)
    table = generator.heatmaps
    assert isinstance(table, np.ndarray) and table.dtype == np.float32
    assert table.shape == (width, height, height, width)
    for x in range(width):
        for y in range(height):
            expected = truncated_gaussian_oracle(height, width, sigma, x, y)
            np.testing.assert_array_equal(table[x][y] != 0, expected != 0, err_msg=f"peak x={x} y={y}")
            np.testing.assert_allclose(table[x][y], expected, rtol=1e-6, atol=0, err_msg=f"peak x={x} y={y}")


def test_heatmaps_table_is_built_lazily_and_matches_the_generator():
    generator = PseudoLabelGenerator2d(num_keypoints=21)  # tllib's default 64x64: a 64 MiB table
    maps = torch.randn(2, 21, 64, 64)
    generator(maps)
    assert generator.__dict__["_heatmaps"] is None, "the forward must not build tllib's table"
    table = generator.heatmaps
    assert table.shape == (64, 64, 64, 64) and table.dtype == np.float32
    assert generator.heatmaps is table, "built once"
    for x, y in [(0, 0), (63, 0), (0, 63), (31, 17), (63, 63), (2, 61)]:
        ground_truth, _ = generator(one_peak(64, 64, x, y, num_keypoints=21))
        got = ground_truth[0, 0].numpy()
        np.testing.assert_array_equal(table[x][y] != 0, got != 0, err_msg=f"peak x={x} y={y}")
        np.testing.assert_allclose(table[x][y], got, rtol=1e-6, atol=0, err_msg=f"peak x={x} y={y}")


def test_pseudo_label_generator_plain_attributes():
    generator = PseudoLabelGenerator2d(num_keypoints=4, height=32, width=48, sigma=3)
    assert (generator.height, generator.width, generator.sigma) == (32, 48, 3)
    false_matrix = generator.false_matrix
    assert isinstance(false_matrix, np.ndarray) and false_matrix.dtype == np.float32
    np.testing.assert_array_equal(false_matrix, 1.0 - np.eye(4))
    # tllib's ground_false is ground_truth times false_matrix over the keypoints, clamped to [0, 1]
    ground_truth, ground_false = generator(torch.randn(2, 4, 32, 48))
    product = np.einsum("bkp,kj->bjp", ground_truth.reshape(2, 4, -1).double().numpy(), false_matrix.astype(np.float64))
    np.testing.assert_allclose(ground_false.reshape(2, 4, -1).numpy(), product.clip(0, 1), rtol=1e-6, atol=1e-7)


def test_keypoint_losses_criterion_reduction_epsilon():
    mse = JointsMSELoss(reduction='none')
    assert type(mse.criterion) is nn.MSELoss and mse.criterion.reduction == 'none'
    assert mse.reduction == 'none'
    kl = JointsKLLoss(epsilon=1e-7)
    assert type(kl.criterion) is nn.KLDivLoss and kl.criterion.reduction == 'none'
    assert kl.reduction == 'mean' and kl.epsilon == 1e-7
    assert not list(mse.parameters()) and not list(kl.parameters()), "state dicts stay tllib's"


def test_regression_disparity_attributes():
    generator, criterion = PseudoLabelGenerator2d(num_keypoints=3, height=16, width=16), JointsKLLoss()
    disparity = RegressionDisparity(generator, criterion)
    assert disparity.pseudo_label_generator is generator and disparity.criterion is criterion
    y, y_adv = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)
    disparity(y, y_adv, mode='max')
    expected_truth, expected_false = generator(y)
    torch.testing.assert_close(disparity.ground_truth, expected_truth, rtol=0, atol=0)
    torch.testing.assert_close(disparity.ground_false, expected_false, rtol=0, atol=0)


def test_mdd_attributes_compute_tllibs_disparities():
    torch.manual_seed(0)
    y, y_adv = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    mdd = ClassificationMarginDisparityDiscrepancy(margin=2., reduction='sum')
    assert mdd.margin == 2. and mdd.reduction == 'sum'
    h = y.argmax(dim=1)
    p_h = F.softmax(y_adv, dim=1).gather(1, h[:, None]).squeeze(1)
    torch.testing.assert_close(mdd.source_disparity(y, y_adv), F.cross_entropy(y_adv, h, reduction='none'))
    torch.testing.assert_close(mdd.target_disparity(y, y_adv), torch.log(torch.clamp(1 - p_h + 1e-6, max=1.0)))

    regression = RegressionMarginDisparityDiscrepancy(margin=1.5, loss_function=F.mse_loss)
    assert regression.margin == 1.5 and regression.reduction == 'mean'
    for disparity in (regression.source_disparity, regression.target_disparity):
        torch.testing.assert_close(disparity(y, y_adv), (y_adv - y) ** 2)

    general = MarginDisparityDiscrepancy(F.l1_loss, F.mse_loss, margin=3., reduction='none')
    assert general.source_disparity is F.l1_loss and general.target_disparity is F.mse_loss
    assert general.margin == 3. and general.reduction == 'none'
