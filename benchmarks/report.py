"""Outputs: the table on stdout, and `<preset>.json`, `<preset>.md`, `<preset>.png` under
`runs/benchmarks/<machine>/` (or, with --record, the committed `benchmarks/results/<machine>/`).

Columns: median time per call of each contender with its spread (+-half the interquartile range, in %
of the median); `eager/hal` and `compile/hal` (how many times slower than hal_ext: > 1 means
hal_ext is faster); `hal/floor` (hal_ext over the do-nothing custom op); `GB/s` (the bytes a fused op
must move / hal_ext's time) and `%bw` (of the copy bandwidth measured in the same run); `peak mem`
(peak extra memory of one forward+backward call, K = KiB, M = MiB: eager / compile / hal_ext; see
memory.py for how it is measured). Training steps: iterations per second of each method's loop with
no-op losses (zero times an output, summed), the eager losses and hal_ext's, and the eager/hal_ext
ratio; `losses ms`: the losses' forward + backward milliseconds per step, timed inside the step (each
loss call's forward, and its own backward down to the model outputs; benchmarks/step_clock.py);
`share`: that time over the step's (median over the steps), for the no-op losses, the bytes-only
losses (each input read once and each input gradient written once, no arithmetic: for large tensors,
as RegDA's, the share no implementation of the losses goes below on this machine; for small ones a
Python call's overhead), eager and hal_ext; `hal_ext share by difference`: 1 - noop step time /
hal_ext step time, a cross-check.
"""
import json
import os

from .runner import format_time

TABLE_COLUMNS = ["op", "shape", "mode", "eager", "compile", "hal_ext", "floor", "eager/hal", "compile/hal",
                 "hal/floor", "GB/s", "%bw", "peak mem e/c/h"]
TRAIN_COLUMNS = ["method", "setting", "noop it/s", "eager it/s", "hal_ext it/s", "speedup", "eager losses ms",
                 "hal_ext losses ms", "noop share", "bytes-only share", "eager share", "hal_ext share",
                 "hal_ext share by difference"]


def _time_cell(c):
    if c is None:
        return "-"
    if "error" in c:
        return "error"
    spread = (c["q3_s"] - c["q1_s"]) / 2 / c["median_s"] * 100 if c["median_s"] else 0
    return f"{format_time(c['median_s'])} ±{spread:.0f}%"


def _ratio(c, key="ratio_to_hal_ext"):
    return f"{c[key]:.2f}x" if c and key in c else "-"


def _mem(c):
    if not c or "memory" not in c:
        return "-"
    b = c["memory"]["peak_bytes"]
    return f"{b / 2 ** 10:.0f}K" if b < 2 ** 20 else f"{b / 2 ** 20:.1f}M"


def table_rows(result):
    rows = []
    for r in result["results"]:
        c = r["contenders"]
        rows.append([
            r["op"], "x".join(map(str, r["shape"])), r["mode"],
            _time_cell(c.get("eager")), _time_cell(c.get("compile")), _time_cell(c.get("hal_ext")),
            _time_cell(c.get("floor")), _ratio(c.get("eager")), _ratio(c.get("compile")),
            f"{r['hal_ext_over_floor']:.2f}" if "hal_ext_over_floor" in r else "-",
            f"{r['hal_ext_gbps']:.2f}" if "hal_ext_gbps" in r else "-",
            f"{100 * r['hal_ext_bandwidth_fraction']:.0f}%" if "hal_ext_bandwidth_fraction" in r else "-",
            "/".join(_mem(c.get(k)) for k in ("eager", "compile", "hal_ext")),
        ])
    return rows


def train_rows(result):
    rows = []
    for t in result.get("train_steps", []):
        if "skipped" in t:
            continue
        c = t["contenders"]
        n, b, e, h = c.get("noop", {}), c.get("bytes", {}), c.get("eager", {}), c.get("hal_ext", {})
        ips = lambda x: f"{1 / x['median_s']:.1f}" if x.get("median_s") else "-"
        ratio = f"{e['median_s'] / h['median_s']:.2f}x" if e.get("median_s") and h.get("median_s") else "-"
        ms = lambda x: (f"{1e3 * x['loss_forward_s']:.1f}+{1e3 * x['loss_backward_s']:.1f}"
                        if "loss_forward_s" in x else "-")
        share = lambda x: f"{100 * x['loss_share']:.1f}%" if "loss_share" in x else "-"
        by_difference = (f"{100 * (1 - n['median_s'] / h['median_s']):.1f}%"
                         if n.get("median_s") and h.get("median_s") else "-")
        rows.append([t["method"], t["setting"], ips(n), ips(e), ips(h), ratio, ms(e), ms(h),
                     share(n), share(b), share(e), share(h), by_difference])
    return rows


