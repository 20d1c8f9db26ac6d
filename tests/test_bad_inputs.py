"""SPEC "Bad input", one test per rule and public function/module: the exception type and a message that
names the argument. (An op not on this branch yet generates no rows; see op_catalog.load.)

Devices: a second device is `cuda` when present, else `meta` (tensors without storage), so the
device-mismatch rule is checked on every machine."""
import math

import pytest
import torch
import torch.nn.functional as F

import op_catalog as cat

OTHER_DEVICE = "cuda" if torch.cuda.is_available() else "meta"


def r(*shape, dtype=torch.float32, device="cpu"):
    return torch.rand(*shape, dtype=dtype, device=device)


def i64(*shape):
    return torch.ones(*shape, dtype=torch.int64)


def c64(*shape):
    return torch.ones(*shape, dtype=torch.complex64)


RULES = []  # (id, public name, thunk, exception, words); a word may be a tuple of alternatives


def rule(name, rid, error, words):
    def deco(thunk):
        if cat.load(name) is not None:
            RULES.append(pytest.param(name, thunk, error, words, id=f"{name}-{rid}"))
        return thunk
    return deco


# ---------------------------------------------------------------- MCD
rule("classifier_discrepancy", "shape", ValueError, ["predictions2", "(4, 3)", "(4, 2)"])(
    lambda f: f(r(4, 3), r(4, 2)))
rule("classifier_discrepancy", "int-dtype", TypeError, ["predictions1", "int64"])(lambda f: f(i64(4, 3), r(4, 3)))
rule("classifier_discrepancy", "complex-dtype", TypeError, ["predictions2", "complex"])(
    lambda f: f(r(4, 3), c64(4, 3)))
rule("classifier_discrepancy", "device", ValueError, ["predictions2", "device"])(
    lambda f: f(r(4, 3), r(4, 3, device=OTHER_DEVICE)))
rule("classifier_discrepancy", "not-a-tensor", TypeError, ["predictions2"])(lambda f: f(r(4, 3), [1.0]))

rule("entropy", "int-dtype", TypeError, ["predictions", "int64"])(lambda f: f(i64(4, 3)))
rule("entropy", "complex-dtype", TypeError, ["predictions", "complex"])(lambda f: f(c64(4, 3)))
rule("entropy", "rank-0", ValueError, ["predictions"])(lambda f: f(torch.tensor(0.5)))
rule("entropy", "not-a-tensor", TypeError, ["predictions"])(lambda f: f([[0.5, 0.5]]))

# ---------------------------------------------------------------- MDD
rule("shift_log", "int-dtype", TypeError, ["x", "int64"])(lambda f: f(i64(3)))
rule("shift_log", "offset-zero", ValueError, ["offset", "0"])(lambda f: f(r(3), offset=0.0))
rule("shift_log", "offset-negative", ValueError, ["offset", "-1"])(lambda f: f(r(3), offset=-1e-6))
rule("shift_log", "offset-nan", ValueError, ["offset", "nan"])(lambda f: f(r(3), offset=math.nan))

C_MDD = "ClassificationMarginDisparityDiscrepancy"
R_MDD = "RegressionMarginDisparityDiscrepancy"
G_MDD = "MarginDisparityDiscrepancy"
rule(C_MDD, "reduction", ValueError, ["reduction", "avg"])(
    lambda cls: cls(reduction="avg")(r(4, 3), r(4, 3), r(4, 3), r(4, 3)))
rule(C_MDD, "y_s_adv-shape", ValueError, ["y_s_adv", "(4, 3)", "(4, 5)"])(
    lambda cls: cls()(r(4, 3), r(4, 5), r(4, 3), r(4, 3)))
rule(C_MDD, "y_t_adv-shape", ValueError, ["y_t_adv", "(4, 3)", "(4, 2)"])(
    lambda cls: cls()(r(4, 3), r(4, 3), r(4, 3), r(4, 2)))
rule(C_MDD, "rank-1", ValueError, ["y_s", "(4,)"])(lambda cls: cls()(r(4), r(4), r(4), r(4)))
rule(C_MDD, "int-dtype", TypeError, ["y_s", "int64"])(lambda cls: cls()(i64(4, 3), r(4, 3), r(4, 3), r(4, 3)))
rule(C_MDD, "complex-dtype", TypeError, ["y_t_adv", "complex"])(
    lambda cls: cls()(r(4, 3), r(4, 3), r(4, 3), c64(4, 3)))
