"""PoS-BERT pre-training (paper section 4.1): masked-word recovery grouped by part of speech, plus NSP.

One forward pass per step gives every task's loss: the MLM head runs on the gathered masked positions only,
and the cross-entropy of each masked word-piece is summed per POS group (``index_add``) with its count, so
the loss-aggregation callback reduces sums and counts across ranks. Tasks:

- the 9 groups of ``data.pos_grammar.GROUPS`` (always balanced);
- ``other`` (numbers, particles, punctuation, ...): balanced when ``include_other`` else added with weight 1;
- ``nsp``: a balanced task (``nsp: task``), added with the fixed weight ``nsp_weight`` (``nsp: add``; 1 as in
  BERT) or off (``nsp: off``).

Losses added with a fixed weight are the callback's ``extra_tasks``: still logged as ``train/loss/<name>``.

The shared representation that ``features``-mode balancers differentiate is the encoder output at the rows the
heads read: the masked positions (each of one POS group) and the [CLS] positions (NSP). Each row belongs to
one task, so the callback gets every task's gradient w.r.t. them from one backward (``FeatureRows``).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from data.pos_grammar import ALL_GROUPS, GROUPS, OTHER
from pretrain.aggregation import LossAggregation
from pretrain.base import PretrainingModule
from pretrain.feature_gradients import FeatureRows
from utils.errors import ConfigError, DataError
from utils.optim import warmup_decay_schedule

NSP_MODES = ("task", "add", "off")
#: the optimizer and schedule of a module built from Python without them (conf/module/optimizer/adamw_bert.yaml
#: and conf/module/scheduler/warmup_linear.yaml hold the same values)
ADAMW = partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.01, betas=(0.9, 0.999), eps=1e-6)
SCHEDULE = partial(warmup_decay_schedule, warmup_steps=50, min_lr_ratio=0.1, decay="linear")


def grouped_mlm_losses(
    logits: torch.Tensor, labels: torch.Tensor, task: torch.Tensor, num_groups: int = len(ALL_GROUPS)
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group sums of the cross-entropy of masked tokens and their counts: ``(G,)`` and ``(G,)``."""
    ce = F.cross_entropy(logits.float(), labels, reduction="none")
    sums = torch.zeros(num_groups, dtype=ce.dtype, device=ce.device).index_add(0, task, ce)
    counts = torch.bincount(task, minlength=num_groups)
    return sums, counts


