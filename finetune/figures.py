"""Figure 3 of the paper: segmentations of fixed dev images drawn side by side, per run and per sweep.

:func:`save_figure3` draws one run's input | segmentation | ground truth grid and saves the arrays a sweep
needs (``seg_pred.npy``, ``figure3_data.npz``); :func:`sweep_figure` puts every run (balancer) of a sweep side by
side from those files; :func:`log_figure` sends a PNG to the loggers that take images. The suites
(finetune/vision.py, finetune/nyuv2.py) choose the images and call :func:`save_figure3`.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from data.scenes import CLASS_NAMES, RGB_MEAN, RGB_STD
from utils.errors import ConfigError

log = logging.getLogger(__name__)


def save_figure3(
    module: L.LightningModule,
    batch: dict[str, torch.Tensor],
    out_dir: Path,
    tag: str,
    class_names: Sequence[str],
    ignore_index: int | None = None,
    trainer: L.Trainer | None = None,
) -> dict:
    """One run's Figure 3: input | this run's segmentation (``module(batch)``, argmax over classes) | ground
    truth for the images of ``batch`` (``rgb`` normalised, ``semseg``, optional ``aspect``), saved as
    ``figure3_<tag>.png`` with the raw predictions in ``seg_pred.npy`` and the inputs, ground truth (void:
    ``ignore_index``, stored as :data:`VOID`), class names and aspect ratios in ``figure3_data.npz``; the PNG
    goes to the trainer's image loggers. Returns the three paths."""
    import matplotlib

    matplotlib.use("Agg")

    aspect = np.asarray(batch.pop("aspect", torch.ones(len(batch["rgb"]))), dtype=np.float32)
    module.eval()
    with torch.no_grad():
        pred = module({k: v.to(module.device) for k, v in batch.items()}).argmax(1).cpu().numpy()
    rgb = (batch["rgb"].permute(0, 2, 3, 1).numpy() * RGB_STD + RGB_MEAN).clip(0, 1)
    gt = batch["semseg"].numpy()
    if ignore_index is not None:
        gt = np.where(gt == ignore_index, VOID, gt)
    names = list(class_names)
    np.save(out_dir / "seg_pred.npy", pred.astype(np.uint8))
    np.savez_compressed(
        out_dir / "figure3_data.npz",
        rgb=rgb.astype(np.float32),
        gt=gt.astype(np.uint8),
        indices=np.arange(len(gt)),
        class_names=np.array(names),
        aspect=aspect,
    )
    path = save_grid(draw_figure3(rgb, [(tag, pred)], gt, names, aspect), out_dir / f"figure3_{tag}.png")
    log_figure(trainer, path, tag)
    return {
        "png": str(path),
        "pred": str(out_dir / "seg_pred.npy"),
        "data": str(out_dir / "figure3_data.npz"),
    }


def balancer_name(pretrained: Any) -> str:
    """The run's balancer choice (Hydra's ``balancer=...``), else the balancer's class name."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return str(HydraConfig.get().runtime.choices["balancer"])
    except Exception:  # noqa: BLE001 - outside a Hydra app
        agg = getattr(pretrained, "aggregator", None)
        return type(agg.balancer).__name__.lower() if agg is not None else "unknown"


def log_figure(trainer: L.Trainer, path: Path, tag: str) -> None:
    """Send the PNG to every logger that takes images (wandb, TensorBoard); others are skipped."""
    for logger in getattr(trainer, "loggers", []) or []:
        try:
            if hasattr(logger, "log_image"):
                logger.log_image(key=f"figure3/{tag}", images=[str(path)])
            elif hasattr(getattr(logger, "experiment", None), "add_image"):
                import matplotlib.image as mpimg

                img = mpimg.imread(path)[..., :3]
                logger.experiment.add_image(f"figure3/{tag}", img, dataformats="HWC")
        except Exception as exc:  # noqa: BLE001 - a figure must never kill a run
            log.warning("could not log the figure to %s: %s", type(logger).__name__, exc)


#: class id of void pixels in figure3_data.npz's ground truth (drawn black)
VOID = 255


def segmentation_cmap(num_classes: int):
    """One distinct colour per class id (tab10 up to 10 classes, then tab20 + tab20b + tab20c, then hsv);
    void (any id >= num_classes) is drawn black."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    if num_classes <= 10:
        colors = list(plt.get_cmap("tab10").colors[:num_classes])
    elif num_classes <= 60:
        colors = [c for name in ("tab20", "tab20b", "tab20c") for c in plt.get_cmap(name).colors][
            :num_classes
        ]
    else:
        colors = [plt.get_cmap("hsv")(k / num_classes) for k in range(num_classes)]
    return ListedColormap(colors).with_extremes(bad="black")


