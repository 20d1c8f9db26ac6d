"""TEMPORARY pure-torch stand-ins (tllib semantics, SPEC.md) for hal_ext names that have not landed on
this branch yet. Delete once main has them."""
import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from hal_ext.modules.gl import WarmStartGradientLayer
from hal_ext.modules.grl import WarmStartGradientReverseLayer


def entropy(p):
    return -torch.mean(torch.log(torch.mean(p, 0) + 1e-6))


def shift_log(x, offset=1e-6):
    return torch.log(torch.clamp(x + offset, max=1.0))


class ClassificationMarginDisparityDiscrepancy(nn.Module):
    def __init__(self, margin=4, reduction="mean"):
        super().__init__()
        self.margin = margin
        self.reduction = reduction

    def forward(self, y_s, y_s_adv, y_t, y_t_adv, w_s=None, w_t=None):
        source = -self.margin * F.cross_entropy(y_s_adv, y_s.argmax(1), reduction="none")
        target = -F.nll_loss(shift_log(1. - F.softmax(y_t_adv, dim=1)), y_t.argmax(1), reduction="none")
        if w_s is not None:
            source = source * w_s
        if w_t is not None:
            target = target * w_t
        loss = source + target
        return loss.mean() if self.reduction == "mean" else loss.sum() if self.reduction == "sum" else loss


class ImageClassifier(nn.Module):
    def __init__(self, backbone, num_classes, bottleneck_dim=1024, width=1024, grl=None, finetune=True,
                 pool_layer=None):
        super().__init__()
        if pool_layer is None:
            pool_layer = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.backbone = backbone
        self.num_classes = num_classes
        self.bottleneck = nn.Sequential(pool_layer, nn.Linear(backbone.out_features, bottleneck_dim),
                                        nn.BatchNorm1d(bottleneck_dim), nn.ReLU(), nn.Dropout(0.5))
        self.bottleneck[1].weight.data.normal_(0, 0.005)
        self.bottleneck[1].bias.data.fill_(0.1)

        def head():
            h = nn.Sequential(nn.Linear(bottleneck_dim, width), nn.ReLU(), nn.Dropout(0.5),
                              nn.Linear(width, num_classes))
            return h
        self.head = head()
        self.adv_head = head()
        for dep in range(2):
            self.head[dep * 3].weight.data.normal_(0, 0.01)
            self.head[dep * 3].bias.data.fill_(0.0)
            self.adv_head[dep * 3].weight.data.normal_(0, 0.01)
            self.adv_head[dep * 3].bias.data.fill_(0.0)
        self.finetune = finetune
        self.grl_layer = WarmStartGradientReverseLayer(1.0, 0.0, 0.1, 1000, False) if grl is None else grl

    def forward(self, x):
        f = self.bottleneck(self.backbone(x))
        out = self.head(f)
        out_adv = self.adv_head(self.grl_layer(f))
        return (out, out_adv) if self.training else out

    def step(self):
        self.grl_layer.step()

    def get_parameters(self, base_lr=1.0):
        return [
            {"params": self.backbone.parameters(), "lr": 0.1 * base_lr if self.finetune else base_lr},
            {"params": self.bottleneck.parameters(), "lr": base_lr},
            {"params": self.head.parameters(), "lr": base_lr},
            {"params": self.adv_head.parameters(), "lr": base_lr},
        ]


