"""MDD (Margin Disparity Discrepancy, Zhang et al. 2019) on rendered shapes, offline, on a CPU.

A small version of tllib's examples/domain_adaptation/image_classification/mdd.py: an
ImageClassifier (backbone, bottleneck, head, and an adversarial head behind a warm-start gradient
reverse layer) trained on ``cross_entropy(y_s) - trade_off * mdd(y_s, y_s_adv, y_t, y_t_adv)`` with
ClassificationMarginDisparityDiscrepancy (margin 4), ``classifier.step()`` every iteration, Nesterov
SGD and tllib's inverse-decay learning rate. Source: white shapes on black; target: the same shapes
on random colour textures (see shapes.py). Source-only is the same classifier trained on the
cross-entropy alone for the same number of iterations.

    python examples/mdd.py                     # hal_ext losses, full run, PNG in runs/examples/
    python examples/mdd.py --losses reference  # the pure-torch tllib-semantics losses
    python examples/mdd.py --quick             # a few iterations (CI)
"""
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim import SGD
from torch.optim.lr_scheduler import LambdaLR

import _common as C
import _losses
import shapes
from hal_ext.alignment.mdd import ImageClassifier
from hal_ext.modules.grl import WarmStartGradientReverseLayer


def make_task(args):
    g = torch.Generator().manual_seed(2000 + args.seed)
    n = 128 if args.quick else args.n
    source = shapes.source_domain(n, args.image_size, g)
    target = shapes.target_domain(n, args.image_size, g)
    test = shapes.target_domain(n if args.quick else 2000, args.image_size, g)  # held-out target
    return source, target, test


