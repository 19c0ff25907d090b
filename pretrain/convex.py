"""Pre-training in the convex setting of section 5, through the same Lightning/callback path as the
deep experiments: per-task minibatch risks from one evaluation, the balancer's weights, one SGD step."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch

from pretrain.aggregation import LossAggregation
from pretrain.base import PretrainingModule

#: the optimizer of a module built from Python without one (conf/module/optimizer/sgd.yaml holds the same)
SGD = partial(torch.optim.SGD, lr=0.05, momentum=0.0)


class ConvexPretraining(PretrainingModule):
    """SGD on ``theta`` with the T quadratic task losses combined by the configured balancer.

    Args:
        model: a :class:`models.convex.ParameterVector`.
        balancer: a Balancer or a ``num_tasks -> Balancer`` factory.
        aggregation: options of :class:`~pretrain.aggregation.LossAggregation`.
        num_tasks: T (must match the data).
        optimizer, scheduler: see :class:`~pretrain.base.PretrainingModule`; by default SGD with the constant
            step size eta = 0.05 and no momentum (Algorithm 1 exactly), no schedule.
        average_iterates: keep the running average of the iterates theta_0..theta_{K-1} (Theorem 3.1's
            theta-bar after K steps) and hand it to the downstream stage instead of the last iterate.
    """

    prepares_from_data = True  # prepare_for_finetune reads the datamodule
    # theta is both the shared parameter and the representation (a plain tensor: no precomputed feature_grads)
    provides = frozenset({"shared_params", "features"})

    def __init__(
        self,
        model,
        balancer,
        aggregation: dict | None = None,
        num_tasks: int = 4,
        optimizer=SGD,
        scheduler=None,
        average_iterates: bool = True,
    ) -> None:
        super().__init__(optimizer, scheduler)
        self.model = model
        self.average_iterates = bool(average_iterates)
        self.task_names = [f"task{t}" for t in range(int(num_tasks))]
        self.aggregator = LossAggregation.build(
            balancer, self.task_names, self.provides, type(self).__name__, **(aggregation or {})
        )
        self.register_buffer("theta_avg", model.theta.detach().clone())
        self.register_buffer("n_avg", torch.zeros((), dtype=torch.long))
        self.tasks = None

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule
        self.prepare_for_finetune(dm)

    def prepare_for_finetune(self, datamodule) -> None:
        self.tasks = datamodule.tasks
        if self.tasks.num_tasks != len(self.task_names):
            from utils.errors import ConfigError

            raise ConfigError(
                f"module.num_tasks={len(self.task_names)} but data.num_tasks={self.tasks.num_tasks}."
            )
        reference = getattr(datamodule, "reference_risks", None)
        if reference:
            self.aggregator.default_reference(
                reference, "each task's minimum expected risk (data.reference_risks)"
            )

    def training_step(self, z: torch.Tensor, batch_idx: int):
        per_sample = self.tasks.sample_losses(self.model(), z)  # (n, T)
        n = per_sample.shape[0]
        losses = {name: (per_sample[:, t].sum(), n) for t, name in enumerate(self.task_names)}
        return self.aggregator(self, losses, shared_params=[self.model.theta], features=self.model.theta)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        """Add the current iterate to the running average before this step's update.

        Called before ``training_step``, so the k-th call (k = 0, 1, ...) sees ``theta_k``, the point the
        step's gradient is taken at: after K steps ``theta_avg`` is Theorem 3.1's
        ``(1/K) sum_{k=0}^{K-1} theta_k`` (the last iterate theta_K is not in it). ``theta_avg`` and
        ``n_avg`` are buffers, so a run resumed from a checkpoint continues the same average.
        """
        with torch.no_grad():
            self.n_avg += 1
            self.theta_avg += (self.model.theta.detach() - self.theta_avg) / self.n_avg.float()

    def validation_step(self, z: torch.Tensor, batch_idx: int) -> None:
        risks = self.tasks.risks(self.pretrained_theta())
        self.log_dict(
            {f"val/risk/{n}": risks[t] for t, n in enumerate(self.task_names)}, batch_size=z.shape[0]
        )
        self.log("val/risk_worst", risks.max(), batch_size=z.shape[0])

    def pretrained_theta(self) -> torch.Tensor:
        """The pre-trained parameter: the averaged iterate if ``average_iterates`` else the last one."""
        if self.average_iterates and int(self.n_avg) > 0:
            return self.theta_avg.detach().clone()
        return self.model.theta.detach().clone()

    def export_pretrained(self, out_dir: Path) -> None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(
            {"theta": self.pretrained_theta(), "B": self.tasks.B, "c": self.tasks.c}, out_dir / "theta.pt"
        )