class PosBertPretraining(PretrainingModule):
    """Pre-train :class:`models.bert.PosBert` with the POS-grouped MLM tasks (and NSP) balanced.

    Args:
        model: a :class:`models.bert.PosBert`.
        balancer: a Balancer or a ``num_tasks -> Balancer`` factory (Hydra ``_partial_``).
        aggregation: options of :class:`~pretrain.aggregation.LossAggregation`.
        include_other: balance the ``other`` group as a tenth task (else add it with weight 1).
        nsp: ``task`` (one more balanced task), ``add`` (fixed weight ``nsp_weight``) or ``off``.
        nsp_weight: NSP's weight in the scalar with ``nsp: add`` (BERT: 1).
        optimizer, scheduler: see :class:`~pretrain.base.PretrainingModule` (default: :data:`ADAMW`, no
            decay on biases and LayerNorm weights, and :data:`SCHEDULE`, linear warm-up then linear decay).
    """

    prepares_from_data = True  # prepare_for_finetune reads the datamodule
    no_decay = ("LayerNorm", "bias")
    # the last shared layer, and FeatureRows: the feature gradients of every task from one backward
    provides = frozenset({"shared_params", "features", "feature_grads"})

    def __init__(
        self,
        model,
        balancer,
        aggregation: dict | None = None,
        include_other: bool = False,
        nsp: str = "add",
        nsp_weight: float = 1.0,
        optimizer=ADAMW,
        scheduler=SCHEDULE,
    ) -> None:
        super().__init__(optimizer, scheduler)
        if nsp not in NSP_MODES:
            raise ConfigError(f"module.nsp must be one of {', '.join(NSP_MODES)}, got {nsp!r}.")
        self.model = model
        if float(nsp_weight) != 1.0 and nsp != "add":
            raise ConfigError(
                f"module.nsp_weight={nsp_weight} applies to module.nsp=add only (got module.nsp={nsp})."
            )
        if not float(nsp_weight) > 0:
            raise ConfigError(f"module.nsp_weight must be > 0, got {nsp_weight}.")
        self.include_other, self.nsp = bool(include_other), nsp
        self.task_names = (
            list(GROUPS) + ([OTHER] if self.include_other else []) + (["nsp"] if nsp == "task" else [])
        )
        extra = ([] if self.include_other else [OTHER]) + (["nsp"] if nsp == "add" else [])
        options = dict(aggregation or {})
        options["extra_tasks"] = list(options.get("extra_tasks", [])) + extra
        if nsp == "add":
            options["extra_weights"] = {**options.get("extra_weights", {}), "nsp": float(nsp_weight)}
        self.aggregator = LossAggregation.build(
            balancer, self.task_names, self.provides, type(self).__name__, **options
        )
        self.tokenizer = None
        self.reference_log_probs: torch.Tensor | None = None  # the data's context-free log p(v), (V,)
        self.upstream_eval: dict | None = None  # the last validation's upstream evaluation (results.json)
        self._val_acc: torch.Tensor | None = None

    # -- wiring ------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        self.prepare_for_finetune(self.trainer.datamodule)

    def prepare_for_finetune(self, datamodule) -> None:
        """Check the data against the model and keep the tokenizer (for export and fine-tuning)."""
        if datamodule is None:
            return
        if getattr(datamodule, "tokenizer", None) is None:
            datamodule.setup("fit")
        self.tokenizer = datamodule.tokenizer
        if self.nsp != "off" and getattr(datamodule, "n_documents", 2) < 2:
            raise DataError(
                f"{datamodule.corpus_name} is a single document, so next-sentence prediction has no "
                "negative pair (B from another document); set module.nsp=off or split the text into documents "
                "(blank lines, '= Title =' headings, or one file per document in a text_dir)."
            )
        if self.model.vocab_size != len(self.tokenizer) and self.model.size_to_tokenizer:
            self.model.resize_token_embeddings(len(self.tokenizer))
        reference = getattr(datamodule, "context_free_reference", None) or {}
        if reference:
            self.reference_log_probs = datamodule.unigram_log_probs
            self.aggregator.default_reference(
                reference, "the corpus's context-free reference (upstream_eval)"
            )
        max_pos = self.model.max_positions
        if datamodule.max_length > max_pos:
            raise ConfigError(
                f"data.max_length={datamodule.max_length} is longer than the model's positions "
                f"(model.max_position_embeddings={max_pos})."
            )
        if len(self.tokenizer) > self.model.vocab_size:
            raise ConfigError(
                f"model.vocab_size={self.model.vocab_size} is smaller than the tokenizer's {len(self.tokenizer)} "
                f"pieces; set model.vocab_size={len(self.tokenizer)}."
            )

    # -- losses ------------------------------------------------------------------------------------------
    def _forward_losses(self, batch) -> tuple[dict, dict]:
        out = self.model(
            batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], batch["masked_positions"]
        )
        sums, counts = grouped_mlm_losses(out["mlm_logits"], batch["mlm_labels"], batch["mlm_task"])
        losses = {g: (sums[i], counts[i]) for i, g in enumerate(ALL_GROUPS)}
        if self.nsp != "off":
            nsp = F.cross_entropy(out["nsp_logits"].float(), batch["nsp_labels"], reduction="sum")
            losses["nsp"] = (nsp, batch["nsp_labels"].numel())
        return losses, out

    def training_step(self, batch, batch_idx: int):
        losses, out = self._forward_losses(batch)
        shared = list(self.model.last_shared_layer().parameters())
        features = FeatureRows(out["rows"], self._row_tasks(batch))
        return self.aggregator(self, losses, shared_params=shared, features=features)

    def _row_tasks(self, batch) -> torch.Tensor:
        """For each row of the model's ``rows`` (masked positions, then [CLS] positions), the index of the
        balanced task that reads it, or -1 (a group added with weight 1, or NSP when not balanced)."""
        index = {t: i for i, t in enumerate(self.task_names)}
        device = batch["mlm_task"].device
        by_group = torch.tensor([index.get(g, -1) for g in ALL_GROUPS], dtype=torch.long, device=device)
        nsp = torch.full(
            (batch["input_ids"].shape[0],), index.get("nsp", -1), dtype=torch.long, device=device
        )
        return torch.cat([by_group[batch["mlm_task"]], nsp])

    def on_validation_epoch_start(self) -> None:
        # per group: loss sum, reference sum, targets (rows 0-2); NSP correct / pairs in row 3 (columns 0, 1)
        self._val_acc = torch.zeros(4, len(ALL_GROUPS), dtype=torch.float64, device=self.device)

    def _accumulate_upstream(self, batch, out, losses) -> None:
        acc = self._val_acc
        for i, g in enumerate(ALL_GROUPS):
            acc[0, i] += losses[g][0].detach().double()
            acc[2, i] += float(losses[g][1])
        if self.reference_log_probs is not None:
            ref = -self.reference_log_probs.to(self.device)[batch["mlm_labels"]].double()
            acc[1].index_add_(0, batch["mlm_task"], ref)
        if "nsp_logits" in out:
            acc[3, 0] += (out["nsp_logits"].argmax(-1) == batch["nsp_labels"]).sum().double()
            acc[3, 1] += batch["nsp_labels"].numel()
        if "nsp" in losses:
            acc[3, 2] += losses["nsp"][0].detach().double()

    def on_validation_epoch_end(self) -> None:
        """The upstream evaluation on the held-back validation pairs (fixed masks): NSP accuracy and, per POS
        group, the masked-word loss, the context-free reference and ``context_gain = reference - loss``."""
        if self._val_acc is None or self.trainer.sanity_checking:
            return
        acc = self.trainer.strategy.reduce(self._val_acc, reduce_op="sum")
        groups = {}
        for i, g in enumerate(ALL_GROUPS):
            n = float(acc[2, i])
            if n == 0:
                continue
            row = {"loss": float(acc[0, i]) / n, "targets": int(n)}
            if self.reference_log_probs is not None:
                row["reference"] = float(acc[1, i]) / n
                row["context_gain"] = row["reference"] - row["loss"]
                self.log(f"val/context_gain/{g}", row["context_gain"], sync_dist=False)
            groups[g] = row
        result = {"step": int(self.global_step), "groups": groups}
        means = {g: row["loss"] for g, row in groups.items()}
        if float(acc[3, 1]) > 0:
            result["nsp_accuracy"] = float(acc[3, 0]) / float(acc[3, 1])
            result["nsp_pairs"] = int(acc[3, 1])
            self.log("val/nsp_acc", result["nsp_accuracy"], sync_dist=False)
            if self.nsp != "off":
                means["nsp"] = float(acc[3, 2]) / float(acc[3, 1])
        # the validation losses from the global sums (the one collective above, made by every rank): a loss
        # logged with sync_dist only where a rank's shard has that group's targets would mismatch the collectives
        for name, value in means.items():
            self.log(f"val/loss/{name}", value, sync_dist=False)
        balanced = [means[t] for t in self.task_names if t in means]
        if balanced:
            self.log("val/loss_worst", max(balanced), sync_dist=False)
            self.log("val/loss_mean", sum(balanced) / len(balanced), sync_dist=False)
        gains = [groups[g]["context_gain"] for g in GROUPS if g in groups and "context_gain" in groups[g]]
        if gains:
            result["min_context_gain"] = min(gains)
        self.upstream_eval = result

    def validation_step(self, batch, batch_idx: int) -> None:
        """Accumulates the sums the epoch's end reduces once and logs (``on_validation_epoch_end``)."""
        losses, out = self._forward_losses(batch)
        if self._val_acc is None:  # called outside a validation loop
            self.on_validation_epoch_start()
        self._accumulate_upstream(batch, out, losses)

    # -- throughput -------------------------------------------------------------------------------------
    def throughput_units(self, batch) -> dict[str, int]:
        """What a training batch holds, for the throughput callback: NSP pairs (samples) and their non-padding
        word-pieces (tokens)."""
        return {"samples": int(batch["input_ids"].shape[0]), "tokens": int(batch["attention_mask"].sum())}

    # -- export ------------------------------------------------------------------------------------------
    def export_pretrained(self, out_dir: Path) -> None:
        """Save the encoder with ``save_pretrained`` (plus the tokenizer): ``AutoModel.from_pretrained`` loads it."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        from transformers.utils import logging as hf_logging

        shown = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # no "Writing model shards" bar for a one-file model
        try:
            self.model.bert.save_pretrained(str(out_dir))
        finally:
            if shown:
                hf_logging.enable_progress_bar()
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(str(out_dir))
