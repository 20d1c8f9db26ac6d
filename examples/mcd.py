"""MCD (Maximum Classifier Discrepancy, Saito et al. 2018) on rotated two moons, offline, on a CPU.

A small version of tllib's examples/domain_adaptation/image_classification/mcd.py: a feature
generator G and two ImageClassifierHeads F1, F2, trained with the three-step update
  A. G, F1, F2 minimise the source cross-entropy (+ MCD entropy of the target predictions);
  B. F1, F2 maximise the classifier discrepancy on the target (source loss kept);
  C. G minimises the discrepancy, num_k times.
Source: two moons; target: the same moons rotated by --angle degrees. Source-only is the same
network trained with step A's cross-entropy alone for the same number of iterations.

    python examples/mcd.py                     # hal_ext losses, full run, PNG in runs/examples/
    python examples/mcd.py --losses reference  # the pure-torch tllib-semantics losses
    python examples/mcd.py --quick             # a few iterations (CI)
"""
import math
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim import SGD

import _common as C
import _losses
from hal_ext.alignment.mcd import ImageClassifierHead


# ----------------------------------------------------------------------------------------- data
def two_moons(n: int, noise: float, generator: torch.Generator):
    """n points of the two interleaving half circles, centred, with Gaussian noise; labels 0/1."""
    y = torch.randint(0, 2, (n,), generator=generator)
    t = torch.rand(n, generator=generator) * math.pi
    x0 = torch.stack([torch.cos(t), torch.sin(t)], 1)
    x1 = torch.stack([1 - torch.cos(t), 0.5 - torch.sin(t)], 1)
    x = torch.where(y[:, None] == 0, x0, x1) - torch.tensor([0.5, 0.25])
    x = x + noise * torch.randn(n, 2, generator=generator)
    return x, y


def blobs(n: int, classes: int, std: float, generator: torch.Generator):
    """n points of `classes` Gaussian blobs centred on the unit circle; labels 0..classes-1."""
    y = torch.randint(0, classes, (n,), generator=generator)
    a = math.pi / 2 + 2 * math.pi * y.float() / classes
    centre = torch.stack([torch.cos(a), torch.sin(a)], 1)
    return centre + std * torch.randn(n, 2, generator=generator), y


def rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    a = math.radians(degrees)
    r = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return x @ r.T


def make_task(args):
    g = torch.Generator().manual_seed(1000 + args.seed)
    n = 256 if args.quick else args.n
    if args.task == "moons":
        sample = lambda m: two_moons(m, args.noise, g)
    else:
        sample = lambda m: blobs(m, args.classes, args.noise, g)
    xs, ys = sample(n)
    xt, yt = sample(n)
    xt = rotate(xt, args.angle)
    xv, yv = sample(n if args.quick else 2000)  # held-out target test set
    xv = rotate(xv, args.angle)
    return (xs, ys), (xt, yt), (xv, yv)


# ---------------------------------------------------------------------------------------- model
class Generator(nn.Module):
    """The feature generator G (tllib: a backbone with ``out_features``)."""

    def __init__(self, width: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU())
        self.out_features = width

    def forward(self, x):
        return self.net(x)


def build(args):
    G = Generator(args.width)
    # pool_layer=Identity: the features are already vectors (tllib's --no-pool)
    F1 = ImageClassifierHead(G.out_features, args.num_classes, args.bottleneck_dim, nn.Identity())
    F2 = ImageClassifierHead(G.out_features, args.num_classes, args.bottleneck_dim, nn.Identity())
    # as tllib: plain SGD for G, SGD with momentum for the heads, weight decay 5e-4
    optimizer_g = SGD(G.parameters(), lr=args.lr, weight_decay=0.0005)
    optimizer_f = SGD([{"params": F1.parameters()}, {"params": F2.parameters()}],
                      momentum=0.9, lr=args.lr, weight_decay=0.0005)
    return G, F1, F2, optimizer_g, optimizer_f


