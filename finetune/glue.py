"""GLUE-style fine-tuning of the pre-trained PoS-BERT encoder on the generated suite (``data.glue_like``).

:class:`GlueFinetune` is one LightningModule for sentence and sentence-pair classification and regression:
a linear head on the pooled [CLS] output of a copy of the pre-trained ``BertModel``, metrics from
``torchmetrics``. :class:`GlueLikeSuite` is the ``downstream`` object of the pipeline: ``run()`` fine-tunes
every task from the same pre-trained weights and returns each task's dev metrics.
"""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
import torchmetrics
from torch import nn
from torch.utils.data import DataLoader, Subset

from data.glue_like import TASKS, Example, TaskSpec, generate_task
from finetune.protocol import (
    CachedBatches,
    CachedItems,
    DownstreamSuite,
    adapt,
    cache_features,
    check_protocol,
    clip_sizes,
    nested_subset,
    parse_seeds,
    parse_train_samples,
    protocol_record,
    task_seed,
)
from utils.errors import ConfigError, DataError
from utils.optim import decay_groups, estimated_steps, warmup_decay_schedule

log = logging.getLogger(__name__)


def make_metrics(spec: TaskSpec) -> nn.ModuleDict:
    """The GLUE metrics of a task, by name (``spec.metrics``)."""
    factories = {
        "accuracy": lambda: torchmetrics.Accuracy(
            task="binary" if spec.num_labels == 2 else "multiclass", num_classes=spec.num_labels
        ),
        "f1": lambda: torchmetrics.F1Score(task="binary"),
        "matthews": lambda: torchmetrics.MatthewsCorrCoef(task="binary"),
        "spearman": lambda: torchmetrics.SpearmanCorrCoef(),
        "pearson": lambda: torchmetrics.PearsonCorrCoef(),
    }
    return nn.ModuleDict({m: factories[m]() for m in spec.metrics})


def probe_features(encoder: nn.Module, batch: dict) -> torch.Tensor:
    """The linear probe's features of a batch: the pooled [CLS] output and the mean of the last layer over the
    non-padding tokens, concatenated (``2 * hidden``)."""
    out = encoder(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        token_type_ids=batch["token_type_ids"],
    )
    mask = batch["attention_mask"].unsqueeze(-1).to(out.last_hidden_state.dtype)
    mean = (out.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1)
    return torch.cat([out.pooler_output, mean], dim=-1)


class GlueFinetune(L.LightningModule):
    """Classification / regression head on the pooled [CLS] output of a BERT encoder.

    Args:
        encoder: a ``transformers.BertModel`` (copied by the caller; trained in place), or ``None`` for a
            linear probe, whose batches carry the frozen encoder's ``features`` (:func:`probe_features`).
        spec: the task (pair or single, ``num_labels`` 1 for regression, metric names).
        lr, weight_decay, warmup_ratio: AdamW with linear warm-up over ``warmup_ratio`` of the steps, then
            linear decay to 0.
        dropout: dropout before the head.
        probe_dim: the width of the cached features (linear probe): the head is then a non-affine
            BatchNorm (MAE's linear probe) and a linear layer on them.
    """

    def __init__(
        self,
        encoder: nn.Module,
        spec: TaskSpec,
        lr: float = 2e-4,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.1,
        dropout: float = 0.1,
        probe_dim: int | None = None,
    ):
        super().__init__()
        self.encoder, self.spec = encoder, spec
        self.lr, self.weight_decay, self.warmup_ratio = float(lr), float(weight_decay), float(warmup_ratio)
        hidden = probe_dim or encoder.config.hidden_size
        self.norm = nn.BatchNorm1d(hidden, affine=False, eps=1e-6) if probe_dim else nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, spec.num_labels)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        self.metrics = make_metrics(spec)
        self.results: dict[str, float] = {}
        self.scored = 0  # dev rows scored by the last validation

    def forward(self, input_ids, attention_mask, token_type_ids) -> torch.Tensor:
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return self._head(out.pooler_output)

    def _head(self, features: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.dropout(self.norm(features)))
        return logits.squeeze(-1) if self.spec.regression else logits

    def _logits(self, batch) -> torch.Tensor:
        if "features" in batch:  # linear probe: the frozen encoder's cached features
            return self._head(batch["features"])
        return self(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])

    def _loss(self, logits, labels) -> torch.Tensor:
        if self.spec.regression:
            return F.mse_loss(logits.float(), labels.float())
        return F.cross_entropy(logits.float(), labels.long())

    def training_step(self, batch, batch_idx: int):
        logits = self._logits(batch)
        loss = self._loss(logits, batch["labels"])
        self.log(f"downstream/{self.spec.name}/train_loss", loss, batch_size=len(logits), on_step=True)
        return loss

    def on_validation_epoch_start(self) -> None:
        self.scored = 0

    def validation_step(self, batch, batch_idx: int) -> None:
        logits = self._logits(batch)
        labels = batch["labels"]
        self.scored += len(labels)
        self.log(f"downstream/{self.spec.name}/dev_loss", self._loss(logits, labels), batch_size=len(logits))
        preds = logits.float() if self.spec.regression else logits.argmax(-1)
        target = labels.float() if self.spec.regression else labels.long()
        for m in self.metrics.values():
            m.update(preds, target)

    def on_validation_epoch_end(self) -> None:
        results = {}
        for name, m in self.metrics.items():
            value = float(m.compute())
            m.reset()
            results[name] = 0.0 if math.isnan(value) else value  # constant predictions: no correlation
            self.log(f"downstream/{self.spec.name}/{name}", results[name])
        self.results = results

    def configure_optimizers(self):
        groups = decay_groups(self.named_parameters(), self.weight_decay, no_decay=("LayerNorm",))
        opt = torch.optim.AdamW(groups, lr=self.lr)
        total = estimated_steps(self)
        # linear warm-up over warmup_ratio of the steps, then linear decay to 0 (utils/optim.py)
        sched = warmup_decay_schedule(opt, int(self.warmup_ratio * total), total, 0.0, "linear")
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class EncodedTask(torch.utils.data.Dataset):
    """Tokenized examples of one task (sentence or ``[CLS] a [SEP] b [SEP]``), truncated to ``max_length``."""

    def __init__(self, examples: list[Example], tokenizer, max_length: int, regression: bool):
        a = [e.a for e in examples]
        b = [e.b for e in examples] if examples and examples[0].b is not None else None
        enc = tokenizer(a, b, truncation=True, max_length=max_length, return_token_type_ids=True)
        self.input_ids, self.token_type_ids = enc["input_ids"], enc["token_type_ids"]
        dtype = torch.float32 if regression else torch.long
        self.labels = torch.tensor([e.label for e in examples], dtype=dtype)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.input_ids[i], self.token_type_ids[i], self.labels[i]


