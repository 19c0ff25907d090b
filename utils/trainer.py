"""The Lightning ``Trainer`` a module is attached to, read through Lightning's public API."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule, Trainer


def trainer_of(module: Any) -> Trainer | None:
    """``module.trainer``; None where ``module`` is not a LightningModule (None, a plain ``nn.Module``) or is
    one used without a trainer (called directly, as in a custom training loop or a test), where Lightning 2.x's
    ``LightningModule.trainer`` raises ``RuntimeError("<Module> is not attached to a `Trainer`.")``."""
    if not isinstance(module, LightningModule):
        return None
    try:
        return module.trainer
    except RuntimeError as error:
        if "not attached to a `Trainer`" not in str(error):
            raise
        return None
