"""RegDA (Regressive Domain Adaptation, Jiang et al. 2021) on synthetic articulated arms, offline, on a CPU.

A small version of tllib's examples/domain_adaptation/keypoint_detection/regda.py:
  0. pretrain a pose network (backbone, upsampling, 1x1 head) on the source with JointsKLLoss;
     this is the source-only model;
  1. load its backbone and upsampling into a PoseResNet2d (main head and adversarial head behind a
     warm-start gradient layer), then repeat tllib's three steps:
     A. everything minimises the source loss + margin * RegressionDisparity(mode='min') on the source;
     B. the adversarial head maximises the disparity on the target (mode='max': towards the
        ground-false heatmaps of PseudoLabelGenerator2d);
     C. the feature extractor minimises it (mode='min': towards the ground-truth pseudo labels).
Data: an arm of 4 keypoints (shoulder, elbow, wrist, fingertip) drawn as three limbs of decreasing
thickness from a round base. Source: thin white limbs on black; target: thicker coloured limbs on a
random colour texture. Accuracy is PCK: the share of keypoints whose heatmap argmax lies within
0.1 x the heatmap size of the true one (tllib's keypoint accuracy with thr=1.0).

    python examples/regda.py                     # hal_ext losses, full run, PNG in runs/examples/
    python examples/regda.py --losses reference  # the pure-torch tllib-semantics losses
    python examples/regda.py --quick             # a few iterations (CI)
"""
import math
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim import SGD
from torch.optim.lr_scheduler import LambdaLR

import _common as C
import _losses
from hal_ext.alignment.regda import PoseResNet2d
from hal_ext.modules.gl import WarmStartGradientLayer

KEYPOINTS = ("shoulder", "elbow", "wrist", "fingertip")


# ----------------------------------------------------------------------------------------- data
def _segment_distance(px, py, ax, ay, bx, by):
    """Distance of pixel centres (1, H, W) to segments a-b given per sample (n, 1, 1)."""
    vx, vy = bx - ax, by - ay
    t = (((px - ax) * vx + (py - ay) * vy) / (vx * vx + vy * vy + 1e-9)).clamp(0, 1)
    return torch.sqrt((px - ax - t * vx) ** 2 + (py - ay - t * vy) ** 2)


def make_arms(n: int, size: int, generator: torch.Generator):
    """Random arm poses: keypoints (n, 4, 2) in pixels (x, y), inside the image."""
    lengths = torch.tensor([8.0, 7.0, 5.0]) * size / 32
    lengths = lengths * (0.85 + 0.3 * torch.rand(n, 1, generator=generator))
    a = torch.rand(n, generator=generator) * 2 * math.pi
    bends = (torch.rand(n, 2, generator=generator) - 0.5) * 2 * math.radians(100)
    angles = torch.stack([a, a + bends[:, 0], a + bends[:, 0] + bends[:, 1]], 1)
    steps = torch.stack([torch.cos(angles), torch.sin(angles)], -1) * lengths.unsqueeze(-1)
    kp = torch.cat([torch.zeros(n, 1, 2), steps.cumsum(1)], 1)
    # translate the arm to a random place where it fits, 3 px from the border
    lo, hi = kp.min(1).values, kp.max(1).values
    room = (size - 6) - (hi - lo)
    offset = 3 - lo + room.clamp(min=0) * torch.rand(n, 2, generator=generator)
    return kp + offset.unsqueeze(1)


def render(kp: torch.Tensor, size: int, thickness: float):
    """Soft mask (n, H, W) of the arm: a base disk and three limbs of decreasing width."""
    n = kp.shape[0]
    c = torch.arange(size, dtype=torch.get_default_dtype()) + 0.5
    px, py = c.view(1, 1, size), c.view(1, size, 1)
    k = [(kp[:, j, 0].view(n, 1, 1), kp[:, j, 1].view(n, 1, 1)) for j in range(4)]
    d = torch.sqrt((px - k[0][0]) ** 2 + (py - k[0][1]) ** 2) - 2.5 * thickness
    for j, w in enumerate((1.3, 0.9, 0.55)):
        dj = _segment_distance(px, py, *k[j], *k[j + 1]) - w * thickness
        d = torch.minimum(d, dj)
    return torch.sigmoid(-3.0 * d)