def pad_collate(pad_id: int):
    def collate(items):
        length = max(len(x[0]) for x in items)
        bsz = len(items)
        ids = torch.full((bsz, length), pad_id, dtype=torch.long)
        types = torch.zeros((bsz, length), dtype=torch.long)
        mask = torch.zeros((bsz, length), dtype=torch.long)
        for i, (x, t, _) in enumerate(items):
            ids[i, : len(x)] = torch.as_tensor(x)
            types[i, : len(t)] = torch.as_tensor(t)
            mask[i, : len(x)] = 1
        return {
            "input_ids": ids,
            "token_type_ids": types,
            "attention_mask": mask,
            "labels": torch.stack([x[2] for x in items]),
        }

    return collate


def _check_source(tasks: list[str], source: str, data_dir: str | None, skip_malformed: bool | None) -> None:
    """``downstream.source`` and what it needs: known task names for ``generated``, each task's train and dev
    files under ``data_dir`` for ``local`` (failing before pre-training, naming what is missing and where)."""
    if source not in ("generated", "local", "hub"):
        raise ConfigError(f"downstream.source must be generated, local or hub, got {source!r}.")
    if source == "local" and not data_dir:
        raise ConfigError("downstream.data_dir must name the GLUE folder when downstream.source=local.")
    if source == "generated":
        unknown = [t for t in tasks if t not in TASKS]
        if unknown or not tasks:
            raise ConfigError(
                f"downstream.tasks: unknown or no tasks {unknown or tasks}; choose from {', '.join(TASKS)}."
            )
    else:
        from data.glue import resolve

        for t in tasks:
            task = resolve(t)
            if source == "local":
                root = Path(data_dir)
                if not root.is_dir():
                    raise DataError(f"downstream.data_dir: no GLUE folder at {root}.")
                for split in ("train.tsv", task.dev_file):
                    if not (root / task.folder / split).is_file():
                        raise DataError(
                            f"downstream.data_dir: GLUE task {task.name} needs {root / task.folder / split}, "
                            "which is missing."
                        )
    if skip_malformed not in (None, True, False):
        raise ConfigError(f"downstream.skip_malformed must be null, true or false, got {skip_malformed!r}.")


def _probe_options(probe: dict[str, Any] | None) -> dict[str, Any]:
    """``downstream.probe`` over ``PROBE_DEFAULTS``, refusing a key that is not an option."""
    probe = {**PROBE_DEFAULTS, **dict(probe or {})}
    unknown = sorted(set(probe) - set(PROBE_DEFAULTS))
    if unknown:
        raise ConfigError(f"downstream.probe.{unknown[0]} is not an option; use {', '.join(PROBE_DEFAULTS)}.")
    return probe


