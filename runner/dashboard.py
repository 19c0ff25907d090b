"""The wandb dashboard as code: ``python run.py stage=dashboard logger.wandb.entity=E logger.wandb.project=P
[dashboard.group=SWEEP]`` saves a workspace (wandb-workspaces) that shows the paper's comparison:

- *Pre-training*: each balancer's task weights over the steps, the worst upstream task's loss and the weights'
  entropy (mean over seeds, stderr band, runs grouped by ``config.choices.balancer``), and the learning rates.
- *Downstream*: the worst and the average downstream score per balancer (``summary/worst``, ``summary/average``)
  and the runs table with ``summary/worst_task`` pinned.

:func:`build_workspace` builds the object without touching the network (tests read its panels); :func:`save`
uploads it.
"""

from __future__ import annotations

from typing import Any

from utils.errors import ConfigError, UserError

#: the config key the runs are grouped by (the balancer's choice; pipeline.training_run logs it in ``choices``)
BALANCER_KEY = "choices.balancer"


def _modules():
    try:
        import wandb_workspaces.reports.v2 as wr
        import wandb_workspaces.workspaces as ws
    except ImportError:
        raise ConfigError(
            'stage=dashboard needs the wandb-workspaces package: pip install -e ".[dashboard]" '
            "(the dev extras include it)."
        ) from None
    return wr, ws


def build_workspace(entity: str, project: str, group: str | None = None, name: str | None = None) -> Any:
    """The workspace object (``wandb_workspaces.workspaces.Workspace``) for runs of ``entity/project``, only the
    runs of the sweep ``group`` (its folder name, the runs' wandb group) when given."""
    wr, ws = _modules()
    by_balancer = {
        "groupby": wr.Config(BALANCER_KEY),
        "groupby_aggfunc": "mean",
        "groupby_rangefunc": "stderr",
    }
    step = "trainer/global_step"
    pretraining = ws.Section(
        name="Pre-training",
        is_open=True,
        panels=[
            wr.LinePlot(title="task weights", x=step, metric_regex="train/weight/.*", **by_balancer),
            wr.LinePlot(title="worst upstream loss", x=step, y=["train/loss_worst"], **by_balancer),
            wr.LinePlot(title="weights' entropy (nats)", x=step, y=["train/weight_entropy"], **by_balancer),
            wr.LinePlot(title="learning rate", x=step, metric_regex="lr-.*"),
        ],
    )
    downstream = ws.Section(
        name="Downstream",
        is_open=True,
        panels=[
            wr.BarPlot(
                title="worst downstream task", metrics=[wr.SummaryMetric("summary/worst")], **by_balancer
            ),
            wr.BarPlot(
                title="average downstream", metrics=[wr.SummaryMetric("summary/average")], **by_balancer
            ),
        ],
    )
    runset = ws.RunsetSettings(
        filters=[ws.Metric("Group") == group] if group else [],
        groupby=[ws.Config(BALANCER_KEY)],
        pinned_columns=["summary:summary/worst", "summary:summary/average", "summary:summary/worst_task"],
    )
    return ws.Workspace(
        entity=entity,
        project=project,
        name=name or ("task-robust pre-training" + (f": {group}" if group else "")),
        sections=[pretraining, downstream],
        settings=ws.WorkspaceSettings(x_axis=step),
        runset_settings=runset,
    )


def save(cfg) -> str:
    """Build the workspace from the run's config and save it to wandb; returns its URL."""
    wandb_cfg = (cfg.get("logger") or {}).get("wandb") or {}
    entity, project = wandb_cfg.get("entity"), wandb_cfg.get("project")
    if not entity or not project:
        raise ConfigError(
            "stage=dashboard needs logger.wandb.entity=<team or user> and logger.wandb.project=<project> "
            "(logger=wandb)."
        )
    dashboard = cfg.get("dashboard") or {}
    workspace = build_workspace(entity, project, dashboard.get("group"), dashboard.get("name"))
    try:
        workspace.save()
    except Exception as exc:  # no network, no API key, no such project
        raise UserError(
            f"could not save the wandb workspace to {entity}/{project} ({type(exc).__name__}: {exc}); "
            "stage=dashboard needs the network and a wandb API key (wandb login)."
        ) from None
    return workspace.url
