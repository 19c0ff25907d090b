"""Which cue a PoS-BERT's next-sentence prediction reads, on the generated corpus::

    python run.py stage=nsp_cues nsp_cues.runs=[<run dir>,<run dir>,...]

For each pre-training run (its ``.hydra/config.yaml`` and ``checkpoints/last.ckpt``) this rebuilds the data,
classifies the held-back validation pairs and prints the NSP accuracy by kind of pair: true pairs (A and B
from one document, so one topic and one tense) and random pairs split by whether B's document has A's topic
and tense. A model that compares A with B gets random pairs of another topic or tense right far more often than
random pairs of the same topic and tense (which only the document's nouns can tell apart). Equal accuracies
over the random kinds mean the model reads something else: a cue the pair construction leaves, such as the
length or truncation of B (how ``data.nsp.random_b=sentences`` was found to be leaky). A run directory written
before the data options were grouped (``data.nsp_random_b``, ...) is read into the sections.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import torch
from hydra.errors import InstantiationException
from omegaconf import OmegaConf

from data.pos_options import nest_flat_options
from runner.checkpoints import restore_with_data
from utils.errors import ConfigError, DataError

KINDS = (
    "true (same document)",
    "random, same topic and tense",
    "random, same topic, other tense",
    "random, other topic, same tense",
    "random, other topic and tense",
)


def pair_kinds(datamodule) -> list[int]:
    """The index in ``KINDS`` of each validation pair of a set-up PoS-BERT datamodule."""
    labels = datamodule.document_labels()
    if labels is None:
        raise ConfigError(
            f"stage=nsp_cues needs the generated corpus (its documents' topics and tenses); the run read "
            f"{datamodule.corpus_name}."
        )
    docs, pairs = datamodule.sentence_docs, datamodule.val_set
    kinds = []
    for a, b in zip(pairs.a0, pairs.b0):
        da, db = int(docs[a]), int(docs[b])
        if da == db:
            kinds.append(0)
            continue
        (ta, sa), (tb, sb) = labels[da], labels[db]
        kinds.append(1 + 2 * (ta != tb) + (sa != sb))
    return kinds


@torch.no_grad()
def nsp_by_kind(datamodule, model) -> dict[str, tuple[int, float]]:
    """``{kind: (pairs, accuracy)}`` of the model's NSP on the validation pairs (the run's validation masks)."""
    kinds = pair_kinds(datamodule)
    model.eval()
    right, seen, i = Counter(), Counter(), 0
    for batch in datamodule.val_dataloader():
        out = model(
            batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], batch["masked_positions"]
        )
        ok = (out["nsp_logits"].argmax(-1) == batch["nsp_labels"]).tolist()
        for hit in ok:
            seen[kinds[i]] += 1
            right[kinds[i]] += int(hit)
            i += 1
    return {KINDS[k]: (seen[k], right[k] / seen[k]) for k in sorted(seen)}


def load_run(run_dir: Path):
    """``(datamodule, module)`` of a finished pre-training run directory."""
    config, ckpt = run_dir / ".hydra" / "config.yaml", run_dir / "checkpoints" / "last.ckpt"
    for f in (config, ckpt):
        if not f.is_file():
            raise DataError(
                f"{run_dir}: no {f.relative_to(run_dir)} (a pre-training run directory has both)."
            )
    cfg = OmegaConf.load(config)
    cfg.paths.output_dir = str(run_dir)
    if "nsp_match_sentences" in cfg.data:  # runs before data.nsp_random_b
        matched = cfg.data.pop("nsp_match_sentences")
        cfg.data.nsp_random_b = "sentences" if matched else "fill"
    if "pos_bert" in str(cfg.data.get("_target_", "")):
        nest_flat_options(cfg.data)  # runs before the data.corpus / nsp / ... sections
    if cfg.experiment != "pos_bert" and "pos_bert" not in str(cfg.module.get("_target_", "")):
        raise ConfigError(f"{run_dir}: stage=nsp_cues reads PoS-BERT runs, got experiment={cfg.experiment}.")
    try:
        return restore_with_data(cfg, str(ckpt))
    except InstantiationException as exc:
        reason = str(exc.__cause__ or exc).splitlines()[0]
        raise ConfigError(f"{config} does not build with this version of the code: {reason}") from None


def render(run_dir: Path, table: dict[str, tuple[int, float]]) -> str:
    lines = [f"## {run_dir}", "", "| pairs | n | NSP accuracy (95% interval) |", "|---|---|---|"]
    for kind, (n, acc) in table.items():
        half = 1.96 * math.sqrt(acc * (1 - acc) / n) if n else float("nan")
        lines.append(f"| {kind} | {n} | {acc:.3f} [{acc - half:.3f}, {acc + half:.3f}] |")
    n_all = sum(n for n, _ in table.values())
    overall = sum(n * acc for n, acc in table.values()) / n_all
    lines += ["", f"overall {overall:.3f} over {n_all} pairs"]
    return "\n".join(lines) + "\n"


def print_cues(runs) -> None:
    """``stage=nsp_cues``: print the table of each pre-training run folder of ``runs`` (``nsp_cues.runs``, a
    list or one folder)."""
    runs = [runs] if isinstance(runs, str) else list(runs or [])
    if not runs:
        raise ConfigError("stage=nsp_cues needs nsp_cues.runs=[<pre-training run dir>,...].")
    for run in runs:
        datamodule, module = load_run(Path(run))
        print(render(Path(run), nsp_by_kind(datamodule, module.model)))