class PseudoLabelGenerator2d(nn.Module):
    def __init__(self, num_keypoints, height=64, width=64, sigma=2):
        super().__init__()
        self.height, self.width, self.sigma = height, width, sigma

    def forward(self, y):
        y = y.detach()
        B, K, H, W = y.shape
        m, idx = y.flatten(2).max(-1)
        x = (idx % W).float()
        yy = torch.div(idx, W, rounding_mode="floor").float()
        ok = m > 0
        x = torch.where(ok, x, torch.zeros_like(x))
        yy = torch.where(ok, yy, torch.zeros_like(yy))
        t = self.sigma * 3
        size = 2 * t + 1
        c = math.floor(size / 2)

        def axis(mu, n):
            ul = torch.trunc(mu - t)
            br = torch.trunc(mu + t + 1)
            X = torch.arange(n, dtype=torch.float32, device=y.device)
            inside = (X >= ul[..., None]) & (X < br[..., None])
            d = (X - ul[..., None]) - c
            return d, inside
        dx, ix = axis(x, W)
        dy, iy = axis(yy, H)
        g = torch.exp(-(dx[..., None, :] ** 2 + dy[..., :, None] ** 2) / (2 * self.sigma ** 2))
        gt = torch.where(iy[..., :, None] & ix[..., None, :], g, torch.zeros_like(g))
        gf = (gt.sum(1, keepdim=True) - gt).clamp(0, 1)
        return gt, gf


class RegressionDisparity(nn.Module):
    def __init__(self, pseudo_label_generator, criterion):
        super().__init__()
        self.criterion = criterion
        self.pseudo_label_generator = pseudo_label_generator

    def forward(self, y, y_adv, weight=None, mode="min"):
        assert mode in ("min", "max")
        gt, gf = self.pseudo_label_generator(y.detach())
        self.ground_truth, self.ground_false = gt, gf
        return self.criterion(y_adv, gt if mode == "min" else gf, weight)


class JointsKLLoss(nn.Module):
    def __init__(self, reduction="mean", epsilon=0.):
        super().__init__()
        self.reduction, self.epsilon = reduction, epsilon

    def forward(self, output, target, target_weight=None):
        B, K = output.shape[:2]
        q = output.reshape(B, K, -1).log_softmax(-1)
        t = target.reshape(B, K, -1) + self.epsilon
        t = t / t.sum(-1, keepdim=True)
        loss = F.kl_div(q, t, reduction="none").sum(-1)
        if target_weight is not None:
            loss = loss * target_weight.view(B, K)
        return loss.mean() if self.reduction == "mean" else loss


class JointsMSELoss(nn.Module):
    def __init__(self, reduction="mean"):
        super().__init__()
        self.reduction = reduction

    def forward(self, output, target, target_weight=None):
        B, K = output.shape[:2]
        loss = 0.5 * (output.reshape(B, K, -1) - target.reshape(B, K, -1)) ** 2
        if target_weight is not None:
            loss = loss * target_weight.view(B, K, 1)
        return loss.mean() if self.reduction == "mean" else loss.mean(-1)


class PoseResNet2d(nn.Module):
    def __init__(self, backbone, upsampling, feature_dim, num_keypoints, gl=None, finetune=True,
                 num_head_layers=2):
        super().__init__()
        self.backbone = backbone
        self.upsampling = upsampling
        self.head = self._make_head(num_head_layers, feature_dim, num_keypoints)
        self.head_adv = self._make_head(num_head_layers, feature_dim, num_keypoints)
        self.finetune = finetune
        self.gl_layer = WarmStartGradientLayer(1.0, 0.0, 0.1, 1000, False) if gl is None else gl

    @staticmethod
    def _make_head(num_layers, channel_dim, num_keypoints):
        layers = []
        for _ in range(num_layers - 1):
            layers += [nn.Conv2d(channel_dim, channel_dim, 3, 1, 1), nn.BatchNorm2d(channel_dim), nn.ReLU()]
        layers.append(nn.Conv2d(channel_dim, num_keypoints, 1, 1, 0))
        layers = nn.Sequential(*layers)
        for m in layers.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.001)
                nn.init.constant_(m.bias, 0)
        return layers

    def forward(self, x):
        f = self.upsampling(self.backbone(x))
        y = self.head(f)
        y_adv = self.head_adv(self.gl_layer(f))
        return (y, y_adv) if self.training else y

    def get_parameters(self, lr=1.):
        return [
            {"params": self.backbone.parameters(), "lr": 0.1 * lr if self.finetune else lr},
            {"params": self.upsampling.parameters(), "lr": lr},
            {"params": self.head.parameters(), "lr": lr},
            {"params": self.head_adv.parameters(), "lr": lr},
        ]

    def step(self):
        self.gl_layer.step()
