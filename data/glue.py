"""The real GLUE tasks of Table 1, from a local copy of the original GLUE distribution or from the hub.

Local files are read the way GLUE's own processors read them: tab-separated, **no quote character**
(quotes are text), MRPC's UTF-8 byte-order mark stripped, each task's own columns. A header is recognised by
its content, not its position (CoLA's files and a headerless copy keep their first row). Malformed rows are
handled per task as GLUE's processors do (QQP skips them, the others fail naming ``<file>:<line>``) unless
``downstream.skip_malformed`` says otherwise; skipped rows are counted in one warning per file.

Labels keep the hub's (``nyu-mll/glue``) order, so a model fine-tuned from either source means the same
thing (e.g. MNLI: entailment 0, neutral 1, contradiction 2).

Each task becomes a :class:`data.glue_like.TaskData` (the same format as the generated suite), keyed by
its GLUE leaderboard name (``CoLA``, ``SST-2``, ``MRPC``, ``STS-B``, ``QQP``, ``MNLI-m``, ``MNLI-mm``,
``QNLI``, ``RTE``), with the metrics of Table 1 (Matthews for CoLA, Spearman for STS-B, F1 for QQP and
MRPC, accuracy otherwise; the primary metric first).
"""

from __future__ import annotations

import csv
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from data.glue_like import Example, TaskData, TaskSpec
from utils.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GlueTask:
    """Where a GLUE task's text and label live, in the TSVs and on the hub."""

    name: str  # leaderboard name
    folder: str  # folder of the GLUE distribution
    hub_config: str  # nyu-mll/glue configuration
    dev_file: str  # dev file name in the folder
    hub_dev_split: str
    header: bool  # whether GLUE's train/dev TSVs start with a header row (dropped only if it looks like one)
    a_col: int  # column of the first sentence
    b_col: int | None  # column of the second sentence (None: single sentence)
    label_col: int  # column of the label (negative: from the end)
    labels: tuple[str, ...] | None  # label strings in hub order (None: regression)
    hub_a: str
    hub_b: str | None
    spec: TaskSpec
    header_names: tuple[str, ...] = ()  # column names of GLUE's header row (how a header is recognised)
    skips_malformed: bool = False  # GLUE's own processor skips malformed rows (QQP) instead of failing


def _spec(name, pair, num_labels, metrics, description):
    return TaskSpec(name, pair, num_labels, metrics, (), description)


MNLI_HEADER = ("sentence1", "sentence2", "gold_label")

GLUE_TASKS: dict[str, GlueTask] = {
    t.name: t
    for t in [
        GlueTask("CoLA", "CoLA", "cola", "dev.tsv", "validation", False, 3, None, 1, ("0", "1"), "sentence", None,
                 _spec("CoLA", False, 2, ("matthews", "accuracy"), "linguistic acceptability")),
        GlueTask("SST-2", "SST-2", "sst2", "dev.tsv", "validation", True, 0, None, 1, ("0", "1"), "sentence", None,
                 _spec("SST-2", False, 2, ("accuracy",), "sentiment"), ("sentence", "label")),
        GlueTask("MRPC", "MRPC", "mrpc", "dev.tsv", "validation", True, 3, 4, 0, ("0", "1"), "sentence1", "sentence2",
                 _spec("MRPC", True, 2, ("f1", "accuracy"), "paraphrase"), ("Quality", "#1 String", "#2 String")),
        GlueTask("STS-B", "STS-B", "stsb", "dev.tsv", "validation", True, 7, 8, -1, None, "sentence1", "sentence2",
                 _spec("STS-B", True, 1, ("spearman", "pearson"), "semantic similarity 0-5"),
                 ("sentence1", "sentence2", "score")),
        GlueTask("QQP", "QQP", "qqp", "dev.tsv", "validation", True, 3, 4, 5, ("0", "1"), "question1", "question2",
                 _spec("QQP", True, 2, ("f1", "accuracy"), "question paraphrase"),
                 ("question1", "question2", "is_duplicate"), skips_malformed=True),
        GlueTask("MNLI-m", "MNLI", "mnli", "dev_matched.tsv", "validation_matched", True, 8, 9, -1,
                 ("entailment", "neutral", "contradiction"), "premise", "hypothesis",
                 _spec("MNLI-m", True, 3, ("accuracy",), "entailment, matched genres"), MNLI_HEADER),
        GlueTask("MNLI-mm", "MNLI", "mnli", "dev_mismatched.tsv", "validation_mismatched", True, 8, 9, -1,
                 ("entailment", "neutral", "contradiction"), "premise", "hypothesis",
                 _spec("MNLI-mm", True, 3, ("accuracy",), "entailment, mismatched genres"), MNLI_HEADER),
        GlueTask("QNLI", "QNLI", "qnli", "dev.tsv", "validation", True, 1, 2, -1, ("entailment", "not_entailment"),
                 "question", "sentence", _spec("QNLI", True, 2, ("accuracy",), "question answering entailment"),
                 ("question", "sentence", "label")),
        GlueTask("RTE", "RTE", "rte", "dev.tsv", "validation", True, 1, 2, -1, ("entailment", "not_entailment"),
                 "sentence1", "sentence2", _spec("RTE", True, 2, ("accuracy",), "textual entailment"),
                 ("sentence1", "sentence2", "label")),
    ]
}  # fmt: skip