def heatmaps(kp: torch.Tensor, size: int, heatmap_size: int, sigma: float):
    """tllib-style label heatmaps: a Gaussian at the rounded keypoint, cut at 3 sigma."""
    stride = size / heatmap_size
    mu = (kp / stride + 0.5).floor()  # (n, K, 2)
    c = torch.arange(heatmap_size, dtype=torch.get_default_dtype())
    dx = c.view(1, 1, 1, -1) - mu[..., 0, None, None]
    dy = c.view(1, 1, -1, 1) - mu[..., 1, None, None]
    g = torch.exp(-(dx ** 2 + dy ** 2) / (2 * sigma ** 2))
    return torch.where((dx.abs() <= 3 * sigma) & (dy.abs() <= 3 * sigma), g, torch.zeros_like(g))


def make_domain(n, args, target: bool, generator):
    kp = make_arms(n, args.image_size, generator)
    s = args.image_size
    if target:
        mask = render(kp, s, thickness=1.5)
        colour = 0.6 + 0.4 * torch.rand(n, 3, 1, 1, generator=generator)
        texture = F.interpolate(0.5 * torch.rand(n, 3, 4, 4, generator=generator), size=(s, s), mode="bilinear",
                                align_corners=False)
        x = mask.unsqueeze(1) * colour + (1 - mask.unsqueeze(1)) * texture
    else:
        mask = render(kp, s, thickness=1.0)
        x = mask.unsqueeze(1).expand(n, 3, s, s)
    x = x + 0.05 * torch.randn(n, 3, s, s, generator=generator)
    label = heatmaps(kp, s, args.heatmap_size, args.sigma)
    weight = torch.ones(n, len(KEYPOINTS))
    return (x.clamp(0, 1) - 0.5) / 0.5, label, weight, kp


def make_task(args):
    g = torch.Generator().manual_seed(3000 + args.seed)
    n = 64 if args.quick else args.n
    source = make_domain(n, args, False, g)
    target = make_domain(n, args, True, g)
    test = make_domain(n if args.quick else 1000, args, True, g)
    source_test = make_domain(n if args.quick else 500, args, False, g)
    return source, target, test, source_test


