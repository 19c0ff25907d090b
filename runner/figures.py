"""The sweep figures: ``curves.png`` (worst/average primary metric against the downstream N), ``theory.png``
(the convex experiment), ``weights.png`` and ``upstream_losses.png`` (per balancer, over pre-training steps)
and Figure 3 of the MM-MAE runs. The per-step curves come from each run's CSV log (``<run>/csv/metrics.csv``:
``train/loss/<task>`` and ``train/weight/<task>``, one row every ``trainer.log_every_n_steps`` steps); a run
without it (``logger=none``) has no curves.
"""

from __future__ import annotations

import csv
import logging
import math
from collections import defaultdict
from pathlib import Path

from runner.heterogeneity import heterogeneity_figure, heterogeneity_frame
from runner.tables import MEASURES, curve_frame, row_key, row_labels, theory_frame

log = logging.getLogger(__name__)


def _theory_figure(path: Path, frame, settings: dict) -> Path:
    """theory.png (:func:`draw_theory`)."""
    return _save(draw_theory(frame, settings), path, layout=False)


def draw_theory(frame, settings: dict):
    """theory.png: worst-case excess risk and worst-case sample complexity against the worst-case initial risk,
    one dot per run and each row's mean over seeds with its 95% t-interval on both axes; log x axis, so the
    logarithmic relation of eq. 13 is a straight line, labelled however narrow its range (:func:`label_log_axis`)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter
    from scipy import stats

    def half(v):
        return stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)) if len(v) > 1 else 0.0

    primary_n, eps = settings.get("primary_n"), settings.get("eps")
    ylabels = {
        "excess": f"worst-case excess risk at N={primary_n}"
        if primary_n
        else "worst-case excess risk (primary)",
        "complexity": "worst-case sample complexity" + (f" (eps={eps:g})" if eps is not None else ""),
    }
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.8))
    for ax, y in zip(axes, ylabels):
        for i, label in enumerate(sorted(frame["row"].unique(), key=row_key)):
            f = frame[frame["row"] == label]
            color = f"C{i % 10}"
            ax.scatter(f["initial"], f[y], s=10, alpha=0.35, color=color, lw=0)
            ax.errorbar(
                f["initial"].mean(), f[y].mean(), xerr=half(f["initial"]), yerr=half(f[y]),
                fmt="o", ms=5, color=color, capsize=2, label=label,
            )  # fmt: skip
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # no overlapping 2x10^2, 3x10^2, ... labels
        ax.set_xlabel("worst-case initial risk (log scale)")
        ax.set_ylabel(ylabels[y])
    axes[0].legend(fontsize=7)
    fig.suptitle(
        "dots: runs; markers: mean over seeds with 95% t-interval; eq. 13 bounds N by a + b log(x)",
        fontsize=8,
    )
    for ax in axes:
        label_log_axis(ax)
    fig.tight_layout()
    for ax in axes:
        thin_tick_labels(ax, prefer=lambda v: math.log10(v).is_integer())
    return fig


def label_log_axis(ax, at_least: int = 3) -> None:
    """Put labelled major ticks on a log-scale x axis whatever its range: powers of ten when ``at_least`` of them
    are in view, else 1-2-5 steps, else 1..9 steps, else (a range narrower than 1-2) that many log-spaced values
    rounded to two significant digits. Matplotlib's own log ticks leave a range without a power of ten
    unlabelled."""
    import numpy as np

    lo, hi = ax.get_xlim()
    decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
    for subs in ((1,), (1, 2, 5), tuple(range(1, 10))):
        ticks = [m * 10.0**k for k in decades for m in subs if lo <= m * 10.0**k <= hi]
        if len(ticks) >= at_least:
            break
    else:
        ticks = sorted({float(f"{t:.2g}") for t in np.geomspace(lo, hi, at_least + 2)[1:-1]})
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.set_xlim(lo, hi)


def thin_tick_labels(ax, prefer=None, pad_px: float = 3.0) -> None:
    """Blank the x tick labels that would overlap another (their ticks stay): the first and the last label are
    kept first, then those whose value ``prefer`` accepts, then the rest left to right, each only where it has
    room. Call once the figure is laid out."""
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    values = list(ax.get_xticks())
    labels = ax.get_xticklabels()
    lo, hi = sorted(ax.get_xlim())
    shown = [i for i, v in enumerate(values) if lo <= v <= hi and labels[i].get_text()]
    if not shown:
        return

    def rank(i: int) -> tuple:
        return (i not in (shown[0], shown[-1]), not (prefer and prefer(values[i])), i)

    kept: list = []
    for i in sorted(shown, key=rank):
        box = labels[i].get_window_extent(renderer).padded(pad_px)
        if not any(box.overlaps(other) for other in kept):
            kept.append(box)
        else:
            labels[i].set_text("")
    ax.set_xticks(values, [t.get_text() for t in labels])


#: the figures' resolution (dots per inch)
DPI = 110
#: the moving average of the per-step curves spans this fraction of a run's logged steps (at least one)
SMOOTHING = 0.05

#: the CSV logger's file in a run directory (``conf/logger/csv.yaml``)
METRICS_CSV = Path("csv") / "metrics.csv"
_CURVES = ("train/loss/", "train/weight/")


def read_history(run_dir: str | Path) -> dict[str, list[float]] | None:
    """A run's pre-training curves from its CSV log (``<run_dir>/csv/metrics.csv``) as columns: ``step``,
    ``loss/<task>``, ``weight/<task>`` (NaN where a logged step has no value: a task not seen yet; at a later
    step whose batch lacks a task, Lightning repeats that task's last logged loss). Lightning writes sparse rows (each log call its own row, other columns empty): the values are merged
    by step, a step logged again after a resume keeps its later values, and rows without a loss or weight (the
    downstream fits, the end-of-run numbers) are left out. None without the file or without such columns."""
    path = Path(run_dir) / METRICS_CSV
    if not path.is_file():
        return None
    by_step: dict[int, dict[str, float]] = {}
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            keys = [k for k in reader.fieldnames or [] if k.startswith(_CURVES)]
            for row in reader:
                values = {k: v for k in keys if math.isfinite(v := _number(row.get(k)))}
                step = _number(row.get("step"))
                if values and math.isfinite(step):
                    by_step.setdefault(int(step), {}).update(values)
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        log.warning("figures: %s is unreadable (%s); no curves for that run", path, exc)
        return None
    if not by_step:
        return None
    steps = sorted(by_step)
    columns = {"step": [float(s) for s in steps]}
    for k in keys:
        columns[k.removeprefix("train/")] = [by_step[s].get(k, math.nan) for s in steps]
    return columns


def _number(text: str | None) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):  # an empty cell, or a line cut short by a killed run
        return math.nan


def smoothing_window(steps: list[float]) -> tuple[int, str]:
    """The moving average of a curve logged at ``steps``: its width in logged points (:data:`SMOOTHING` of them,
    at least 1) and what the x axis says about it."""
    window = max(1, round(SMOOTHING * len(steps)))
    if window == 1:
        return 1, "pre-training step (not smoothed)"
    every = sorted(b - a for a, b in zip(steps, steps[1:]))[(len(steps) - 1) // 2]  # the logging interval
    return window, f"pre-training step (moving average over {window * every:g} steps)"


def _mean_curves(
    histories: list[dict[str, list[float]]], prefix: str
) -> tuple[list[float], dict[str, list[float]], str]:
    """Average over seeds of the ``prefix/<task>`` columns, on the shortest common step axis, smoothed by a
    centred moving average against minibatch noise (:func:`smoothing_window`); the x axis label saying so."""
    import numpy as np

    n = min(len(h["step"]) for h in histories)
    steps = histories[0]["step"][:n]
    keys = [k for k in histories[0] if k.startswith(prefix + "/")]
    window, xlabel = smoothing_window(steps)

    def smooth(ys):
        ys = np.asarray(ys, dtype=float)
        ok = np.isfinite(ys)
        num = np.convolve(np.where(ok, ys, 0.0), np.ones(window), mode="same")
        den = np.convolve(ok.astype(float), np.ones(window), mode="same")
        return list(np.where(den > 0, num / np.maximum(den, 1), np.nan))

    with np.errstate(all="ignore"):
        curves = {
            k.split("/", 1)[1]: smooth(np.nanmean([h[k][:n] for h in histories if k in h], axis=0))
            for k in keys
        }
    return steps, curves, xlabel


def write_figures(sweep_dir: Path, runs: list[dict], table: dict) -> list[Path]:
    """curves.png (worst and average primary metric against the downstream N, mean over pre-training seeds
    with a 95% t-interval band), theory.png (convex: worst-case excess risk and sample complexity against the
    worst-case initial risk, ``_theory_figure``), weights.png, upstream_losses.png (per balancer, over pre-training steps,
    mean over seeds), figure3.png (MM-MAE) and downstream.png (each downstream task's primary metric per balancer,
    mean +- std over seeds); a heterogeneity map (runs with an override of a dial of ``runner.heterogeneity.DIALS``,
    with the dial's baseline) adds heterogeneity.csv and heterogeneity.png (``heterogeneity_frame``)."""
    import matplotlib

    matplotlib.use("Agg")

    sweep_dir = Path(sweep_dir)
    written: list[Path] = []
    curves = curve_frame(runs)
    if not curves.empty:
        written.append(_curves_figure(sweep_dir / "curves.png", curves, table["higher_is_better"]))
    theory = theory_frame(runs)
    if not theory.empty:
        written.append(_theory_figure(sweep_dir / "theory.png", theory, table.get("settings") or {}))
    written += _step_figures(sweep_dir, runs)
    dialled = heterogeneity_frame(runs)
    if not dialled.empty:  # the heterogeneity map (experiment=heterogeneity_*): its numbers and its figure
        dialled.to_csv(sweep_dir / "heterogeneity.csv", index=False)
        primary_n = (table.get("settings") or {}).get("primary_n")
        written.append(heterogeneity_figure(sweep_dir / "heterogeneity.png", dialled, primary_n, _save))
    # Figure 3 of the paper: each balancer's segmentation of the same fixed dev images (first seed)
    with_seg = [
        (r, label)
        for r, label in zip(runs, row_labels(runs))
        if (Path(r.get("_dir", "")) / "seg_pred.npy").exists()
    ]
    if with_seg:
        from finetune.figures import sweep_figure

        seed = min(int(r.get("seed", 0)) for r, _ in with_seg)
        chosen = {}
        for r, label in with_seg:
            if int(r.get("seed", 0)) == seed:
                chosen.setdefault(label, Path(r["_dir"]))
        written.append(sweep_figure([chosen[k] for k in sorted(chosen)], sweep_dir / "figure3.png"))
    tasks = [c for c in table["columns"] if c not in ("average", "worst")]
    if tasks and table["rows"]:
        written.append(_downstream_figure(sweep_dir / "downstream.png", table, tasks))
    return written


def _save(fig, path: Path, layout: bool = True) -> Path:
    """Save at the figures' resolution and close; ``layout=False``: the figure is already laid out."""
    import matplotlib.pyplot as plt

    if layout:
        fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _curves_figure(path: Path, curves, higher_is_better: bool) -> Path:
    """curves.png (:func:`draw_curves`)."""
    return _save(draw_curves(curves, higher_is_better), path, layout=False)


def _power_of_two(n: float) -> bool:
    return n >= 1 and float(n).is_integer() and int(n) & (int(n) - 1) == 0


def draw_curves(curves, higher_is_better: bool):
    """curves.png: the worst and the average primary metric of each row against the downstream N (log axis, a
    tick at every N of the grid; a dense grid labels the ends and the powers of two first, then every N with
    room for its label)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.6))
    ns = sorted(curves["N"].unique())
    for ax, m in zip(axes, MEASURES):
        for label in sorted(curves["row"].unique(), key=row_key):
            c = curves[(curves["row"] == label) & (curves["measure"] == m)].sort_values("N")
            (line,) = ax.plot(c["N"], c["mean"], marker="o", ms=3, lw=1.2, label=label)
            if c["half"].notna().any():  # 95% t-interval over pre-training seeds
                lo, hi = c["mean"] - c["half"], c["mean"] + c["half"]
                ax.fill_between(c["N"], lo, hi, color=line.get_color(), alpha=0.2, lw=0)
        ax.set_xscale("log")
        ax.set_xticks(ns, [f"{n:g}" for n in ns])
        ax.minorticks_off()
        ax.set_xlabel("downstream training samples N")
        ax.set_title("worst task" if m == "worst" else "average over tasks")
    arrow = "higher is better" if higher_is_better else "lower is better"
    axes[0].set_ylabel(f"primary metric ({arrow})")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    for ax in axes:
        thin_tick_labels(ax, prefer=_power_of_two)
    return fig


def _step_figures(sweep_dir: Path, runs: list[dict]) -> list[Path]:
    """weights.png and upstream_losses.png: each task's weight and loss over the pre-training steps, one panel
    per row (mean over its seeds), from the runs' CSV logs."""
    by_balancer: dict[str, list[dict]] = defaultdict(list)
    without = []
    for r, label in zip(runs, row_labels(runs)):
        h = read_history(r.get("_dir", ""))
        if h is not None:
            by_balancer[label].append(h)
        else:
            without.append(r.get("_dir", ""))
    if without:
        log.warning(
            "figures: %d of %d runs (e.g. %s) have no %s with train/loss and train/weight columns, so no "
            "weight or loss curves for them (logger=none writes no per-step history)",
            len(without), len(runs), without[0], METRICS_CSV,
        )  # fmt: skip
    if not by_balancer:
        return []
    return [
        _save(draw_step_figure(by_balancer, "weight"), Path(sweep_dir) / "weights.png"),
        _save(draw_step_figure(by_balancer, "loss"), Path(sweep_dir) / "upstream_losses.png"),
    ]


def draw_step_figure(histories: dict[str, list[dict]], prefix: str):
    """weights.png (``prefix="weight"``) or upstream_losses.png (``"loss"``, log y axis): one panel per row of
    ``histories`` (row -> its runs' :func:`read_history`), each task's curve averaged over the row's seeds and
    smoothed (the window in the x axis label, :func:`smoothing_window`)."""
    import matplotlib.pyplot as plt

    names = sorted(histories, key=row_key)
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.4), squeeze=False, sharey=True)
    for ax, b in zip(axes[0], names):
        steps, curves, xlabel = _mean_curves(histories[b], prefix)
        for task, ys in curves.items():
            ax.plot(steps, ys, label=task, lw=1.2)
        ax.set_title(b)
        ax.set_xlabel(xlabel)
        if prefix == "loss":
            ax.set_yscale("log")
    axes[0][0].set_ylabel("task weight" if prefix == "weight" else "task loss")
    axes[0][-1].legend(fontsize=7, loc="best", ncol=1 + len(curves) // 8)
    return fig


def _downstream_figure(path: Path, table: dict, tasks: list[str]) -> Path:
    """downstream.png: each downstream task's primary metric per balancer, mean +- std over seeds."""
    import matplotlib.pyplot as plt
    import numpy as np

    balancers = list(table["rows"])
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(tasks) * max(1, len(balancers)) / 2), 3.6))
    width = 0.8 / len(balancers)
    x = np.arange(len(tasks))
    for i, b in enumerate(balancers):
        row = table["rows"][b]
        means = [row[t][0] if t in row else np.nan for t in tasks]
        stds = [row[t][1] if t in row else 0 for t in tasks]
        ax.bar(x + (i - (len(balancers) - 1) / 2) * width, means, width, yerr=stds, label=b, capsize=2)
    ax.set_xticks(x, tasks, rotation=30, ha="right", fontsize=8)
    arrow = "higher is better" if table["higher_is_better"] else "lower is better"
    ax.set_ylabel(f"primary metric ({arrow})")
    ax.legend(fontsize=7)
    return _save(fig, path)