# ------------------------------------------------------------------------------------- training
def train(args, losses, data, adapt: bool):
    """tllib's MCD train loop (adapt=True), or step A's cross-entropy alone (adapt=False)."""
    C.seed_everything(args.seed)
    (xs, ys), (xt, yt), _ = data
    G, F1, F2, optimizer_g, optimizer_f = build(args)
    source_iter = C.ForeverDataIterator((xs, ys), args.batch_size, seed=args.seed)
    target_iter = C.ForeverDataIterator((xt, yt), args.batch_size, seed=args.seed + 1)
    entropy, discrepancy = losses.entropy, losses.classifier_discrepancy

    history = {"loss": [], "transfer_loss": []} if adapt else {"loss": []}
    bar = C.ProgressBar(args.iters, "MCD     " if adapt else "src-only", args.print_freq)
    timer = C.IterTimer()
    G.train(), F1.train(), F2.train()
    for i in range(args.iters):
        x_s, labels_s = next(source_iter)
        x_t, _ = next(target_iter)
        x = torch.cat((x_s, x_t), dim=0)
        with timer:
            # Step A: all networks minimise the source loss (+ entropy on the target)
            optimizer_g.zero_grad()
            optimizer_f.zero_grad()
            g = G(x)
            y1_s, y1_t = F1(g).chunk(2, dim=0)
            y2_s, y2_t = F2(g).chunk(2, dim=0)
            loss = F.cross_entropy(y1_s, labels_s) + F.cross_entropy(y2_s, labels_s)
            if adapt:
                y1_t, y2_t = F.softmax(y1_t, dim=1), F.softmax(y2_t, dim=1)
                loss = loss + (entropy(y1_t) + entropy(y2_t)) * args.trade_off_entropy
            loss.backward()
            optimizer_g.step()
            optimizer_f.step()
            if adapt:
                # Step B: the classifiers maximise their discrepancy on the target
                optimizer_g.zero_grad()
                optimizer_f.zero_grad()
                g = G(x)
                y1_s, y1_t = F1(g).chunk(2, dim=0)
                y2_s, y2_t = F2(g).chunk(2, dim=0)
                y1_t, y2_t = F.softmax(y1_t, dim=1), F.softmax(y2_t, dim=1)
                loss = F.cross_entropy(y1_s, labels_s) + F.cross_entropy(y2_s, labels_s) + \
                    (entropy(y1_t) + entropy(y2_t)) * args.trade_off_entropy - \
                    discrepancy(y1_t, y2_t) * args.trade_off
                loss.backward()
                optimizer_f.step()
                # Step C: the generator minimises it, num_k times
                for _ in range(args.num_k):
                    optimizer_g.zero_grad()
                    g = G(x)
                    _, y1_t = F1(g).chunk(2, dim=0)
                    _, y2_t = F2(g).chunk(2, dim=0)
                    y1_t, y2_t = F.softmax(y1_t, dim=1), F.softmax(y2_t, dim=1)
                    mcd_loss = discrepancy(y1_t, y2_t) * args.trade_off
                    mcd_loss.backward()
                    optimizer_g.step()
        history["loss"].append(loss.item())
        if adapt:
            history["transfer_loss"].append(mcd_loss.item())
            bar.update(i, loss=loss.item(), discrepancy=mcd_loss.item())
        else:
            bar.update(i, loss=loss.item())
    return (G, F1, F2), history, timer.ms_per_iter


@torch.no_grad()
def accuracy(model, x, y) -> float:
    G, F1, F2 = model
    G.eval(), F1.eval(), F2.eval()
    return 100.0 * (F1(G(x)).argmax(1) == y).float().mean().item()


# ----------------------------------------------------------------------------------------- plot
LIGHT = ["#dde8f6", "#f8e0d6", "#e0f2dc", "#efe0f4", "#fbf3d0"]
DARK = ["#1f5fa8", "#c8471e", "#2e8b3a", "#7b3f9e", "#b08d00"]