ALIASES = {
    "cola": "CoLA", "sst2": "SST-2", "sst-2": "SST-2", "mrpc": "MRPC", "stsb": "STS-B", "sts-b": "STS-B",
    "qqp": "QQP", "mnli": "MNLI-m", "mnli_matched": "MNLI-m", "mnli-m": "MNLI-m", "mnli_mismatched": "MNLI-mm",
    "mnli-mm": "MNLI-mm", "qnli": "QNLI", "rte": "RTE",
}  # fmt: skip


def resolve(name: str) -> GlueTask:
    key = name if name in GLUE_TASKS else ALIASES.get(name.lower())
    if key is None:
        raise DataError(f"downstream.tasks: unknown GLUE task {name!r}; choose from {', '.join(GLUE_TASKS)}.")
    return GLUE_TASKS[key]


def _columns_needed(task: GlueTask) -> int:
    text_cols = [task.a_col] + ([task.b_col] if task.b_col is not None else [])
    if task.label_col >= 0:
        return max(*text_cols, task.label_col) + 1
    return max(text_cols) + 1 - task.label_col  # the label is counted from the end: after the text columns


def _label(raw: str, task: GlueTask) -> float:
    """The label of a cell (hub order), or ``ValueError`` saying why it is not one."""
    raw = raw.strip()
    if task.labels is None:
        return float(raw)
    if raw in task.labels:
        return float(task.labels.index(raw))
    raise ValueError(f"label {raw!r} is not one of {list(task.labels)}")


def looks_like_header(row: list[str], task: GlueTask) -> bool:
    """Whether a first row is GLUE's header: its label column holds no label and it names a column of the
    task (``sentence1``, ``label``, ``is_duplicate``, ...). A headerless file's first row is an example."""
    if not task.header_names or len(row) < _columns_needed(task):
        return False
    try:
        _label(row[task.label_col], task)
        return False
    except ValueError:
        names = {n.lower() for n in task.header_names}
        return any(cell.strip().lower() in names for cell in row)