# ---------------------------------------------------------------------------------------- model
class Backbone(nn.Module):
    """A small CNN, stride 4 (tllib: a ResNet, stride 32)."""

    def __init__(self, width: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, width // 2, 3, padding=1), nn.BatchNorm2d(width // 2), nn.ReLU(),
            nn.Conv2d(width // 2, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU())
        self.out_features = 2 * width

    def forward(self, x):
        return self.net(x)


def upsampling(in_channels: int, feature_dim: int):
    """tllib's Upsampling: transposed convolutions (here one, stride 2) with BatchNorm and ReLU."""
    return nn.Sequential(nn.ConvTranspose2d(in_channels, feature_dim, 4, stride=2, padding=1, bias=False),
                         nn.BatchNorm2d(feature_dim), nn.ReLU())


class PoseNet(nn.Module):
    """The source-only pose network (tllib's PoseResNet: backbone, upsampling, 1x1 conv head)."""

    def __init__(self, backbone, upsampling, feature_dim, num_keypoints):
        super().__init__()
        self.backbone = backbone
        self.upsampling = upsampling
        self.head = nn.Conv2d(feature_dim, num_keypoints, 1)
        nn.init.normal_(self.head.weight, std=0.001)
        nn.init.constant_(self.head.bias, 0)

    def forward(self, x):
        return self.head(self.upsampling(self.backbone(x)))

    def get_parameters(self, lr=1.):
        return [{"params": self.backbone.parameters(), "lr": 0.1 * lr},
                {"params": self.upsampling.parameters(), "lr": lr},
                {"params": self.head.parameters(), "lr": lr}]


# --------------------------------------------------------------------------------------- metric
def pck(output: torch.Tensor, label: torch.Tensor, thr: float) -> float:
    """tllib's keypoint accuracy: argmax of prediction vs argmax of label, distances normalised by
    heatmap_size / 10, the share below ``thr``."""
    B, K, H, W = output.shape

    def argmax_xy(h):
        idx = h.flatten(2).argmax(-1)
        return torch.stack([idx % W, idx // W], -1).float()
    norm = torch.tensor([W, H], dtype=torch.float32) / 10
    dist = ((argmax_xy(output) - argmax_xy(label)) / norm).norm(dim=-1)
    return 100.0 * (dist < thr).float().mean().item()


@torch.no_grad()
def evaluate(model, data, thr):
    x, label, _, _ = data
    model.eval()
    y = torch.cat([model(chunk) for chunk in x.split(250)])
    return pck(y, label, thr), y


# ------------------------------------------------------------------------------------- training
def pretrain(args, losses, data):
    C.seed_everything(args.seed)
    (xs, ls, ws, _) = data[0]
    model = PoseNet(Backbone(args.width), upsampling(2 * args.width, args.feature_dim), args.feature_dim,
                    len(KEYPOINTS))
    criterion = losses.JointsKLLoss()
    optimizer = SGD(model.get_parameters(lr=args.lr), momentum=args.momentum, weight_decay=args.wd, nesterov=True)
    lr_scheduler = LambdaLR(optimizer, C.lr_decay(1.0, args.lr_gamma, args.lr_decay))
    source_iter = C.ForeverDataIterator((xs, ls, ws), args.batch_size, seed=args.seed)
    history = {"loss": []}
    bar = C.ProgressBar(args.pretrain_iters, "pretrain", args.print_freq)
    model.train()
    for i in range(args.pretrain_iters):
        x_s, label_s, weight_s = next(source_iter)
        optimizer.zero_grad()
        loss_s = criterion(model(x_s), label_s, weight_s)
        loss_s.backward()
        optimizer.step()
        lr_scheduler.step()
        history["loss"].append(loss_s.item())
        bar.update(i, loss=loss_s.item())
    return model, history


def train(args, losses, data, pretrained: PoseNet):
    C.seed_everything(args.seed + 1)
    (xs, ls, ws, _), (xt, lt, wt, _) = data[:2]
    backbone = Backbone(args.width)
    up = upsampling(2 * args.width, args.feature_dim)
    gl = WarmStartGradientLayer(alpha=1.0, lo=0.0, hi=args.gl_hi, max_iters=args.gl_iters or args.iters,
                                auto_step=False)
    model = PoseResNet2d(backbone, up, args.feature_dim, len(KEYPOINTS), gl=gl,
                                 num_head_layers=args.num_head_layers, finetune=True)
    # as tllib: load the pretrained weights whose names exist in the RegDA model
    model_dict = model.state_dict()
    model.load_state_dict({k: v for k, v in pretrained.state_dict().items()
                           if k in model_dict and v.shape == model_dict[k].shape}, strict=False)

    criterion = losses.JointsKLLoss()
    pseudo_label_generator = losses.PseudoLabelGenerator2d(len(KEYPOINTS), args.heatmap_size, args.heatmap_size,
                                                           sigma=args.sigma)
    regression_disparity = losses.RegressionDisparity(pseudo_label_generator, losses.JointsKLLoss(epsilon=1e-7))

    optimizer_f = SGD([{"params": backbone.parameters(), "lr": 0.1}, {"params": up.parameters(), "lr": 0.1}],
                      lr=0.1, momentum=args.momentum, weight_decay=args.wd, nesterov=True)
    optimizer_h = SGD(model.head.parameters(), lr=1., momentum=args.momentum, weight_decay=args.wd, nesterov=True)
    optimizer_h_adv = SGD(model.head_adv.parameters(), lr=1., momentum=args.momentum, weight_decay=args.wd,
                          nesterov=True)
    decay = C.lr_decay(args.lr, args.lr_gamma, args.lr_decay)
    schedulers = [LambdaLR(o, decay) for o in (optimizer_f, optimizer_h, optimizer_h_adv)]

    source_iter = C.ForeverDataIterator((xs, ls, ws), args.batch_size, seed=args.seed)
    target_iter = C.ForeverDataIterator((xt, lt, wt), args.batch_size, seed=args.seed + 1)
    history = {"loss_s": [], "loss_ground_false": [], "loss_ground_truth": []}
    bar = C.ProgressBar(args.iters, "RegDA   ", args.print_freq)
    timer = C.IterTimer()
    model.train()
    for i in range(args.iters):
        x_s, label_s, weight_s = next(source_iter)
        x_t, _, weight_t = next(target_iter)  # target labels are never used
        with timer:
            # Step A: all networks minimise the source loss
            optimizer_f.zero_grad()
            optimizer_h.zero_grad()
            optimizer_h_adv.zero_grad()
            y_s, y_s_adv = model(x_s)
            loss_s = criterion(y_s, label_s, weight_s) + \
                args.margin * args.trade_off * regression_disparity(y_s, y_s_adv, weight_s, mode="min")
            loss_s.backward()
            optimizer_f.step()
            optimizer_h.step()
            optimizer_h_adv.step()
            # Step B: the adversarial regressor maximises the disparity on the target
            optimizer_h_adv.zero_grad()
            y_t, y_t_adv = model(x_t)
            loss_ground_false = args.trade_off * regression_disparity(y_t, y_t_adv, weight_t, mode="max")
            loss_ground_false.backward()
            optimizer_h_adv.step()
            # Step C: the feature extractor minimises it
            optimizer_f.zero_grad()
            y_t, y_t_adv = model(x_t)
            loss_ground_truth = args.trade_off * regression_disparity(y_t, y_t_adv, weight_t, mode="min")
            loss_ground_truth.backward()
            optimizer_f.step()
            model.step()
            for s in schedulers:
                s.step()
        for key, v in (("loss_s", loss_s), ("loss_ground_false", loss_ground_false),
                       ("loss_ground_truth", loss_ground_truth)):
            history[key].append(v.item())
        bar.update(i, loss_s=loss_s.item(), gf=loss_ground_false.item(), gt=loss_ground_truth.item())
    return model, history, timer.ms_per_iter


# ----------------------------------------------------------------------------------------- plot
def plot(args, data, preds, histories, accs):
    plt = C.pyplot()
    (xs, _, _, kps), _, (xv, lv, _, kpv) = data[:3]
    stride = args.image_size / args.heatmap_size
    fig = plt.figure(figsize=(13, 4.4))
    grid = fig.add_gridspec(2, 8)
    colours = ["#e41a1c", "#377eb8", "#4daf4a", "#ff7f00"]

    def show(ax, img, kp, title, marker="o"):
        ax.imshow((img * 0.5 + 0.5).clamp(0, 1).permute(1, 2, 0).numpy(), extent=(0, args.image_size,
                                                                                   args.image_size, 0))
        for j in range(len(KEYPOINTS)):
            ax.scatter(kp[j, 0], kp[j, 1], c=colours[j], s=18, marker=marker, edgecolors="white", linewidths=0.5)
        ax.set_title(title, fontsize=7)
        ax.axis("off")

    def argmax_px(y):
        idx = y.flatten(1).argmax(-1)
        return torch.stack([idx % args.heatmap_size, idx // args.heatmap_size], -1).float() * stride + stride / 2
    show(fig.add_subplot(grid[0, 0]), xs[0], kps[0], "source, truth")
    show(fig.add_subplot(grid[1, 0]), xs[1], kps[1], "source, truth")
    for j in range(3):
        show(fig.add_subplot(grid[0, 1 + 2 * j]), xv[j], argmax_px(preds["source-only"][j]), "target, source-only")
        show(fig.add_subplot(grid[1, 1 + 2 * j]), xv[j], argmax_px(preds["RegDA"][j]), "target, RegDA")
        show(fig.add_subplot(grid[0, 2 + 2 * j]), xv[j], kpv[j], "target, truth")
        ax = fig.add_subplot(grid[1, 2 + 2 * j])
        heat = preds["RegDA"][j].flatten(1).softmax(-1).view_as(preds["RegDA"][j]).amax(0)
        ax.imshow(heat.numpy(), cmap="magma")
        ax.set_title("RegDA heatmaps (max over K)", fontsize=7)
        ax.axis("off")
    ax = fig.add_subplot(grid[:, 7])
    ax.plot(C.smooth(histories["pretrain"]["loss"]), label="pretrain KL (source)")
    n = len(histories["pretrain"]["loss"])
    for key in ("loss_s", "loss_ground_false", "loss_ground_truth"):
        vals = histories["RegDA"][key]
        ax.plot(range(n, n + len(vals)), C.smooth(vals), label=key)
    ax.set_xlabel("iteration")
    ax.set_yscale("log")
    ax.legend(fontsize=6, loc="lower left")
    ax.set_title(f"PCK: src-only {accs['source-only']:.1f}\nRegDA {accs['RegDA']:.1f} ({args.losses})",
                 fontsize=8)
    fig.tight_layout()
    path = C.plot_path(args, "regda")
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def parse_args(argv=None):
    p = C.base_parser(__doc__.splitlines()[0], iters=500, quick_iters=4)
    p.add_argument("--pretrain-iters", type=int, default=500)
    p.add_argument("--n", type=int, default=1000, help="images per domain")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--heatmap-size", type=int, default=16)
    p.add_argument("--sigma", type=int, default=1, help="Gaussian sigma of labels and pseudo labels")
    p.add_argument("--width", type=int, default=16, help="backbone channels")
    p.add_argument("--feature-dim", type=int, default=32)
    p.add_argument("--num-head-layers", type=int, default=2)
    p.add_argument("-b", "--batch-size", type=int, default=16)
    p.add_argument("--margin", type=float, default=4.)
    p.add_argument("--trade-off", type=float, default=1.)
    p.add_argument("--gl-hi", type=float, default=0.1)
    p.add_argument("--gl-iters", type=int, default=0, help="warm-up length of the gradient layer (0: --iters)")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--lr-gamma", type=float, default=0.0001)
    p.add_argument("--lr-decay", type=float, default=0.75)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--wd", type=float, default=0.0001)
    p.add_argument("--pck-thr", type=float, default=1.0, help="PCK threshold, in heatmap_size / 10")
    args = C.finish_args(p.parse_args(argv))
    if args.quick:
        args.pretrain_iters = min(args.pretrain_iters, args.quick_iters)
    return args


def main(argv=None):
    args = parse_args(argv)
    with C.default_dtype(args.dtype):
        return run(args)


def run(args):
    losses = _losses.load("regda", args.losses)
    data = make_task(args)
    pretrained, pre_history = pretrain(args, losses, data)
    acc_src, y_src = evaluate(pretrained, data[2], args.pck_thr)
    model, history, ms = train(args, losses, data, pretrained)
    acc_ad, y_ad = evaluate(model, data[2], args.pck_thr)
    accs = {"source-only": acc_src, "RegDA": acc_ad}
    src_src, _ = evaluate(pretrained, data[3], args.pck_thr)
    src_ad, _ = evaluate(model, data[3], args.pck_thr)
    summary = {
        "task": "articulated arm keypoints, thin white -> thick coloured on texture",
        "source_only_target_pck": acc_src,
        "adapted_target_pck": acc_ad,
        "source_only_source_pck": src_src,
        "adapted_source_pck": src_ad,
        "ms_per_iter": ms,
        "finite": C.finite(history) and C.finite(pre_history),
        "history": {**history, "pretrain_loss": pre_history["loss"]},
    }
    if not args.no_plot:
        summary["plot"] = plot(args, data, {"source-only": y_src[:3], "RegDA": y_ad[:3]},
                               {"pretrain": pre_history, "RegDA": history}, accs)
    C.save_summary(args, "regda", summary)
    return summary


if __name__ == "__main__":
    main()
    sys.exit(0)