@torch.no_grad()
def plot(args, data, models, histories, accs):
    plt = C.pyplot()
    (xs, ys), (xt, yt), _ = data
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    lo, hi = torch.cat([xs, xt]).min(0).values - 0.4, torch.cat([xs, xt]).max(0).values + 0.4
    gx, gy = torch.meshgrid(torch.linspace(lo[0], hi[0], 200), torch.linspace(lo[1], hi[1], 200), indexing="xy")
    grid = torch.stack([gx.flatten(), gy.flatten()], 1)
    for ax, name in zip(axes[:2], ("source-only", "MCD")):
        G, F1, F2 = models[name]
        G.eval(), F1.eval()
        pred = F1(G(grid)).argmax(1).reshape(gx.shape).float()
        k = args.num_classes
        ax.contourf(gx, gy, pred, levels=[i - 0.5 for i in range(k + 1)], colors=LIGHT[:k])
        ax.contour(gx, gy, pred, levels=[i + 0.5 for i in range(k - 1)], colors="k", linewidths=1)
        ax.scatter(xs[:, 0], xs[:, 1], c=[DARK[v] for v in ys], s=4, alpha=0.4, label="source")
        ax.scatter(xt[:, 0], xt[:, 1], c=[DARK[v] for v in yt], s=10, marker="x", alpha=0.5, label="target")
        ax.set_title(f"{name}: target accuracy {accs[name]:.1f}%")
        ax.legend(loc="lower right", fontsize=8)
    ax = axes[2]
    for key, label in (("loss", "step B loss"), ("transfer_loss", "step C discrepancy")):
        ax.plot(C.smooth(histories["MCD"][key]), label=f"MCD {label}")
    ax.plot(C.smooth(histories["source-only"]["loss"]), label="source-only cross-entropy")
    ax.set_xlabel("iteration")
    ax.set_yscale("symlog", linthresh=1e-2)
    ax.legend(fontsize=8)
    ax.set_title(f"learning curves ({args.losses} losses)")
    fig.tight_layout()
    path = C.plot_path(args, "mcd")
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def parse_args(argv=None):
    p = C.base_parser(__doc__.splitlines()[0], iters=400, quick_iters=5)
    p.add_argument("--task", choices=("blobs", "moons"), default="blobs")
    p.add_argument("--classes", type=int, default=3, help="blobs: number of classes")
    p.add_argument("--angle", type=float, default=50., help="rotation of the target domain, degrees")
    p.add_argument("--noise", type=float, default=0.25, help="blob std / moon noise")
    p.add_argument("--n", type=int, default=1000, help="points per domain")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--bottleneck-dim", type=int, default=64)
    p.add_argument("-b", "--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--trade-off", type=float, default=1.)
    p.add_argument("--trade-off-entropy", type=float, default=0.01)
    p.add_argument("--num-k", type=int, default=4)
    args = C.finish_args(p.parse_args(argv))
    args.num_classes = 2 if args.task == "moons" else args.classes
    return args


def main(argv=None):
    args = parse_args(argv)
    with C.default_dtype(args.dtype):
        return run(args)


def run(args):
    losses = _losses.load("mcd", args.losses)
    data = make_task(args)
    models, histories, ms = {}, {}, {}
    for name, adapt in (("source-only", False), ("MCD", True)):
        models[name], histories[name], ms[name] = train(args, losses, data, adapt)
    xv, yv = data[2]
    accs = {name: accuracy(models[name], xv, yv) for name in models}
    summary = {
        "task": (f"two moons" if args.task == "moons" else f"{args.classes} Gaussian blobs") +
                f", target rotated {args.angle:g} deg",
        "source_only_target_acc": accs["source-only"],
        "adapted_target_acc": accs["MCD"],
        "ms_per_iter": ms["MCD"],
        "finite": C.finite(histories["MCD"]),
        "history": histories["MCD"],
    }
    if not args.no_plot:
        summary["plot"] = plot(args, data, models, histories, accs)
    C.save_summary(args, "mcd", summary)
    return summary


if __name__ == "__main__":
    main()
    sys.exit(0)