def read_tsv(
    path: Path, task: GlueTask, skip_malformed: bool | None = None, log_skipped: bool = True
) -> list[Example]:
    """Read one GLUE TSV. A first row that looks like the header (:func:`looks_like_header`) is dropped. A
    malformed row (too few columns, not a label) fails naming ``<file>:<line>``, or is skipped when
    ``skip_malformed`` is true; ``None`` does what GLUE's processor does for the task (QQP skips, the others
    fail). Skipped rows are counted in one warning per file (``log_skipped=False``: not again, when the
    suite's start-up check has already said it)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"GLUE task {task.name}: no file {path}.")
    skip = task.skips_malformed if skip_malformed is None else bool(skip_malformed)
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    needed = _columns_needed(task)
    examples: list[Example] = []
    skipped, first_skip = 0, ""
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = csv.reader(f, delimiter="\t", quotechar=None)
        for k, row in enumerate(rows):
            line_no = rows.line_num
            if k == 0 and looks_like_header(row, task):
                continue
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            try:
                if len(row) < needed:
                    raise IndexError(f"expected at least {needed} tab-separated columns, found {len(row)}")
                label = _label(row[task.label_col], task)
            except (IndexError, ValueError) as exc:
                if skip:
                    skipped += 1
                    first_skip = first_skip or f"line {line_no}: {exc}"
                    continue
                raise DataError(
                    f"{path}:{line_no}: malformed {task.name} row ({exc}); downstream.skip_malformed=true "
                    "skips such rows."
                ) from None
            b = row[task.b_col] if task.b_col is not None else None
            examples.append(Example(row[task.a_col], b, label))
    if skipped and log_skipped:
        log.warning(
            "%s: skipped %d malformed %s row(s) of %d (first at %s).",
            path,
            skipped,
            task.name,
            skipped + len(examples),
            first_skip,
        )
    if not examples:
        what = f"all {skipped} rows are malformed" if skipped else "empty file?"
        raise DataError(f"{path}: no examples ({what}).")
    return examples


def load_local(
    name: str, data_dir: str | Path, skip_malformed: bool | None = None, log_skipped: bool = True
) -> TaskData:
    """A task from ``<data_dir>/<TASK>/train.tsv`` and its dev file (``skip_malformed``, ``log_skipped``: see
    :func:`read_tsv`)."""
    task = resolve(name)
    folder = Path(data_dir) / task.folder
    if not folder.is_dir():
        raise DataError(
            f"GLUE task {task.name}: no folder {folder} (downstream.data_dir should hold the GLUE distribution's "
            f"task folders, e.g. {Path(data_dir) / 'RTE' / 'train.tsv'})."
        )
    dev = folder / task.dev_file
    if not dev.is_file():
        raise DataError(f"GLUE task {task.name}: {dev} is missing.")
    train = read_tsv(folder / "train.tsv", task, skip_malformed, log_skipped)
    return TaskData(spec=task.spec, train=train, dev=read_tsv(dev, task, skip_malformed, log_skipped))


def from_hub_split(split, task: GlueTask) -> list[Example]:
    """Examples from a ``datasets`` split of ``nyu-mll/glue`` (labels are already in hub order)."""
    out = []
    for row in split:
        label = row["label"]
        if task.labels is not None and int(label) < 0:  # hidden test labels
            continue
        out.append(Example(row[task.hub_a], row[task.hub_b] if task.hub_b else None, float(label)))
    return out


def _hub_dataset(task: GlueTask, dataset: str, cache_dir: str | None):
    """``nyu-mll/glue``'s configuration of ``task`` with its train and dev splits and columns checked; one
    sentence for anything that fails (offline, renamed, another dataset)."""
    try:
        from datasets import load_dataset

        ds = load_dataset(dataset, task.hub_config, cache_dir=cache_dir)
    except Exception as exc:  # noqa: BLE001 - offline, missing, renamed: one sentence for all
        raise DataError(
            f"GLUE task {task.name}: could not load {dataset}/{task.hub_config} from the hub or its cache "
            f"({type(exc).__name__}); use downstream.source=local downstream.data_dir=<GLUE folder> offline."
        ) from None
    columns = [c for c in (task.hub_a, task.hub_b, "label") if c]
    for split in ("train", task.hub_dev_split):
        if split not in ds:
            raise DataError(
                f"GLUE task {task.name}: {dataset}/{task.hub_config} has no split {split!r} "
                f"(it has {', '.join(ds)}); is downstream.hub_dataset a copy of nyu-mll/glue?"
            )
        missing = [c for c in columns if c not in ds[split].column_names]
        if missing:
            raise DataError(
                f"GLUE task {task.name}: {dataset}/{task.hub_config} split {split!r} lacks column(s) "
                f"{', '.join(missing)}; is downstream.hub_dataset a copy of nyu-mll/glue?"
            )
    return ds


def check_hub(name: str, dataset: str = "nyu-mll/glue", cache_dir: str | None = None) -> None:
    """Resolve a task's hub dataset (download it, or find it in the ``datasets`` cache) and check its splits and
    columns, without converting any row: the suite's start-up check."""
    _hub_dataset(resolve(name), dataset, cache_dir)


def load_hub(name: str, dataset: str = "nyu-mll/glue", cache_dir: str | None = None) -> TaskData:
    """A task from the hub (needs the network or a populated ``datasets`` cache)."""
    task = resolve(name)
    ds = _hub_dataset(task, dataset, cache_dir)
    return TaskData(
        spec=task.spec,
        train=from_hub_split(ds["train"], task),
        dev=from_hub_split(ds[task.hub_dev_split], task),
    )