class Backbone(nn.Module):
    """A small CNN with tllib's backbone interface (``out_features``, a feature map out)."""

    def __init__(self, width: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, width // 2, 3, padding=1), nn.BatchNorm2d(width // 2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width // 2, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.out_features = width

    def forward(self, x):
        return self.net(x)


def train(args, losses, data, adapt: bool):
    C.seed_everything(args.seed)
    (xs, ys), (xt, _), _ = data
    # the reverse layer warms up over this run's length instead of tllib's fixed 1000 iterations
    grl = WarmStartGradientReverseLayer(alpha=1.0, lo=0.0, hi=args.grl_hi, max_iters=args.grl_iters or args.iters,
                                        auto_step=False)
    classifier = ImageClassifier(Backbone(args.width), len(shapes.CLASSES),
                                         bottleneck_dim=args.bottleneck_dim, width=args.bottleneck_dim,
                                         grl=grl, finetune=False)
    mdd = losses.ClassificationMarginDisparityDiscrepancy(args.margin)
    optimizer = SGD(classifier.get_parameters(), args.lr, momentum=args.momentum, weight_decay=args.wd,
                    nesterov=True)
    lr_scheduler = LambdaLR(optimizer, C.lr_decay(args.lr, args.lr_gamma, args.lr_decay))
    source_iter = C.ForeverDataIterator((xs, ys), args.batch_size, seed=args.seed)
    target_iter = C.ForeverDataIterator((xt,), args.batch_size, seed=args.seed + 1)

    history = {"loss": [], "transfer_loss": []} if adapt else {"loss": []}
    bar = C.ProgressBar(args.iters, "MDD     " if adapt else "src-only", args.print_freq)
    timer = C.IterTimer()
    classifier.train()
    mdd.train()
    for i in range(args.iters):
        x_s, labels_s = next(source_iter)
        x_t, = next(target_iter)
        with timer:
            optimizer.zero_grad()
            x = torch.cat((x_s, x_t), dim=0)
            outputs, outputs_adv = classifier(x)
            y_s, y_t = outputs.chunk(2, dim=0)
            y_s_adv, y_t_adv = outputs_adv.chunk(2, dim=0)
            cls_loss = F.cross_entropy(y_s, labels_s)
            if adapt:
                # the adversarial head minimises -mdd, i.e. maximises the disparity
                transfer_loss = -mdd(y_s, y_s_adv, y_t, y_t_adv)
                loss = cls_loss + transfer_loss * args.trade_off
            else:
                loss = cls_loss
            classifier.step()
            loss.backward()
            optimizer.step()
            lr_scheduler.step()
        history["loss"].append(loss.item())
        if adapt:
            history["transfer_loss"].append(transfer_loss.item())
            bar.update(i, loss=loss.item(), transfer=transfer_loss.item())
        else:
            bar.update(i, loss=loss.item())
    return classifier, history, timer.ms_per_iter


@torch.no_grad()
def predict(classifier, x):
    classifier.eval()
    return torch.cat([classifier(chunk).argmax(1) for chunk in x.split(500)])


def plot(args, data, models, histories, accs):
    plt = C.pyplot()
    (xs, ys), _, (xv, yv) = data
    fig = plt.figure(figsize=(13, 4.2))
    grid = fig.add_gridspec(3, 10)
    preds = {name: predict(m, xv[:8]) for name, m in models.items()}
    for j in range(8):
        ax = fig.add_subplot(grid[0, j])
        ax.imshow(shapes.to_image(xs[j]))
        ax.set_title(f"source: {shapes.CLASSES[ys[j]]}", fontsize=7)
        ax.axis("off")
        for row, name in ((1, "source-only"), (2, "MDD")):
            ax = fig.add_subplot(grid[row, j])
            ax.imshow(shapes.to_image(xv[j]))
            ok = preds[name][j] == yv[j]
            ax.set_title(f"{name}: {shapes.CLASSES[preds[name][j]]}", fontsize=7,
                         color="green" if ok else "red")
            ax.axis("off")
    ax = fig.add_subplot(grid[:, 8:])
    ax.plot(C.smooth(histories["MDD"]["loss"]), label="MDD total loss")
    ax.plot(C.smooth(histories["MDD"]["transfer_loss"]), label="MDD transfer loss (-mdd)")
    ax.plot(C.smooth(histories["source-only"]["loss"]), label="source-only cross-entropy")
    ax.set_xlabel("iteration")
    ax.legend(fontsize=7)
    ax.set_title(f"target acc: source-only {accs['source-only']:.1f}%, MDD {accs['MDD']:.1f}%\n"
                 f"({args.losses} losses)", fontsize=9)
    fig.tight_layout()
    path = C.plot_path(args, "mdd")
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def parse_args(argv=None):
    p = C.base_parser(__doc__.splitlines()[0], iters=800, quick_iters=5)
    p.add_argument("--n", type=int, default=2000, help="images per domain")
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument("--width", type=int, default=32, help="backbone channels")
    p.add_argument("--bottleneck-dim", type=int, default=64)
    p.add_argument("-b", "--batch-size", type=int, default=32)
    p.add_argument("--margin", type=float, default=4.)
    p.add_argument("--trade-off", type=float, default=1.)
    p.add_argument("--grl-hi", type=float, default=0.1)
    p.add_argument("--grl-iters", type=int, default=0, help="warm-up length of the GRL (0: --iters)")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--lr-gamma", type=float, default=0.0002)
    p.add_argument("--lr-decay", type=float, default=0.75)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--wd", type=float, default=0.0005)
    return C.finish_args(p.parse_args(argv))


def main(argv=None):
    args = parse_args(argv)
    with C.default_dtype(args.dtype):
        return run(args)


def run(args):
    losses = _losses.load("mdd", args.losses)
    data = make_task(args)
    models, histories, ms = {}, {}, {}
    for name, adapt in (("source-only", False), ("MDD", True)):
        models[name], histories[name], ms[name] = train(args, losses, data, adapt)
    xv, yv = data[2]
    accs = {name: 100.0 * (predict(m, xv) == yv).float().mean().item() for name, m in models.items()}
    summary = {
        "task": "rendered shapes, white-on-black -> colour texture",
        "source_only_target_acc": accs["source-only"],
        "adapted_target_acc": accs["MDD"],
        "ms_per_iter": ms["MDD"],
        "finite": C.finite(histories["MDD"]),
        "history": histories["MDD"],
    }
    if not args.no_plot:
        summary["plot"] = plot(args, data, models, histories, accs)
    C.save_summary(args, "mdd", summary)
    return summary


if __name__ == "__main__":
    main()
    sys.exit(0)
