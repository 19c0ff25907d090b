"""What a run prints: live progress of every fit, and a console without repeated lines or known noise.

- :class:`StepProgress` is the progress bar of every Trainer (``conf/callbacks``): a live bar with ETA on a
  terminal, one concise log line every ``every_n_steps`` optimizer steps otherwise (a sweep's job log).
- :func:`quiet_console` (called once per run) drops the third-party warnings a run is known to raise, by
  message and module, prints Lightning's info lines once per run, and stops Lightning printing every
  line a second time beside Hydra's log handler.
- :func:`print_upstream` and :func:`print_next_steps` end a run: the upstream tasks' final losses, the worst of
  them and the weights' entropy; the path of results.json and the command of the random-init control.
"""

from __future__ import annotations

import logging
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks.progress import ProgressBar

log = logging.getLogger("progress")

#: (message regex, category, module regex) of warnings that say nothing to a user of this project
KNOWN_WARNINGS = (
    # torchdata's StatefulDataLoader calls a deprecated torch function on every iterator
    (r"'set_vital' is deprecated", UserWarning, r"torchdata\.stateful_dataloader"),
    # Lightning's pytree copy builds torch's deprecated LeafSpec
    (
        r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        FutureWarning,
        r"lightning\.pytorch\.utilities\._pytree",
    ),
    # the suites fit a head first and score every dev row afterwards with trainer.validate
    (
        r"You defined a `validation_step` but have no `val_dataloader`",
        UserWarning,
        r"lightning\.pytorch\.trainer\.configuration_validator",
    ),
    # Spearman keeps the dev set's predictions: a few hundred numbers here
    (r"Metric `SpearmanCorrcoef` will save all targets and predictions", UserWarning, r"torchmetrics"),
)

#: Lightning info lines dropped altogether (advertisements)
_DROPPED_INFO = ("💡 Tip:",)


