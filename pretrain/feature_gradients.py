"""Every task's gradient w.r.t. the shared representation from one backward through the task heads.

:class:`~pretrain.aggregation.LossAggregation` gives a balancer that needs per-task gradients w.r.t. the
shared representation (``features`` mode) all T of them at once, when the module says how its heads read it:

- :class:`FeatureRows`: each row of the representation is read by one task (PoS-BERT: a masked position
  belongs to one POS group). :func:`row_gradients` takes one ``autograd.grad`` of the sum of the losses to the
  rows: every task's gradient, row by row. The model then gets the usual backward of the balancer's scalar
  (the task heads are back-propagated twice: once for the rows' gradients, once for the parameters).
- :class:`FeatureCopies`: each task head reads its own detached copy of the representation (MM-MAE's
  decoders). :func:`copy_gradients` takes each task's gradients at the copies and w.r.t. the parameters it
  reaches (its head) by a backward through that head alone; once the weights are computed,
  :func:`send_gradients` adds a zero-valued term to the balancer's scalar ``S`` whose backward sends
  ``sum_t c_t g_t`` into the encoder and ``c_t`` times each head's gradients into its parameters, with
  ``c_t = dS/dL_t``: every parameter gets exactly the gradient of ``S``, and the heads and the encoder are
  each back-propagated once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

#: a reached parameter and its ``(loss index, gradient of that loss's sum)`` terms (:func:`copy_gradients`)
Reached = list[tuple[Tensor, list[tuple[int, Tensor]]]]


@dataclass(frozen=True)
class FeatureRows:
    """The shared representation as rows that each belong to one task.

    ``rows`` (R, D) is a tensor of the autograd graph that the task heads read row by row (no head mixes rows);
    ``task`` (R,) long gives the index, in the callback's ``task_names``, of the one balanced task whose loss
    reads row r, or -1 where no balanced task reads it. The gradient of the sum of the balanced losses w.r.t.
    ``rows`` is then, row by row, each task's own gradient (zero on the other tasks' rows): one backward gives
    all T, and their Gramian is block-diagonal.
    """

    rows: Tensor
    task: Tensor


@dataclass(frozen=True)
class FeatureCopies:
    """The shared representation ``shared`` and the detached copies of it that the task heads read.

    ``copies`` maps each task to the copy its head reads, made by ``shared.detach().requires_grad_()``, so no
    task loss reaches ``shared`` itself. ``params``: the parameters a task loss may reach beyond the copies
    (default: the training module's; those it does not reach cost nothing). A task's gradient w.r.t.
    ``shared`` is the sum of its gradients at all copies, so a head may read several of them.
    """

    shared: Tensor
    copies: Mapping[str, Tensor]
    params: Sequence[Tensor] | None = None


def copy_params(features: FeatureCopies, module) -> Sequence[Tensor]:
    """The parameters :func:`copy_gradients` takes the task losses' gradients of: ``features.params`` where
    given, else the trainable parameters of ``module`` (the training module)."""
    if features.params is not None:
        return features.params
    if module is None:
        raise ValueError("FeatureCopies without a module: pass FeatureCopies(..., params=[...]).")
    return [p for p in module.parameters() if p.requires_grad]


def row_gradients(features: FeatureRows, losses: Tensor) -> Tensor | None:
    """``(T, R, D)``: task t's gradient w.r.t. ``features.rows`` (its own rows; zeros elsewhere), from one
    backward of ``losses.sum()`` through the heads; None when no loss has a gradient."""
    rows, task = features.rows, features.task.to(features.rows.device)
    if task.shape != rows.shape[:1]:
        raise ValueError(f"FeatureRows: task has shape {tuple(task.shape)}, expected ({rows.shape[0]},)")
    total = losses.sum()
    if not total.requires_grad:
        return None
    (grad,) = torch.autograd.grad(total, rows, retain_graph=True, allow_unused=True)
    if grad is None:
        grad = torch.zeros_like(rows)
    own = task[None, :] == torch.arange(losses.numel(), device=rows.device)[:, None]  # (T, R)
    own = own.reshape(*own.shape, *([1] * (rows.dim() - 1)))
    return torch.where(own, grad.float()[None], torch.zeros((), device=rows.device))


def copy_gradients(
    features: FeatureCopies, sums: Sequence[Tensor], scale: Tensor, params: Sequence[Tensor]
) -> tuple[Tensor, Reached]:
    """Each loss's gradients: ``scale[i] * grad sums[i]`` w.r.t. ``features.shared`` through the copies,
    ``(N, *shared.shape)`` fp32, and, for each of ``params`` that some loss reaches, ``(param, [(i, grad sums[i]
    w.r.t. it), ...])`` (not yet scaled). One ``autograd.grad`` per loss; each traverses only the part of the
    graph that loss depends on (its head), so together they cost one backward through all heads, and which
    loss reaches which parameter is known."""
    copies = list(features.copies.values())
    if not copies or any(not (c.is_leaf and c.requires_grad) for c in copies):
        raise ValueError("FeatureCopies: every copy must be made by shared.detach().requires_grad_().")
    inputs = [*copies, *params]
    shared = features.shared
    feature = torch.zeros((len(sums), *shared.shape), dtype=torch.float32, device=shared.device)
    reached: dict[int, list[tuple[int, Tensor]]] = {}
    for i, s in enumerate(sums):
        if not s.requires_grad:
            continue
        grads = torch.autograd.grad(s, inputs, retain_graph=True, allow_unused=True)
        for g in grads[: len(copies)]:
            if g is not None:
                feature[i] += g.float() * scale[i]
        for j, g in enumerate(grads[len(copies) :]):
            if g is not None:
                reached.setdefault(j, []).append((i, g))
    return feature, [(params[j], terms) for j, terms in sorted(reached.items())]


def send_gradients(
    total: Tensor,
    losses: Tensor,
    scale: Tensor,
    shared: Tensor,
    feature: Tensor,
    reached: Reached,
) -> Tensor:
    """A term of value 0 whose backward gives ``shared`` the gradient ``sum_i c_i feature[i]`` and each reached
    parameter ``sum_i c_i scale_i grad sums[i]``, ``c = d total / d losses`` (the balancer's effective task
    multipliers): with it, ``total``'s backward gives every parameter exactly the gradient of ``total`` as a
    function of the model, though ``losses`` is cut from the model's graph."""
    (c,) = torch.autograd.grad(total, losses, retain_graph=True, materialize_grads=True)
    c = c.detach().float()
    params = [p for p, _ in reached]
    return _SendGradients.apply(
        c, c * scale.float(), feature, [terms for _, terms in reached], shared, *params
    )


class _SendGradients(torch.autograd.Function):
    """``_SendGradients.apply(c, c_params, feature, terms, shared, *params)`` is 0; its backward with upstream
    ``u`` (1, or Lightning's ``1 / accumulate_grad_batches``, or a grad scaler's factor) gives ``shared``
    ``u * sum_i c[i] feature[i]`` and ``params[j]`` ``u * sum_i c_params[i] g`` over its ``terms[j]`` ``(i, g)``:
    one multiplication per parameter, where a product ``(p * G).sum()`` would cost three."""

    @staticmethod
    def forward(ctx, c, c_params, feature, terms, shared, *params):
        ctx.c, ctx.c_params, ctx.feature, ctx.terms = c, c_params, feature, terms
        ctx.shared_dtype = shared.dtype
        return shared.new_zeros((), dtype=torch.float32)

    @staticmethod
    def backward(ctx, upstream):
        u = upstream.float()
        grad_shared = torch.tensordot(ctx.c * u, ctx.feature, dims=1).to(ctx.shared_dtype)
        weights = ctx.c_params * u
        grads = []
        for terms in ctx.terms:
            total = None
            for i, g in terms:
                part = g * weights[i].to(g.dtype)
                total = part if total is None else total + part
            grads.append(total)
        ctx.terms = ctx.feature = None  # the step's gradients, freed now
        return (None, None, None, None, grad_shared, *grads)
