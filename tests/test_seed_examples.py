"""The examples of the documentation page hal_ext mirrors (shared/seeds/hypothesis_adversarial.txt)
run unchanged with hal_ext imports, and agree with the pure-torch reference."""
import torch
import torch.nn.functional as F

from helpers import assert_close


def test_mdd_generic_example():
    from hal_ext.alignment.mdd import MarginDisparityDiscrepancy
    num_outputs = 2
    batch_size = 10
    loss = MarginDisparityDiscrepancy(margin=4., source_disparity=F.l1_loss, target_disparity=F.l1_loss)
    y_s, y_t = torch.randn(batch_size, num_outputs), torch.randn(batch_size, num_outputs)
    y_s_adv, y_t_adv = torch.randn(batch_size, num_outputs), torch.randn(batch_size, num_outputs)
    output = loss(y_s, y_s_adv, y_t, y_t_adv)
    expected = -4.0 * F.l1_loss(y_s, y_s_adv) + F.l1_loss(y_t, y_t_adv)
    assert_close(output, expected.double(), torch.float32, "generic MDD")


def test_classification_mdd_example():
    from hal_ext.alignment.mdd import ClassificationMarginDisparityDiscrepancy
    from hal_ext.reference import mdd as reference
    num_classes = 2
    batch_size = 10
    loss = ClassificationMarginDisparityDiscrepancy(margin=4.)
    y_s, y_t = torch.randn(batch_size, num_classes), torch.randn(batch_size, num_classes)
    y_s_adv, y_t_adv = torch.randn(batch_size, num_classes), torch.randn(batch_size, num_classes)
    output = loss(y_s, y_s_adv, y_t, y_t_adv)
    expected = reference.classification_mdd(y_s.double(), y_s_adv.double(), y_t.double(), y_t_adv.double(), margin=4.)
    assert_close(output, expected, torch.float32, "classification MDD")


def test_regression_mdd_example():
    from hal_ext.alignment.mdd import RegressionMarginDisparityDiscrepancy
    num_outputs = 2
    batch_size = 10
    loss = RegressionMarginDisparityDiscrepancy(margin=4., loss_function=F.l1_loss)
    y_s, y_t = torch.randn(batch_size, num_outputs), torch.randn(batch_size, num_outputs)
    y_s_adv, y_t_adv = torch.randn(batch_size, num_outputs), torch.randn(batch_size, num_outputs)
    output = loss(y_s, y_s_adv, y_t, y_t_adv)
    expected = -4.0 * F.l1_loss(y_s_adv, y_s) + F.l1_loss(y_t_adv, y_t)
    assert_close(output, expected.double(), torch.float32, "regression MDD")


def test_regda_example():
    from hal_ext.alignment.regda import PseudoLabelGenerator2d, RegressionDisparity
    from hal_ext.keypoint_detection import JointsKLLoss
    num_keypoints = 5
    batch_size = 10
    H = W = 64
    pseudo_label_generator = PseudoLabelGenerator2d(num_keypoints)
    loss = RegressionDisparity(pseudo_label_generator, JointsKLLoss())
    y_s, y_t = torch.randn(batch_size, num_keypoints, H, W), torch.randn(batch_size, num_keypoints, H, W)
    y_s_adv, y_t_adv = torch.randn(batch_size, num_keypoints, H, W), torch.randn(batch_size, num_keypoints, H, W)
    output = loss(y_s, y_s_adv, mode='min')
    assert torch.isfinite(output) and output.shape == ()
    output = loss(y_t, y_t_adv, mode='max')
    assert torch.isfinite(output) and output.shape == ()
    assert loss.ground_truth.shape == (batch_size, num_keypoints, H, W)
    assert loss.ground_false.shape == (batch_size, num_keypoints, H, W)


def test_image_classifier_step_example():
    from hal_ext.alignment.mdd import ImageClassifier
    backbone = torch.nn.Conv2d(3, 16, kernel_size=1)  # a feature-map backbone, pooled by the default pool_layer
    backbone.out_features = 16
    classifier = ImageClassifier(backbone, num_classes=3, bottleneck_dim=8, width=8)
    x = torch.randn(4, 3, 2, 2)
    outputs, outputs_adv = classifier(x)
    classifier.step()
    assert outputs.shape == outputs_adv.shape == (4, 3)
    classifier.eval()
    assert classifier(x).shape == (4, 3)
