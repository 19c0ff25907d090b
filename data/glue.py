"""The real GLUE tasks of Table 1, from a local copy of the original GLUE distribution or from the hub.

Local files are read the way GLUE's own processors read them: tab-separated, **no quote character**
(quotes are text), CoLA's train/dev without a header, MRPC's UTF-8 byte-order mark stripped, each task's
own columns. Labels keep the hub's (``nyu-mll/glue``) order, so a model fine-tuned from either source
means the same thing (e.g. MNLI: entailment 0, neutral 1, contradiction 2).

Each task becomes a :class:`data.glue_like.TaskData` (the same format as the generated suite), keyed by
its GLUE leaderboard name (``CoLA``, ``SST-2``, ``MRPC``, ``STS-B``, ``QQP``, ``MNLI-m``, ``MNLI-mm``,
``QNLI``, ``RTE``), with the metrics of Table 1 (Matthews for CoLA, Spearman for STS-B, F1 for QQP and
MRPC, accuracy otherwise; the primary metric first).
"""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from pathlib import Path

from data.glue_like import Example, TaskData, TaskSpec
from pretrain.errors import DataError


@dataclass(frozen=True)
class GlueTask:
    """Where a GLUE task's text and label live, in the TSVs and on the hub."""

    name: str  # leaderboard name
    folder: str  # folder of the GLUE distribution
    hub_config: str  # nyu-mll/glue configuration
    dev_file: str  # dev file name in the folder
    hub_dev_split: str
    header: bool  # whether train/dev TSVs start with a header row
    a_col: int  # column of the first sentence
    b_col: int | None  # column of the second sentence (None: single sentence)
    label_col: int  # column of the label (negative: from the end)
    labels: tuple[str, ...] | None  # label strings in hub order (None: regression)
    hub_a: str
    hub_b: str | None
    spec: TaskSpec


def _spec(name, pair, num_labels, metrics, description):
    return TaskSpec(name, pair, num_labels, metrics, (), description)


GLUE_TASKS: dict[str, GlueTask] = {
    t.name: t
    for t in [
        GlueTask("CoLA", "CoLA", "cola", "dev.tsv", "validation", False, 3, None, 1, ("0", "1"), "sentence", None,
                 _spec("CoLA", False, 2, ("matthews", "accuracy"), "linguistic acceptability")),
        GlueTask("SST-2", "SST-2", "sst2", "dev.tsv", "validation", True, 0, None, 1, ("0", "1"), "sentence", None,
                 _spec("SST-2", False, 2, ("accuracy",), "sentiment")),
        GlueTask("MRPC", "MRPC", "mrpc", "dev.tsv", "validation", True, 3, 4, 0, ("0", "1"), "sentence1", "sentence2",
                 _spec("MRPC", True, 2, ("f1", "accuracy"), "paraphrase")),
        GlueTask("STS-B", "STS-B", "stsb", "dev.tsv", "validation", True, 7, 8, -1, None, "sentence1", "sentence2",
                 _spec("STS-B", True, 1, ("spearman", "pearson"), "semantic similarity 0-5")),
        GlueTask("QQP", "QQP", "qqp", "dev.tsv", "validation", True, 3, 4, 5, ("0", "1"), "question1", "question2",
                 _spec("QQP", True, 2, ("f1", "accuracy"), "question paraphrase")),
        GlueTask("MNLI-m", "MNLI", "mnli", "dev_matched.tsv", "validation_matched", True, 8, 9, -1,
                 ("entailment", "neutral", "contradiction"), "premise", "hypothesis",
                 _spec("MNLI-m", True, 3, ("accuracy",), "entailment, matched genres")),
        GlueTask("MNLI-mm", "MNLI", "mnli", "dev_mismatched.tsv", "validation_mismatched", True, 8, 9, -1,
                 ("entailment", "neutral", "contradiction"), "premise", "hypothesis",
                 _spec("MNLI-mm", True, 3, ("accuracy",), "entailment, mismatched genres")),
        GlueTask("QNLI", "QNLI", "qnli", "dev.tsv", "validation", True, 1, 2, -1, ("entailment", "not_entailment"),
                 "question", "sentence", _spec("QNLI", True, 2, ("accuracy",), "question answering entailment")),
        GlueTask("RTE", "RTE", "rte", "dev.tsv", "validation", True, 1, 2, -1, ("entailment", "not_entailment"),
                 "sentence1", "sentence2", _spec("RTE", True, 2, ("accuracy",), "textual entailment")),
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


def read_tsv(path: Path, task: GlueTask, skip_malformed: bool = False) -> list[Example]:
    """Read one GLUE TSV; a malformed row fails naming the file and line (or is skipped, if asked)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"GLUE task {task.name}: no file {path}.")
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    text_cols = [task.a_col] + ([task.b_col] if task.b_col is not None else [])
    if task.label_col >= 0:
        needed = max(*text_cols, task.label_col) + 1
    else:  # the label is counted from the end: it must stand after the text columns
        needed = max(text_cols) + 1 - task.label_col
    examples: list[Example] = []
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = csv.reader(f, delimiter="\t", quotechar=None)
        for line_no, row in enumerate(rows, start=1):
            if line_no == 1 and task.header:
                continue
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            try:
                if len(row) < needed:
                    raise IndexError(f"expected at least {needed} tab-separated columns, found {len(row)}")
                raw = row[task.label_col].strip()
                if task.labels is None:
                    label = float(raw)
                elif raw in task.labels:
                    label = float(task.labels.index(raw))
                else:
                    raise ValueError(f"label {raw!r} is not one of {list(task.labels)}")
            except (IndexError, ValueError) as exc:
                if skip_malformed:
                    continue
                raise DataError(f"{path}:{line_no}: malformed {task.name} row ({exc}).") from None
            b = row[task.b_col] if task.b_col is not None else None
            examples.append(Example(row[task.a_col], b, label))
    if not examples:
        raise DataError(f"{path}: no examples (empty file?).")
    return examples


def load_local(name: str, data_dir: str | Path, skip_malformed: bool = False) -> TaskData:
    """A task from ``<data_dir>/<TASK>/train.tsv`` and its dev file."""
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
    train = read_tsv(folder / "train.tsv", task, skip_malformed)
    return TaskData(spec=task.spec, train=train, dev=read_tsv(dev, task, skip_malformed))


def from_hub_split(split, task: GlueTask) -> list[Example]:
    """Examples from a ``datasets`` split of ``nyu-mll/glue`` (labels are already in hub order)."""
    out = []
    for row in split:
        label = row["label"]
        if task.labels is not None and int(label) < 0:  # hidden test labels
            continue
        out.append(Example(row[task.hub_a], row[task.hub_b] if task.hub_b else None, float(label)))
    return out


def load_hub(name: str, dataset: str = "nyu-mll/glue", cache_dir: str | None = None) -> TaskData:
    """A task from the hub (needs the network or a populated ``datasets`` cache)."""
    task = resolve(name)
    try:
        from datasets import load_dataset

        ds = load_dataset(dataset, task.hub_config, cache_dir=cache_dir)
    except Exception as exc:  # noqa: BLE001 - offline, missing, renamed: one sentence for all
        raise DataError(
            f"GLUE task {task.name}: could not load {dataset}/{task.hub_config} from the hub or its cache "
            f"({type(exc).__name__}); use downstream.source=local downstream.data_dir=<GLUE folder> offline."
        ) from None
    return TaskData(
        spec=task.spec,
        train=from_hub_split(ds["train"], task),
        dev=from_hub_split(ds[task.hub_dev_split], task),
    )
