"""What the runner asks of every pre-training LightningModule (``runner/pipeline.py``).

:class:`PretrainingModule` is the contract, checked with ``isinstance`` where the runner builds a module: the
module owns the shared :class:`~pretrain.aggregation.LossAggregation` (``aggregator``), exports its encoder for
others (``export_pretrained``), prepares itself from the data it was pre-trained on before a checkpoint is loaded
for fine-tuning (``prepare_for_finetune``: e.g. the vocabulary sized to the tokenizer), says what a batch holds
for the throughput callback (``throughput_units``) and may leave an upstream evaluation for results.json
(``upstream_eval``); ``prepares_from_data`` says whether ``prepare_for_finetune`` reads the data. The step timer and the throughput callback stay with the runner, which passes their numbers
to results.json itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L

from pretrain.aggregation import LossAggregation


class PretrainingModule(L.LightningModule):
    """Base of the experiments' pre-training modules; subclasses set ``self.aggregator`` in ``__init__``."""

    aggregator: LossAggregation
    #: the module's evaluation of its upstream tasks on held-back data (results.json ``upstream_eval``), or None
    upstream_eval: dict[str, Any] | None = None
    #: whether ``prepare_for_finetune`` needs the prepared datamodule (the runner sets the data up only then)
    prepares_from_data: bool = False

    def prepare_for_finetune(self, datamodule) -> None:
        """Before a checkpoint is loaded into a fresh module (stage=finetune, resume): take from the prepared
        ``datamodule`` what the module's shapes depend on. Nothing by default."""

    def export_pretrained(self, out_dir: Path) -> None:
        """Write the pre-trained encoder (and what loading it needs) into ``out_dir``."""
        raise NotImplementedError(f"{type(self).__name__} does not export its encoder")

    # ``throughput_units(batch) -> {"samples": n, "tokens": m, ...}`` is optional: without it the throughput
    # callback counts the leading size of the batch's first tensor (runner/throughput.py).
