"""``model.compile=true``: compile a model's encoder in place with ``torch.compile``."""

from __future__ import annotations

from torch import nn


def compile_in_place(module: nn.Module) -> nn.Module:
    """Compile ``module`` in place (``nn.Module.compile``) and return it.

    Its forward runs through ``torch.compile`` (inductor) from its first call on; its ``state_dict`` keys do
    not change (no ``_orig_mod.`` prefix: checkpoints and exports are the same with and without compile), and a
    ``copy.deepcopy`` of it (what the downstream suites adapt) runs eagerly.

    AOTAutograd's donated buffers are switched off for the whole process: the gradient-based balancers
    (GradNorm, ExcessMTL, DB-MTL, the torchjd aggregators) back-propagate through part of the graph more than
    once per step (``retain_graph=True``), which a backward compiled with donated buffers refuses.
    """
    import torch._functorch.config as functorch_config

    functorch_config.donated_buffer = False
    module.compile()
    return module


def compiled(module: nn.Module) -> bool:
    """Whether ``module`` was compiled in place (its calls go through ``torch.compile``)."""
    return getattr(module, "_compiled_call_impl", None) is not None


__all__ = ["compile_in_place", "compiled"]