def draw_segmentation_grid(axes, rgb, columns, gt, cmap, aspect=None) -> None:
    """Figure 3's grid: one row per image, columns input | each (title, predictions) | ground truth; row i is
    drawn with height / width ``aspect[i]`` (the original image's, when the model saw it resized to a square)."""
    for i in range(len(gt)):
        panels = [("input", rgb[i])] + [(name, pred[i]) for name, pred in columns] + [("ground truth", gt[i])]
        shape = gt[i].shape
        ratio = "equal" if aspect is None else float(aspect[i]) * shape[1] / shape[0]
        for j, (title, img) in enumerate(panels):
            ax = axes[i, j]
            if j == 0:
                ax.imshow(img, aspect=ratio)
            else:
                ax.imshow(
                    np.ma.masked_greater_equal(img, cmap.N),
                    cmap=cmap,
                    vmin=0,
                    vmax=cmap.N - 1,
                    interpolation="nearest",
                    aspect=ratio,
                )
            ax.set_axis_off()
            if i == 0:
                ax.set_title(title)


def sweep_figure(run_dirs: Sequence[Path], out_path: Path) -> Path:
    """Figure 3 of the paper for a sweep: input | one segmentation per run (balancer) | ground truth.

    Reads each run's ``seg_pred.npy``, ``figure3_data.npz`` and ``results.json`` (for the balancer name);
    the runs must share the seed (hence the same fixed dev images)."""
    import matplotlib

    matplotlib.use("Agg")

    run_dirs = [Path(d) for d in run_dirs]
    if not run_dirs:
        raise ConfigError("sweep_figure needs at least one run directory.")
    data = np.load(run_dirs[0] / "figure3_data.npz")
    rgb, gt = data["rgb"], data["gt"]
    names = [str(c) for c in data["class_names"]] if "class_names" in data else list(CLASS_NAMES)
    aspect = data["aspect"] if "aspect" in data else None
    columns = []
    for d in run_dirs:
        pred = np.load(d / "seg_pred.npy")
        if pred.shape != gt.shape or not np.array_equal(np.load(d / "figure3_data.npz")["gt"], gt):
            raise ConfigError(
                f"{d}: its figure images differ from {run_dirs[0]}'s (another seed or image size)."
            )
        name = json.loads((d / "results.json").read_text()).get("balancer", d.name)
        columns.append((name, pred))
    return save_grid(draw_figure3(rgb, columns, gt, names, aspect), Path(out_path))


#: Figure 3's sizes in inches: the width of one image, the gap between two images, the titles above the first
#: row, the margin; and the legend's number of columns
PANEL_IN, GAP_IN, TITLE_IN, MARGIN_IN, LEGEND_COLUMNS = 2.0, 0.08, 0.3, 0.05, 5


def draw_figure3(rgb, columns, gt, class_names: Sequence[str], aspect=None):
    """Figure 3: input | each (title, predictions) of ``columns`` | ground truth, one row per image, each row as
    tall as its images (height / width ``aspect[i]``, else the arrays' own) so that no blank band separates
    them, and right under the last row a legend of the classes any panel shows."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    names = list(class_names)
    cmap = segmentation_cmap(len(names))
    shown = np.unique(np.concatenate([gt.ravel(), *(pred.ravel() for _, pred in columns)]))
    handles = [Patch(color=cmap(int(c)), label=names[int(c)]) for c in shown if c < len(names)]
    n, k = len(gt), len(columns) + 2
    heights = [float(aspect[i]) if aspect is not None else gt[i].shape[0] / gt[i].shape[1] for i in range(n)]
    legend_in = 0.2 * math.ceil(len(handles) / LEGEND_COLUMNS)
    width = k * PANEL_IN + (k - 1) * GAP_IN + 2 * MARGIN_IN
    grid = PANEL_IN * sum(heights) + (n - 1) * GAP_IN
    below = MARGIN_IN + legend_in + GAP_IN
    height = TITLE_IN + grid + below
    fig, axes = plt.subplots(
        n, k, figsize=(width, height), squeeze=False, gridspec_kw={"height_ratios": heights}
    )
    fig.subplots_adjust(
        left=MARGIN_IN / width, right=1 - MARGIN_IN / width, top=1 - TITLE_IN / height, bottom=below / height,
        wspace=GAP_IN / PANEL_IN, hspace=GAP_IN * n / (PANEL_IN * sum(heights)),
    )  # fmt: skip
    draw_segmentation_grid(axes, rgb, columns, gt, cmap, aspect)
    fig.legend(
        handles=handles, loc="upper center", bbox_to_anchor=(0.5, (below - GAP_IN) / height),
        ncol=LEGEND_COLUMNS, fontsize=7, frameon=False, borderaxespad=0,
    )  # fmt: skip
    return fig


def save_grid(fig, path: Path) -> Path:
    """Save Figure 3 cropped to what it draws (no blank margin left by the images' fixed aspect) and close it."""
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=100, bbox_inches="tight", pad_inches=0.05)
    plt.close(fig)
    return path