class GlueLikeSuite(DownstreamSuite):
    """The GLUE-shaped suite: adapt every task from the same pre-trained encoder, return dev metrics.

    Args:
        tasks: task names (``data.glue_like.TASKS`` when generated, GLUE names otherwise).
        source: ``generated`` (``data.glue_like``, offline), ``local`` (the GLUE distribution's TSVs under
            ``data_dir``, read by ``data.glue``) or ``hub`` (``hub_dataset`` through ``datasets``).
        data_dir: the GLUE folder for ``source=local``.
        hub_dataset: the hub dataset for ``source=hub``.
        skip_malformed: ``source=local``: ``None`` handles malformed TSV rows as GLUE does per task (QQP skips
            them, the others fail naming ``<file>:<line>``); ``True`` / ``False`` skip / fail for every task.
        n_train, n_dev: generated examples per task and split (``generated`` only).
        train_size, dev_size: ``local`` / ``hub``: at most the first this many training / dev rows of each
            task (``None``: every row).
        protocol: ``finetune`` (the encoder and the head) or ``linear_probe`` (frozen encoder, features
            computed once per task, the head alone; ``probe`` sets its training), see ``finetune.protocol``.
        train_samples: ``None`` (all), N, or a list of N (a curve over nested training subsets).
        finetune_seeds: each task is adapted once per seed from the same pre-trained weights.
        epochs, batch_size, lr, weight_decay, warmup_ratio, dropout: fine-tuning hyper-parameters.
        probe: the linear probe's ``epochs``, ``batch_size``, ``lr``, ``weight_decay``.
        max_steps: cap on optimizer steps per task (null: ``epochs`` only).
        max_length: truncation of the tokenized inputs (<= the encoder's positions).
        seed: seeds the generated data and the nested training subsets.
    """

    def __init__(
        self,
        tasks: list[str] | tuple[str, ...] = tuple(TASKS),
        source: str = "generated",
        data_dir: str | None = None,
        hub_dataset: str = "nyu-mll/glue",
        skip_malformed: bool | None = None,
        n_train: int = 3000,
        n_dev: int = 500,
        train_size: int | None = None,
        dev_size: int | None = None,
        protocol: str = "finetune",
        train_samples: Any = None,
        finetune_seeds: Any = (0,),
        epochs: int = 3,
        batch_size: int = 32,
        lr: float = 5e-4,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.1,
        dropout: float = 0.1,
        probe: dict[str, Any] | None = None,
        max_steps: int | None = None,
        max_length: int = 64,
        seed: int = 0,
    ):
        tasks = list(tasks)
        _check_source(tasks, source, data_dir, skip_malformed)
        self.source, self.data_dir, self.hub_dataset = source, data_dir, hub_dataset
        self.skip_malformed = skip_malformed
        self.protocol = check_protocol(protocol)
        self.sizes, self.curve = parse_train_samples(train_samples)
        self.seeds = parse_seeds(finetune_seeds)
        probe = _probe_options(probe)
        for key, value in (("train_size", train_size), ("dev_size", dev_size)):
            if value is not None and int(value) < 1:
                raise ConfigError(f"downstream.{key}={value} must be >= 1 (or null: every row).")
        self.tasks, self.n_train, self.n_dev = tasks, int(n_train), int(n_dev)
        self.train_size = None if train_size is None else int(train_size)
        self.dev_size = None if dev_size is None else int(dev_size)
        # the training rows known before any is read: generated ones, or the train_size cap of a real task
        available = self.n_train if source == "generated" else self.train_size
        self.sizes = clip_sizes(self.sizes, available, "training examples")
        self.epochs, self.batch_size, self.max_steps = int(epochs), int(batch_size), max_steps
        self.hparams = {
            "lr": lr,
            "weight_decay": weight_decay,
            "warmup_ratio": warmup_ratio,
            "dropout": dropout,
        }
        self.probe = probe
        self.max_length, self.seed = int(max_length), int(seed)
        self.extra_results = {"protocol": protocol_record(self.protocol, self.sizes, self.curve, self.seeds)}
        self._validated: set[str] = set()  # tasks whose files validate() has parsed (and reported)

    def validate(self) -> None:
        """Before pre-training: ``source=local`` reads and parses both TSVs of every task (a missing file or a
        malformed row stops the run naming ``<file>:<line>``; skipped rows are counted and logged here, once);
        ``source=hub`` resolves every task's dataset (network or ``datasets`` cache) and checks its splits and
        columns; ``generated`` has nothing to read."""
        if self.source == "generated":
            return
        from data.glue import check_hub, load_local

        for name in self.tasks:
            if self.source == "local":
                data = load_local(name, self.data_dir, self.skip_malformed)
                log.info("GLUE task %s: %d train / %d dev rows read", name, len(data.train), len(data.dev))
                self._validated.add(name)
            else:
                check_hub(name, self.hub_dataset)

    def load(self, name: str):
        """The task's train/dev examples (``data.glue_like.TaskData``) from the configured source."""
        if self.source == "generated":
            return generate_task(name, self.n_train, self.n_dev, self.seed)
        from data.glue import load_hub, load_local

        if self.source == "local":
            data = load_local(
                name, self.data_dir, self.skip_malformed, log_skipped=name not in self._validated
            )
        else:
            data = load_hub(name, self.hub_dataset)
        data.train, data.dev = data.train[: self.train_size], data.dev[: self.dev_size]
        return data

    def run(self, pretrained, make_trainer, out_dir: Path) -> dict[str, dict[str, Any]]:
        tokenizer = getattr(pretrained, "tokenizer", None)
        if tokenizer is None:
            raise ConfigError(
                "downstream: the pre-trained module has no tokenizer (was the data module set up?)."
            )
        encoder = pretrained.model.bert
        max_length = min(self.max_length, encoder.config.max_position_embeddings)
        results: dict[str, dict[str, Any]] = {}
        for k, name in enumerate(self.tasks):
            results[name] = self.adapt_task(k, name, encoder, tokenizer, max_length, make_trainer)
        return results

    def adapt_task(self, k: int, name: str, encoder, tokenizer, max_length: int, make_trainer) -> dict:
        """Adapt task ``name`` (index ``k``) for every N and fine-tuning seed (``finetune.protocol.adapt``)."""
        data = self.load(name)
        spec = data.spec
        collate = pad_collate(tokenizer.pad_token_id)
        train = EncodedTask(data.train, tokenizer, max_length, spec.regression)
        dev = EncodedTask(data.dev, tokenizer, max_length, spec.regression)
        eval_bs = max(64, self.batch_size)
        dev_dl = DataLoader(dev, batch_size=eval_bs, shuffle=False, collate_fn=collate)
        probe = self.protocol == "linear_probe"
        if probe:  # the frozen encoder's features, once per task
            frozen = copy.deepcopy(encoder).eval()

            def featurize(batch):
                return probe_features(frozen, batch)

            train_all = DataLoader(train, batch_size=eval_bs, shuffle=False, collate_fn=collate)
            train_feats = cache_features(train_all, featurize, ["labels"])
            dev_dl = DataLoader(CachedBatches(cache_features(dev_dl, featurize, ["labels"])), batch_size=None)
            del frozen

        def fit_and_score(n: int | None, seed: int) -> dict[str, float]:
            indices = nested_subset(len(train), n, self.seed, f"training examples in {name}")
            torch.manual_seed(task_seed(seed, k))
            g = torch.Generator().manual_seed(task_seed(seed, k))
            if probe:
                module = GlueFinetune(
                    None,
                    spec,
                    lr=self.probe["lr"],
                    weight_decay=self.probe["weight_decay"],
                    warmup_ratio=0.0,
                    dropout=0.0,
                    probe_dim=train_feats[0]["features"].shape[-1],
                )
                items, batch_size, collate_fn = (
                    CachedItems(train_feats, indices),
                    self.probe["batch_size"],
                    None,
                )
                epochs = int(self.probe["epochs"])
            else:
                module = GlueFinetune(copy.deepcopy(encoder).train(), spec, **self.hparams)
                items, batch_size, collate_fn = Subset(train, indices), self.batch_size, collate
                epochs = self.epochs
            train_dl = DataLoader(
                items, batch_size=int(batch_size), shuffle=True, collate_fn=collate_fn, generator=g
            )
            trainer = make_trainer(max_epochs=epochs, max_steps=self.max_steps, name=name)
            trainer.fit(module, train_dataloaders=train_dl)
            trainer.validate(module, dataloaders=dev_dl, verbose=False)
            log.info("adapted %s (N=%s, seed %d): %s", name, n or len(train), seed, module.results)
            return {**module.results, "dev_rows": module.scored}

        return {
            **adapt(fit_and_score, self.sizes, self.seeds, spec.primary, self.curve),
            "primary": spec.primary,
            "higher_is_better": True,
        }


#: the linear probe's head training (``downstream.probe``)
PROBE_DEFAULTS = {"epochs": 30, "batch_size": 128, "lr": 3e-3, "weight_decay": 0.0}
