"""Task balancers: the T per-task losses of a step in, task weights and one scalar to back-propagate out.

Pure PyTorch: no Lightning, no model code. Every balancer is a small ``nn.Module`` so that its state
(learnable parameters *and* running statistics, kept as buffers) rides in ``state_dict()`` and a resumed
run continues exactly.

The package exports every balancer (``pretrain.balancers.X``, the ``_target_`` of ``conf/balancer/*.yaml``):
``base`` holds the base class and the loss-value balancers of the paper (none, vanilla, minimax, groupdro),
``loss_based`` the other baselines computed from loss values (uncertainty, dwa, stch, famo, rlw, gls) and
``gradient_based`` those that need per-task gradients (gradnorm, the torchjd aggregators, excessmtl, dbmtl).

Conventions shared by every method (the user guide to the methods: ``docs/balancers.md``):

* The weights ``w`` sum to 1, so ``none`` is the mean of the T losses (eq. 4) and a sweep compares
  balancers, not effective learning rates. (Uncertainty's effective weights ``exp(-s_t)/T`` sum to 1 only
  at initialisation; that is the method.)
* The scalar to back-propagate is ``sum_t w_t L_t`` (plus the balancer's own term: Uncertainty's
  regulariser, GradNorm's weight-update loss, both of which only reach the balancer's own parameters).
* Weights are computed from **detached, fp32** losses: a grad-scaler's factor never reaches a softmax.
* A task can be absent from a step (``present[t]`` false: no target of that task in the batch). It adds
  no gradient; its weight is computed from its last known loss; a task never seen yet is left out of
  the softmax. Nothing becomes NaN.

Usage::

    balancer = Minimax(num_tasks=3, alpha=1.0)
    out = balancer(torch.stack([l_rgb, l_depth, l_sem]))
    out.loss.backward()           # sum_t w_t L_t
    out.weights                   # tensor of T weights (detached)

A new balancer subclasses :class:`Balancer`, names in ``requires`` the fields of :class:`StepInputs` it needs
beyond the losses (checked when the class is created) and implements ``compute_weights(values, known,
inputs)``, reading ``inputs.counts``, ``inputs.features``, ... .
"""

from pretrain.balancers.base import (
    BalanceOutput,
    Balancer,
    GroupDRO,
    Minimax,
    NoBalancing,
    NormalisedBalancer,
    StepInputs,
    Vanilla,
)
from pretrain.balancers.gradient_based import DBMTL, ExcessMTL, GradientAggregator, GradNorm
from pretrain.balancers.loss_based import DWA, FAMO, GLS, RLW, STCH, Uncertainty

__all__ = [
    "Balancer",
    "BalanceOutput",
    "StepInputs",
    "NoBalancing",
    "Vanilla",
    "NormalisedBalancer",
    "Minimax",
    "Uncertainty",
    "GradNorm",
    "DWA",
    "GroupDRO",
    "STCH",
    "GradientAggregator",
    "ExcessMTL",
    "FAMO",
    "DBMTL",
    "RLW",
    "GLS",
]