def notes(result):
    seen = {}
    for r in result["results"]:
        if r.get("notes"):
            seen.setdefault(r["op"], r["notes"])
    return [f"{op}: {note}" for op, note in seen.items()]


def header_lines(meta):
    bw = meta.get("bandwidth", {})
    return [
        f"machine {meta['machine']}: {meta['gpu'] or meta['cpu']} ({meta['cpu_count']} CPU cores, "
        f"{meta['torch_threads']} torch threads), device {meta['device']}",
        f"torch {meta['torch']}, hal_ext {meta['hal_ext_commit']} (native {meta['hal_ext_build'].get('compiled')}), "
        f"{meta['date']}, preset {meta['preset']}, dtype {meta['dtype']}",
        f"copy bandwidth {bw.get('gbps', 0):.1f} GB/s ({bw.get('buffer_bytes', 0) >> 20} MiB buffers)",
    ]


def format_text(columns, rows):
    widths = [max(len(str(x)) for x in [col] + [r[i] for r in rows]) for i, col in enumerate(columns)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(r) for r in rows])


def format_markdown(columns, rows):
    esc = lambda x: str(x).replace("|", "\\|")
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def print_report(result, out=print):
    out("")
    for line in header_lines(result["meta"]):
        out(line)
    out("")
    out(format_text(TABLE_COLUMNS, table_rows(result)))
    if train_rows(result):
        out("")
        out("training steps (small backbone; the losses' time and share measured inside the step):")
        out(format_text(TRAIN_COLUMNS, train_rows(result)))
    for line in notes(result):
        out(f"note {line}")
    for s in result.get("skipped", []):
        out(f"skipped {s['op']}: {s['reason']}")
    for t in result.get("train_steps", []):
        if "skipped" in t:
            out(f"skipped training step {t['method']}: {t['skipped']}")
    out("")
    out("ratios: contender time / hal_ext time (> 1: hal_ext faster). floor: a do-nothing custom op with the same tensors.")


def markdown(result):
    lines = [f"# hal_ext kernel benchmark: {result['meta']['machine']}", ""]
    lines += [f"- {line}" for line in header_lines(result["meta"])]
    lines += ["", format_markdown(TABLE_COLUMNS, table_rows(result)), ""]
    if train_rows(result):
        lines += ["Training steps (small backbone; the losses' time and share measured inside the step):", "",
                  format_markdown(TRAIN_COLUMNS, train_rows(result)), ""]
    lines += [f"- note {line}" for line in notes(result)]
    for s in result.get("skipped", []):
        lines.append(f"- skipped `{s['op']}`: {s['reason']}")
    for t in result.get("train_steps", []):
        if "skipped" in t:
            lines.append(f"- skipped training step `{t['method']}`: {t['skipped']}")
    lines += ["", __doc__.split("\n\n", 1)[1].strip(), ""]
    return "\n".join(lines)


def _bar_group(ax, labels, series, label_size):
    """Horizontal bars growing from 1 (equal time) on a log axis, one bar per (series, label), each
    carrying its value: right of 1 hal_ext is faster, left of it slower."""
    y = range(len(labels))
    height = 0.8 / len(series)
    for n, (name, color, vals) in enumerate(series):
        offsets = [i - 0.4 + height * (n + 0.5) for i in y]
        ax.barh(offsets, [v - 1 for v in vals], left=1.0, height=height, color=color, label=name)
        for yy, v in zip(offsets, vals):
            if v == v:  # not NaN
                ax.text(v * 1.04 if v >= 1 else v / 1.04, yy, f"{v:.2f}x", va="center",
                        ha="left" if v >= 1 else "right", fontsize=6.5)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(list(y))
    ax.set_yticklabels(labels, fontsize=label_size)
    ax.set_ylim(len(labels) - 0.5, -0.5)