rule(C_MDD, "device", ValueError, [("y_s_adv", "device")])(
    lambda cls: cls()(r(4, 3), r(4, 3, device=OTHER_DEVICE), r(4, 3), r(4, 3)))
rule(C_MDD, "w_s-shape", ValueError, ["w_s", "(4,)", "(5,)"])(
    lambda cls: cls()(r(4, 3), r(4, 3), r(4, 3), r(4, 3), w_s=r(5)))
rule(C_MDD, "w_t-shape", ValueError, ["w_t", "(4,)", "(4, 3)"])(
    lambda cls: cls()(r(4, 3), r(4, 3), r(4, 3), r(4, 3), w_t=r(4, 3)))

rule(R_MDD, "reduction", ValueError, ["reduction", "avg"])(
    lambda cls: cls(reduction="avg")(r(4, 3), r(4, 3), r(4, 3), r(4, 3)))
rule(R_MDD, "y_s_adv-shape", ValueError, ["y_s_adv", "(4, 3)", "(4, 5)"])(
    lambda cls: cls()(r(4, 3), r(4, 5), r(4, 3), r(4, 3)))
rule(R_MDD, "y_t_adv-shape", ValueError, ["y_t_adv", "(4, 3)", "(4, 2)"])(
    lambda cls: cls(loss_function=F.mse_loss)(r(4, 3), r(4, 3), r(4, 3), r(4, 2)))
rule(R_MDD, "int-dtype", TypeError, ["y_t", "int64"])(lambda cls: cls()(r(4, 3), r(4, 3), i64(4, 3), r(4, 3)))
rule(R_MDD, "device", ValueError, [("y_t_adv", "device")])(
    lambda cls: cls()(r(4, 3), r(4, 3), r(4, 3), r(4, 3, device=OTHER_DEVICE)))
rule(R_MDD, "w_s-shape", ValueError, ["w_s", "(4, 3)", "(4, 2)"])(
    lambda cls: cls()(r(4, 3), r(4, 3), r(4, 3), r(4, 3), w_s=r(4, 2)))

rule(G_MDD, "reduction", ValueError, ["reduction", "avg"])(
    lambda cls: cls(lambda y, a: (y - a).abs(), lambda y, a: (y - a).abs(), reduction="avg")(
        r(4, 3), r(4, 3), r(4, 3), r(4, 3)))

# ---------------------------------------------------------------- RegDA
PLG, FPLG, RD = "PseudoLabelGenerator2d", "FastPseudoLabelGenerator2d", "RegressionDisparity"
rule(PLG, "K", ValueError, [("K", "num_keypoints"), "5", "4"])(lambda cls: cls(5, 8, 8)(r(2, 4, 8, 8)))
rule(PLG, "H", ValueError, ["height", "8", "9"])(lambda cls: cls(4, 8, 8)(r(2, 4, 9, 8)))
rule(PLG, "W", ValueError, ["width", "8", "7"])(lambda cls: cls(4, 8, 8)(r(2, 4, 8, 7)))
rule(PLG, "rank-3", ValueError, ["(4, 8, 8)"])(lambda cls: cls(4, 8, 8)(r(4, 8, 8)))
rule(PLG, "int-dtype", TypeError, ["int64"])(lambda cls: cls(4, 8, 8)(i64(2, 4, 8, 8)))
rule(PLG, "sigma-zero", ValueError, ["sigma", "0"])(lambda cls: cls(4, 8, 8, sigma=0))
rule(PLG, "sigma-negative", ValueError, ["sigma", "-2"])(lambda cls: cls(4, 8, 8, sigma=-2))
rule(FPLG, "sigma-zero", ValueError, ["sigma", "0"])(lambda cls: cls(sigma=0))
rule(FPLG, "sigma-negative", ValueError, ["sigma", "-1.5"])(lambda cls: cls(sigma=-1.5))
rule(FPLG, "rank-5", ValueError, ["(1, 2, 4, 8, 8)"])(lambda cls: cls()(r(1, 2, 4, 8, 8)))
rule(FPLG, "int-dtype", TypeError, ["int64"])(lambda cls: cls()(i64(2, 4, 8, 8)))