class _OncePerRun(logging.Filter):
    """Pass each distinct message once (Lightning repeats its device and loop lines for every Trainer)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith(_DROPPED_INFO) or message in self.seen:
            return False
        self.seen.add(message)
        return True


_once = _OncePerRun()


def quiet_console() -> None:
    """Filter the known warnings, and print each Lightning info line once per run, through one handler."""
    for message, category, module in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    lightning_logger = logging.getLogger("lightning")
    if logging.getLogger().handlers:
        # under Hydra the root handler (console + run.log) prints Lightning's records; Lightning's own console
        # handler would print each of them a second time
        for handler in list(lightning_logger.handlers):
            if type(handler) is logging.StreamHandler:
                lightning_logger.removeHandler(handler)
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    _once.seen.clear()  # a sweep's jobs may share the process: once per run
    if _once not in rank_zero.filters:
        rank_zero.addFilter(_once)


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def format_seconds(seconds: float) -> str:
    """``7m58s``-style duration (the end-of-run wall time per stage, the progress ETA)."""
    return _duration(seconds)


def fit_status(metrics: dict[str, Any]) -> str:
    """What a line says about the model: the worst upstream task, its loss and the weights' entropy during
    pre-training (``train/loss_worst``, ``train/loss/<task>``, ``train/weight_entropy`` of the aggregation
    callback); the training loss of a downstream fit (``downstream/<task>/train_loss``)."""
    values = {}
    for k, v in metrics.items():
        try:
            values[k] = float(v)
        except (TypeError, ValueError, RuntimeError):  # not a scalar
            continue
    parts = []
    worst = values.get("train/loss_worst")
    if worst is not None:
        tasks = [k for k, v in values.items() if k.startswith("train/loss/") and v == worst]
        name = tasks[0].removeprefix("train/loss/") if tasks else "task"
        parts.append(f"worst {name} {worst:.4g}")
    if "train/weight_entropy" in values:
        parts.append(f"H(w) {values['train/weight_entropy']:.3g}")
    losses = [v for k, v in values.items() if k.endswith("/train_loss")]
    if losses and worst is None:
        parts.append(f"loss {losses[-1]:.4g}")
    return " | ".join(parts)


class StepProgress(ProgressBar):
    """Progress of a fit in optimizer steps, with ETA: a rich live bar on a terminal, else a log line every
    ``every_n_steps`` steps (and at the last step), at most one per ``min_interval_s`` seconds.

    The line reads e.g. ``pretrain step 1200/3000 (40%) | 6.2 steps/s | ETA 4m50s | worst noun 3.21 |
    H(w) 2.19``; a downstream fit adds its epoch (``downstream cola: epoch 3/30 step 96/720 ...``).

    Args:
        label: what the fit is (``pretrain``; the pipeline appends the downstream task's name).
        every_n_steps: non-terminal output: one line every n optimizer steps.
        min_interval_s: non-terminal output: at least this many seconds between two lines.
        mode: ``auto`` (bar on a terminal, lines otherwise), ``bar`` or ``line``.
        transient: the bar disappears when the fit ends (downstream fits).
    """

    def __init__(
        self,
        label: str = "fit",
        every_n_steps: int = 100,
        min_interval_s: float = 0.0,
        mode: str = "auto",
        transient: bool = False,
    ) -> None:
        super().__init__()
        if mode not in ("auto", "bar", "line"):
            raise ValueError(f"progress mode must be auto, bar or line, got {mode!r}")
        self.label = label
        self.every_n_steps = max(int(every_n_steps), 1)
        self.min_interval_s = float(min_interval_s)
        self.mode = mode
        self.transient = bool(transient)
        self._enabled = True
        self._bar = None
        self._task = None

    # ProgressBar's interface
    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def use_bar(self) -> bool:
        return self.mode == "bar" or (self.mode == "auto" and sys.stdout.isatty())

    def _total(self, trainer) -> int | None:
        total = trainer.estimated_stepping_batches
        return int(total) if total is not None and math.isfinite(total) and total > 0 else None

    def on_train_start(self, trainer, pl_module) -> None:
        if not self._enabled:
            return
        self._start_step = trainer.global_step  # a resumed fit: the rate counts this fit's steps only
        self._t0 = self._last = time.monotonic()
        self._printed_step = -1
        self._total_steps = self._total(trainer)
        if self.use_bar:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[status]}"),
                transient=self.transient,
            )
            self._bar.start()
            self._task = self._bar.add_task(
                self.label, total=self._total_steps, completed=trainer.global_step, status=""
            )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self._enabled:
            return
        step = trainer.global_step
        if self._bar is not None:
            fields = {}
            now = time.monotonic()
            if now - self._last >= 1.0:  # reading the metrics syncs a GPU: once a second
                self._last = now
                fields = {
                    "status": fit_status(trainer.callback_metrics),
                    "description": self._describe(trainer),
                }
            self._bar.update(self._task, completed=step, **fields)
            return
        last = self._total_steps is not None and step >= self._total_steps
        if step == self._printed_step or not (step % self.every_n_steps == 0 or last):
            return
        now = time.monotonic()
        if now - self._last < self.min_interval_s:
            return
        self._last, self._printed_step = now, step
        log.info("%s", self.line(trainer, step, now))

    def line(self, trainer, step: int, now: float) -> str:
        done = step - self._start_step
        rate = done / max(now - self._t0, 1e-9)
        total = self._total_steps
        where = f"step {step}/{total} ({100 * step / total:.0f}%)" if total else f"step {step}"
        parts = [f"{self._describe(trainer)} {where}", f"{rate:.3g} steps/s"]
        if total and rate > 0:
            parts.append(f"ETA {_duration((total - step) / rate)}")
        status = fit_status(trainer.callback_metrics)
        if status:
            parts.append(status)
        return " | ".join(parts)

    def _describe(self, trainer) -> str:
        if trainer.max_epochs is not None and trainer.max_epochs > 0:
            return f"{self.label}: epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"
        return self.label

    def _stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = self._task = None

    def on_train_end(self, trainer, pl_module) -> None:
        self._stop()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._stop()

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._stop()


#: overrides the random-init control replaces: it picks its own balancer, stage and checkpoint
_CONTROL_REPLACES = ("balancer", "stage", "pretrained_ckpt", "ckpt_path")


def control_command(results: dict) -> str | None:
    """The command that runs the random-init control of this run: ``python run.py`` with the run's own
    overrides (results.json ``overrides``), its balancer, stage and checkpoint choices replaced by
    ``balancer=random_init``, and its seed; None when the run is that control."""
    import shlex

    if results.get("balancer") == "random_init":
        return None

    def key(override: str) -> str:
        return override.split("=", 1)[0].lstrip("+~")

    kept = [
        o
        for o in results.get("overrides") or []
        if not any(key(o) == k or key(o).startswith((f"{k}.", f"{k}/")) for k in _CONTROL_REPLACES)
    ]
    if "seed" in results and not any(key(o) == "seed" for o in kept):
        kept.append(f"seed={results['seed']}")
    return shlex.join(["python", "run.py", *kept, "balancer=random_init"])


def print_upstream(results: dict) -> None:
    """The pre-training side of a run's end: each upstream task's final loss and weight, the worst of the tasks
    the balancer weighs (highest final loss), and the weights' entropy; nothing for a run that did not
    pre-train (``upstream`` empty)."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    upstream, weights = results.get("upstream") or {}, results.get("weights") or {}
    if not upstream:
        return
    final = weights.get("final") or {}
    balanced = {t: v for t, v in upstream.items() if t in final} or upstream
    worst = max(balanced, key=balanced.get)
    table = Table(title="upstream (pre-training)")
    table.add_column("upstream task")
    table.add_column("final loss", justify="right")
    table.add_column("final weight", justify="right")
    for task, loss in upstream.items():
        name = Text.assemble((task, "bold"), " (worst)") if task == worst else Text(task)
        weight = f"{final[task]:.3g}" if task in final else "not balanced"
        table.add_row(name, f"{loss:.4g}", weight)
    console = Console()
    console.print(table)
    loss = f" (final loss {upstream[worst]:.4g})"
    console.print(Text.assemble("worst upstream task: ", (worst, "bold"), loss))
    if "mean_entropy" in weights:
        mean, uniform = weights["mean_entropy"], weights["max_entropy"]
        scale = f"(uniform: {uniform:.3g}, one task: 0)"
        console.print(f"weights' entropy: {mean:.3g} nats, mean over pre-training {scale}", soft_wrap=True)


def print_next_steps(results: dict, results_path: Path) -> None:
    """Where the run's numbers are (results.json) and the command of its random-init control, one unwrapped line
    each (copied as printed)."""
    from rich.console import Console
    from rich.text import Text

    console = Console()
    console.print(Text.assemble("results: ", str(Path(results_path).resolve())), soft_wrap=True)
    command = control_command(results)
    if command:
        label = "random-init control (same seed, no pre-training): "
        console.print(Text.assemble(label, (command, "bold")), soft_wrap=True)