def _share_panel(ax, train):
    """The losses' share of each method's training step (%, linear axis), one bar per contender."""
    kinds = [("hal_ext", "hal_ext", "tab:green"), ("eager", "eager", "tab:blue"),
             ("bytes", "bytes-only", "tab:olive"), ("noop", "noop", "tab:gray")]
    height = 0.8 / len(kinds)
    for n, (kind, name, color) in enumerate(kinds):
        offsets = [i - 0.4 + height * (n + 0.5) for i in range(len(train))]
        values = [100 * t["contenders"].get(kind, {}).get("loss_share", float("nan")) for t in train]
        ax.barh(offsets, values, height=height, color=color, label=f"{name} losses")
        for yy, v in zip(offsets, values):
            if v == v:
                ax.text(v + 0.5, yy, f"{v:.1f}%", va="center", ha="left", fontsize=6.5)
    ax.set_yticks(list(range(len(train))))
    ax.set_yticklabels([f"{t['method']} training step" for t in train], fontsize=7)
    ax.set_ylim(len(train) - 0.5, -0.5)
    ax.set_xlim(0, 105)
    ax.set_xlabel("share of the training step spent in the losses (%, measured inside the step)")


def chart(result, path):
    """Speedup of hal_ext per op and shape (contender time / hal_ext time) and, below, per training step,
    with the value on every bar; then the losses' share of each training step. The legends sit above
    the plots, the title names machine and commit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    rows = [r for r in result["results"] if "ratio_to_hal_ext" in r["contenders"].get("eager", {})
            or "ratio_to_hal_ext" in r["contenders"].get("compile", {})]
    train = [t for t in result.get("train_steps", []) if "skipped" not in t
             and t["contenders"].get("eager", {}).get("median_s") and t["contenders"].get("hal_ext", {}).get("median_s")]
    nan = float("nan")
    op_series = [(f"{name} / hal_ext", color, [r["contenders"].get(name, {}).get("ratio_to_hal_ext", nan) for r in rows])
                 for name, color in (("eager", "tab:blue"), ("compile", "tab:orange"))]
    train_series = [("training step: it/s with hal_ext losses / it/s with eager losses", "tab:green",
                     [t["contenders"]["eager"]["median_s"] / t["contenders"]["hal_ext"]["median_s"] for t in train])]
    panels = []
    if rows:
        panels.append(([f"{r['op']} {'x'.join(map(str, r['shape']))} {r['mode']}" for r in rows], op_series))
    if train:
        panels.append(([f"{t['method']} training step" for t in train], train_series))
    if not panels:
        return
    shares = [t for t in train if "loss_share" in t["contenders"]["hal_ext"]]
    heights = [max(1, len(labels)) for labels, _ in panels] + ([len(shares) + 1] if shares else [])
    fig = plt.figure(figsize=(9.5, 1.9 + 0.34 * sum(heights) + 0.6 * len(heights)))
    grid = fig.add_gridspec(len(heights), 1, height_ratios=heights)
    axes = []
    for i, (labels, series) in enumerate(panels):
        ax = fig.add_subplot(grid[i, 0], sharex=axes[0] if axes else None)
        _bar_group(ax, labels, series, label_size=7)
        ax.legend(fontsize=7.5, loc="lower left", bbox_to_anchor=(0, 1.0), ncol=2, frameon=False,
                  borderaxespad=0.2)
        axes.append(ax)
    for ax in axes[:-1]:
        ax.tick_params(labelbottom=False)
    values = [v for _, series in panels for _, _, vals in series for v in vals if v == v]
    ax = axes[-1]
    ax.set_xscale("log")
    ax.set_xlim(min(0.8, min(values) / 1.6), max(values) * 1.9)
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("speedup of hal_ext (contender time / hal_ext time, log scale; > 1: hal_ext faster)")
    if shares:
        share_ax = fig.add_subplot(grid[len(panels), 0])
        _share_panel(share_ax, shares)
        share_ax.legend(fontsize=7.5, loc="lower left", bbox_to_anchor=(0, 1.0), ncol=3, frameon=False,
                        borderaxespad=0.2)
    meta = result["meta"]
    commit = meta.get("hal_ext_commit") or "unknown commit"
    commit = commit[:10] + ("-dirty" if commit.endswith("-dirty") else "")
    fig.suptitle(f"hal_ext {commit} on {meta['machine']} ({meta['device']}, {meta['dtype']}), "
                 f"torch {meta['torch']}, {meta['date'][:10]}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_all(result, directory, stem):
    os.makedirs(directory, exist_ok=True)
    paths = {ext: os.path.join(directory, f"{stem}.{ext}") for ext in ("json", "md", "png")}
    with open(paths["json"], "w") as f:
        json.dump(result, f, indent=1, sort_keys=False)
        f.write("\n")
    with open(paths["md"], "w") as f:
        f.write(markdown(result))
    chart(result, paths["png"])
    return paths
