"""MDD losses, as tllib.alignment.mdd computes them (pure torch, in the input dtype).

They are the test oracle (on float64 copies), the benchmark baseline and the fallback when the native
library is missing. No argument checks here: the front ends in ``hal_ext.ops`` validate first."""
import torch
import torch.nn.functional as F


def shift_log(x: torch.Tensor, offset: float = 1e-6) -> torch.Tensor:
    """tllib's ``log(clamp(x + offset, max=1))`` with the gradient torch 2.14's clamp gives it, on every torch:
    ``g / (x + offset)`` where ``x + offset < 1``, else 0 (0 at the bound itself, and at NaN). Older torch
    releases gave the bound the gradient ``g``; the clamped branch is detached so none of them does."""
    v = x + offset
    return torch.log(torch.where(v < 1.0, v, v.detach().clamp(max=1.0)))


def classification_source_disparity(y: torch.Tensor, y_adv: torch.Tensor) -> torch.Tensor:
    """Cross entropy of ``y_adv`` against the first argmax of ``y`` over dim 1, per sample."""
    _, prediction = y.max(dim=1)
    return F.cross_entropy(y_adv, prediction, reduction='none')


def classification_target_disparity(y: torch.Tensor, y_adv: torch.Tensor) -> torch.Tensor:
    """``shift_log(1 - softmax(y_adv)[h])`` with ``h`` the first argmax of ``y`` over dim 1, per sample."""
    _, prediction = y.max(dim=1)
    return -F.nll_loss(shift_log(1. - F.softmax(y_adv, dim=1)), prediction, reduction='none')


def regression_disparity(loss_function):
    """``L(y, y_adv) = loss_function(y_adv, y.detach(), reduction='none')``."""
    def disparity(y: torch.Tensor, y_adv: torch.Tensor) -> torch.Tensor:
        return loss_function(y_adv, y.detach(), reduction='none')
    return disparity


def margin_disparity_discrepancy(source_disparity, target_disparity, y_s, y_s_adv, y_t, y_t_adv, w_s=None,
                                 w_t=None, margin=4, reduction='mean'):
    """``-margin * L_s * w_s + L_t * w_t``, then 'mean' | 'sum' (anything else: no reduction, as tllib)."""
    source_loss = -margin * source_disparity(y_s, y_s_adv)
    target_loss = target_disparity(y_t, y_t_adv)
    if w_s is None:
        w_s = torch.ones_like(source_loss)
    source_loss = source_loss * w_s
    if w_t is None:
        w_t = torch.ones_like(target_loss)
    target_loss = target_loss * w_t
    loss = source_loss + target_loss
    if reduction == 'mean':
        loss = loss.mean()
    elif reduction == 'sum':
        loss = loss.sum()
    return loss


def classification_mdd(y_s, y_s_adv, y_t, y_t_adv, w_s=None, w_t=None, margin=4., reduction='mean'):
    return margin_disparity_discrepancy(classification_source_disparity, classification_target_disparity, y_s,
                                        y_s_adv, y_t, y_t_adv, w_s, w_t, margin, reduction)


def regression_mdd(y_s, y_s_adv, y_t, y_t_adv, w_s=None, w_t=None, margin=1., loss_function=F.l1_loss,
                   reduction='mean'):
    disparity = regression_disparity(loss_function)
    return margin_disparity_discrepancy(disparity, disparity, y_s, y_s_adv, y_t, y_t_adv, w_s, w_t, margin,
                                        reduction)
