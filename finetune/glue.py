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
from torch.utils.data import DataLoader

from data.glue_like import TASKS, Example, TaskSpec, generate_task
from pretrain.errors import ConfigError, DataError

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


class GlueFinetune(L.LightningModule):
    """Classification / regression head on the pooled [CLS] output of a BERT encoder.

    Args:
        encoder: a ``transformers.BertModel`` (copied by the caller; trained in place).
        spec: the task (pair or single, ``num_labels`` 1 for regression, metric names).
        lr, weight_decay, warmup_ratio: AdamW with linear warm-up over ``warmup_ratio`` of the steps, then
            linear decay to 0.
        dropout: dropout before the head.
    """

    def __init__(
        self,
        encoder: nn.Module,
        spec: TaskSpec,
        lr: float = 2e-4,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.1,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.encoder, self.spec = encoder, spec
        self.lr, self.weight_decay, self.warmup_ratio = float(lr), float(weight_decay), float(warmup_ratio)
        hidden = encoder.config.hidden_size
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, spec.num_labels)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        self.metrics = make_metrics(spec)
        self.results: dict[str, float] = {}

    def forward(self, input_ids, attention_mask, token_type_ids) -> torch.Tensor:
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        logits = self.head(self.dropout(out.pooler_output))
        return logits.squeeze(-1) if self.spec.regression else logits

    def _loss(self, logits, labels) -> torch.Tensor:
        if self.spec.regression:
            return F.mse_loss(logits.float(), labels.float())
        return F.cross_entropy(logits.float(), labels.long())

    def training_step(self, batch, batch_idx: int):
        logits = self(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        loss = self._loss(logits, batch["labels"])
        self.log(f"finetune/{self.spec.name}/train_loss", loss, batch_size=len(logits), on_step=True)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        logits = self(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        labels = batch["labels"]
        self.log(f"finetune/{self.spec.name}/dev_loss", self._loss(logits, labels), batch_size=len(logits))
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
            self.log(f"finetune/{self.spec.name}/{name}", results[name])
        self.results = results

    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            (no_decay if p.ndim < 2 or "LayerNorm" in name else decay).append(p)
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.lr,
        )
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else 0
        total = int(total) if total and total != float("inf") else 0
        warmup = int(self.warmup_ratio * total)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / max(1, warmup)
            if total <= warmup:
                return 1.0
            return max(0.0, (total - step) / max(1, total - warmup))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
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


class GlueLikeSuite:
    """The GLUE-shaped suite: fine-tune every task from the same pre-trained encoder, return dev metrics.

    Args:
        tasks: task names (``data.glue_like.TASKS`` when generated, GLUE names otherwise).
        source: ``generated`` (``data.glue_like``, offline), ``local`` (the GLUE distribution's TSVs under
            ``data_dir``, read by ``data.glue``) or ``hub`` (``hub_dataset`` through ``datasets``).
        data_dir: the GLUE folder for ``source=local``.
        hub_dataset: the hub dataset for ``source=hub``.
        n_train, n_dev: generated examples per task and split (``generated`` only).
        epochs, batch_size, lr, weight_decay, warmup_ratio, dropout: fine-tuning hyper-parameters.
        max_steps: cap on optimizer steps per task (null: ``epochs`` only).
        max_length: truncation of the tokenized inputs (<= the encoder's positions).
        seed: seeds the generated data and each task's head.
        smoke: a few steps and a few dev batches per task.
    """

    def __init__(
        self,
        tasks: list[str] | tuple[str, ...] = tuple(TASKS),
        source: str = "generated",
        data_dir: str | None = None,
        hub_dataset: str = "nyu-mll/glue",
        n_train: int = 3000,
        n_dev: int = 500,
        epochs: int = 3,
        batch_size: int = 32,
        lr: float = 5e-4,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.1,
        dropout: float = 0.1,
        max_steps: int | None = None,
        max_length: int = 64,
        seed: int = 0,
        smoke: bool = False,
    ):
        tasks = list(tasks)
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
                if source == "local":  # fail before pre-training, naming what is missing and where
                    root = Path(data_dir)
                    if not root.is_dir():
                        raise DataError(f"downstream.data_dir: no GLUE folder at {root}.")
                    for split in ("train.tsv", task.dev_file):
                        if not (root / task.folder / split).is_file():
                            raise DataError(
                                f"downstream.data_dir: GLUE task {task.name} needs {root / task.folder / split}, "
                                "which is missing."
                            )
        self.source, self.data_dir, self.hub_dataset = source, data_dir, hub_dataset
        if smoke:
            n_train, n_dev, max_steps, batch_size = min(n_train, 48), min(n_dev, 32), 3, min(batch_size, 16)
        self.tasks, self.n_train, self.n_dev = tasks, int(n_train), int(n_dev)
        self.epochs, self.batch_size, self.max_steps = int(epochs), int(batch_size), max_steps
        self.hparams = {
            "lr": lr,
            "weight_decay": weight_decay,
            "warmup_ratio": warmup_ratio,
            "dropout": dropout,
        }
        self.max_length, self.seed, self.smoke = int(max_length), int(seed), bool(smoke)

    def load(self, name: str):
        """The task's train/dev examples (``data.glue_like.TaskData``) from the configured source."""
        if self.source == "generated":
            return generate_task(name, self.n_train, self.n_dev, self.seed)
        from data.glue import load_hub, load_local

        data = load_local(name, self.data_dir) if self.source == "local" else load_hub(name, self.hub_dataset)
        if self.smoke:
            data.train, data.dev = data.train[: self.n_train], data.dev[: self.n_dev]
        return data

    def run(self, pretrained, make_trainer, out_dir: Path) -> dict[str, dict[str, Any]]:
        tokenizer = getattr(pretrained, "tokenizer", None)
        if tokenizer is None:
            raise ConfigError(
                "downstream: the pre-trained module has no tokenizer (was the data module set up?)."
            )
        encoder = pretrained.model.bert
        max_length = min(self.max_length, encoder.config.max_position_embeddings)
        collate = pad_collate(tokenizer.pad_token_id)
        results: dict[str, dict[str, Any]] = {}
        for k, name in enumerate(self.tasks):
            data = self.load(name)
            spec = data.spec
            train = EncodedTask(data.train, tokenizer, max_length, spec.regression)
            dev = EncodedTask(data.dev, tokenizer, max_length, spec.regression)
            g = torch.Generator()
            g.manual_seed(self.seed + k)
            train_dl = DataLoader(
                train, batch_size=self.batch_size, shuffle=True, collate_fn=collate, generator=g
            )
            dev_dl = DataLoader(dev, batch_size=max(64, self.batch_size), shuffle=False, collate_fn=collate)
            torch.manual_seed(self.seed + 1000 + k)
            module = GlueFinetune(copy.deepcopy(encoder).train(), spec, **self.hparams)
            trainer = make_trainer(max_epochs=self.epochs, max_steps=self.max_steps, name=name)
            trainer.fit(module, train_dataloaders=train_dl)
            trainer.validate(module, dataloaders=dev_dl, verbose=False)
            results[name] = {
                "metrics": dict(module.results),
                "primary": spec.primary,
                "higher_is_better": True,
            }
            log.info("fine-tuned %s: %s", name, module.results)
        return results
