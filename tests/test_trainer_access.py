"""``utils.trainer.trainer_of``: a module's Trainer through Lightning's public API, None without one."""

import lightning as L
import pytest
import torch

from utils.optim import estimated_steps
from utils.trainer import trainer_of


def test_a_module_without_a_trainer_gives_none_where_lightning_raises():
    module = L.LightningModule()
    with pytest.raises(RuntimeError, match="not attached to a `Trainer`"):
        _ = module.trainer  # Lightning's own behaviour, which trainer_of turns into None
    assert trainer_of(module) is None
    assert trainer_of(None) is None
    assert trainer_of(torch.nn.Linear(2, 2)) is None  # not a LightningModule
    assert estimated_steps(module) == 0  # no trainer: no known length, constant after the warm-up


def test_an_attached_trainer_is_returned_and_other_errors_propagate():
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=7)
    module = L.LightningModule()
    module.trainer = trainer
    assert trainer_of(module) is trainer

    class Broken(L.LightningModule):
        @property
        def trainer(self):
            raise RuntimeError("the trainer's strategy failed")

    with pytest.raises(RuntimeError, match="strategy failed"):
        trainer_of(Broken())