def _disparity(fast=False, kl=False):
    gen = cat.load(FPLG)() if fast else cat.load(PLG)(4, 8, 8)
    return cat.load(RD)(gen, cat.load("JointsKLLoss" if kl else "JointsMSELoss")())


if cat.load(RD) is not None and cat.load(PLG) is not None and cat.load("JointsMSELoss") is not None:
    rule(RD, "mode", ValueError, ["mode", "avg"])(lambda cls: _disparity()(r(2, 4, 8, 8), r(2, 4, 8, 8), mode="avg"))
    rule(RD, "y_adv-shape", ValueError, ["y_adv", "(2, 4, 8, 8)", "(2, 4, 8, 9)"])(
        lambda cls: _disparity(fast=True)(r(2, 4, 8, 8), r(2, 4, 8, 9)))
    rule(RD, "K", ValueError, [("K", "num_keypoints")])(lambda cls: _disparity()(r(2, 3, 8, 8), r(2, 3, 8, 8)))
    rule(RD, "H", ValueError, ["height"])(lambda cls: _disparity(kl=True)(r(2, 4, 9, 8), r(2, 4, 9, 8)))
    rule(RD, "weight-shape", ValueError, [("weight", "target_weight"), "(2, 4)", "(2, 5)"])(
        lambda cls: _disparity()(r(2, 4, 8, 8), r(2, 4, 8, 8), r(2, 5)))
    rule(RD, "int-dtype", TypeError, ["y_adv", "int64"])(lambda cls: _disparity()(r(2, 4, 8, 8), i64(2, 4, 8, 8)))
    rule(RD, "device", ValueError, [("y_adv", "device")])(
        lambda cls: _disparity(fast=True)(r(2, 4, 8, 8), r(2, 4, 8, 8, device=OTHER_DEVICE)))

# ---------------------------------------------------------------- keypoint losses
for loss in ("JointsMSELoss", "JointsKLLoss"):
    rule(loss, "reduction", ValueError, ["reduction", "avg"])(
        lambda cls: cls(reduction="avg")(r(2, 4, 8, 8), r(2, 4, 8, 8)))
    rule(loss, "target-shape", ValueError, ["target", "(2, 4, 8, 8)", "(2, 4, 8, 7)"])(
        lambda cls: cls()(r(2, 4, 8, 8), r(2, 4, 8, 7)))
    rule(loss, "rank-3", ValueError, ["output", "(4, 8, 8)"])(lambda cls: cls()(r(4, 8, 8), r(4, 8, 8)))
    rule(loss, "target_weight-shape", ValueError, ["target_weight", "(2, 4)", "(2, 5)"])(
        lambda cls: cls()(r(2, 4, 8, 8), r(2, 4, 8, 8), r(2, 5)))
    rule(loss, "int-dtype", TypeError, ["output", "int64"])(lambda cls: cls()(i64(2, 4, 8, 8), r(2, 4, 8, 8)))
    rule(loss, "complex-dtype", TypeError, ["target", "complex"])(lambda cls: cls()(r(2, 4, 8, 8), c64(2, 4, 8, 8)))
    rule(loss, "device", ValueError, [("target", "device")])(
        lambda cls: cls()(r(2, 4, 8, 8), r(2, 4, 8, 8, device=OTHER_DEVICE)))


@pytest.mark.parametrize("name, thunk, error, words", RULES)
def test_bad_input_is_rejected(name, thunk, error, words):
    with pytest.raises(error) as info:
        thunk(cat.load(name))
    message = str(info.value)
    for word in words:
        alternatives = word if isinstance(word, tuple) else (word,)
        # a shape may be printed as a tuple (4, 3) or a list [4, 3]
        alternatives += tuple(a.replace(",)", ")").replace("(", "[").replace(")", "]") for a in alternatives)
        assert any(a in message for a in alternatives), f"{name}: message {message!r} lacks {word!r}"


def test_rules_cover_every_available_op():
    covered = {p.values[0] for p in RULES}
    assert covered == set(cat.available()), f"ops without bad-input rules: {set(cat.available()) - covered}"
