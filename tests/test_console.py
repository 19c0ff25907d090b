"""What a run prints and logs: live progress, a quiet console, the dashboard identity and summary of a wandb run,
resumes that continue the same logs, and the sweep objective."""

import csv
import re
from collections import Counter

import pytest
from helpers import run_cli, run_pipeline

#: what a run printed before: warnings of third-party code, Lightning's advertisement, wandb's deprecation
NOISE = (
    "anonymous setting",
    "set_vital",
    "LeafSpec",
    "litlogger",
    "SpearmanCorrcoef",
    "val_dataloader",
    "will be deleted",
    "Warning:",
    "Writing model shards",
)


@pytest.mark.slow
def test_default_smoke_run_prints_progress_once_each_and_no_noise(tmp_path):
    """The default experiment (PoS-BERT), wandb offline + CSV as a user gets them, output not a terminal: one
    progress line every n steps with the worst task and the weights' entropy, the wall time per stage at the end,
    no line printed twice (Hydra's timestamps aside) and none of the known warnings."""
    proc = run_cli(
        ["debug=smoke", "callbacks.pretrain.progress.every_n_steps=2", f"hydra.run.dir={tmp_path}"],
        env={"WANDB_MODE": "offline"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    lines = [re.sub(r"^\[[\d\- :,]+\]", "", line).strip() for line in out.splitlines()]
    repeated = {line: n for line, n in Counter(x for x in lines if x).items() if n > 1}
    assert not repeated, repeated
    for noise in NOISE:
        assert noise not in out, noise
    assert out.count("GPU available") == 1
    step2 = next(x for x in lines if "pretrain step 2/4 (50%)" in x)
    assert "steps/s" in step2 and "ETA" in step2 and "worst " in step2 and "H(w) " in step2
    assert any("pretrain step 4/4 (100%)" in x for x in lines)
    last = proc.stdout.strip().splitlines()[-1]  # Hydra's console log is stdout (wandb writes to stderr)
    assert re.search(r"wall time: pretrain \d+s, downstream \d+s, total \d+s$", last), last
    assert "wandb: Run history" not in out  # quiet: no history dump at the end
    # one namespace for the downstream metrics, the headline numbers and the learning rates in metrics.csv
    rows = list(csv.DictReader((tmp_path / "csv" / "metrics.csv").read_text().splitlines()))
    logged = {k for r in rows for k, v in r.items() if v}
    assert {
        "downstream/cola/matthews",
        "downstream/stsb/train_loss",
        "summary/worst",
        "summary/worst_task",
    } <= logged
    assert not any(k.startswith("finetune/") for k in logged)
    assert any(k.startswith("lr-AdamW") for k in logged)


class FakeRun:
    """What WandbLogger drives of a wandb run: init arguments, history, summary, metric definitions."""

    def __init__(self, **kwargs):
        self.init = kwargs
        self.id, self.name = kwargs.get("id"), kwargs.get("name")
        self.history, self.summary, self.defined, self.params = [], {}, {}, {}
        self.config = type("Config", (), {"update": lambda _, params, **k: self.params.update(params)})()

    def log(self, data, *args, **kwargs):
        self.history.append(dict(data))

    def define_metric(self, name, **kwargs):
        self.defined[name] = kwargs

    def log_artifact(self, artifact):
        self.artifacts = [*getattr(self, "artifacts", []), artifact]

    def finish(self):
        self.finished = True


@pytest.fixture
def fake_wandb(monkeypatch):
    import wandb

    runs = []

    def init(**kwargs):
        runs.append(FakeRun(**kwargs))
        return runs[-1]

    monkeypatch.setenv("WANDB_MODE", "disabled")  # WandbLogger(offline=True) sets it for the process
    monkeypatch.setattr(wandb, "init", init)
    return runs


def test_wandb_run_has_its_name_group_job_type_tags_and_the_papers_numbers(tmp_path, fake_wandb):
    res = run_pipeline(["experiment=convex", "debug=smoke", "trainer.max_steps=3"], tmp_path)
    (run,) = fake_wandb
    init = run.init
    assert init["name"] == "convex-minimax-s0-trainer.max_steps=3"  # the overrides beyond the name's own keys
    assert (init["group"], init["job_type"], init["tags"]) == ("convex", "all", ["convex", "minimax"])
    assert init["id"] == (tmp_path / "wandb" / "run_id").read_text().strip() and init["resume"] == "allow"
    assert "anonymous" not in init and init["settings"].quiet
    s = run.summary
    assert s["summary/worst"] == res["summary"]["worst"] and s["summary/average"] == res["summary"]["average"]
    assert s["summary/worst_task"] == res["summary"]["worst_task"]
    assert s["upstream/task0/final_loss"] == res["upstream"]["task0"]
    assert s["downstream/mix3/excess_risk"] == res["downstream"]["mix3"]["metrics"]["excess_risk"]
    assert run.defined["summary/worst"]["summary"] == "min"  # excess risk: lower is better
    keys = {k for h in run.history for k in h}
    assert {"train/loss_worst", "train/weight/task0", "downstream/results"} <= keys
    assert "lr-SGD" in keys  # the learning-rate monitor of conf/callbacks
    assert run.params["choices"]["balancer"] == "minimax"  # what the dashboard groups runs by


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["pos_bert", "mm_mae"])
def test_deep_experiments_log_the_same_identity_summary_and_downstream_namespace(
    tmp_path, fake_wandb, experiment
):
    """PoS-BERT and MM-MAE reach wandb as convex does: name, group, job_type, the paper's numbers in the run
    summary (higher is better: max) and every downstream metric under downstream/<task>/<metric>."""
    res = run_pipeline([f"experiment={experiment}", "debug=smoke", "balancer=none"], tmp_path)
    (run,) = fake_wandb
    assert run.init["name"] == f"{experiment}-none-s0" and run.init["job_type"] == "all"
    assert run.init["group"] == experiment and run.init["tags"][:2] == [experiment, "none"]
    s = run.summary
    assert s["summary/worst"] == res["summary"]["worst"] and s["summary/average"] == res["summary"]["average"]
    assert s["summary/worst_task"] == res["summary"]["worst_task"]
    assert run.defined["summary/worst"]["summary"] == "max"
    for task, row in res["downstream"].items():
        for metric, value in row["metrics"].items():
            assert s[f"downstream/{task}/{metric}"] == pytest.approx(value)
    keys = {k for h in run.history for k in h}
    assert not any(k.startswith("finetune/") for k in keys | set(s))


def test_dashboard_workspace_plots_what_the_runs_log(tmp_path, fake_wandb):
    """The workspace of `stage=dashboard`, built offline (not saved): every panel shows keys a run logs, grouped
    by the balancer; a sweep's workspace shows that sweep's runs only."""
    pytest.importorskip("wandb_workspaces")
    from runner.dashboard import BALANCER_KEY, build_workspace

    run_pipeline(["experiment=convex", "debug=smoke"], tmp_path)
    (run,) = fake_wandb
    logged = {k for h in run.history for k in h}
    workspace = build_workspace("E", "P", group="2026-12-01_10-00-00")
    panels = {p.title: p for section in workspace.sections for p in section.panels}
    assert set(panels) == {"task weights", "worst upstream loss", "weights' entropy (nats)", "learning rate",
                           "worst downstream task", "average downstream"}  # fmt: skip
    for title in ("task weights", "learning rate"):
        assert any(re.fullmatch(panels[title].metric_regex, k) for k in logged), title
    for title in ("worst upstream loss", "weights' entropy (nats)"):
        assert set(panels[title].y) <= logged and panels[title].x == "trainer/global_step"
    for title in ("worst downstream task", "average downstream"):
        assert {m.name for m in panels[title].metrics} <= set(run.summary)
    grouped = [p for p in panels.values() if p.title != "learning rate"]
    assert all(p.groupby.name == BALANCER_KEY for p in grouped)
    assert run.params["choices"]["balancer"] == "minimax" and BALANCER_KEY == "choices.balancer"
    assert "2026-12-01_10-00-00" in repr(workspace.runset_settings.filters)
    assert "summary:summary/worst_task" in workspace.runset_settings.pinned_columns
    assert (workspace.entity, workspace.project) == ("E", "P")


def test_dashboard_stage_names_the_missing_keys(tmp_path):
    from utils.errors import ConfigError

    with pytest.raises(ConfigError, match=r"logger\.wandb\.entity=<team or user>"):
        run_pipeline(["stage=dashboard"], tmp_path)


def test_a_sweep_job_is_grouped_by_its_sweep_and_named_by_its_swept_keys(tmp_path):
    from helpers import compose_config

    from runner.factories import run_balancer, task_overrides
    from runner.loggers import run_identity

    sweep = "hydra.sweep.dir=multirun/mm_mae/2026-12-01_10-00-00"
    args = [
        "experiment=mm_mae",
        "balancer=dwa",
        "seed=2",
        "trainer.max_steps=600",
        "hydra.mode=MULTIRUN",
        sweep,
    ]
    cfg = compose_config(args, tmp_path)
    assert run_identity(cfg, run_balancer(cfg), task_overrides()) == {
        "name": "mm_mae-dwa-s2-trainer.max_steps=600",
        "group": "2026-12-01_10-00-00",
        "job_type": "all",
        "tags": ["mm_mae", "dwa", "linear_probe"],
    }
    cfg.downstream = None  # an experiment without a downstream suite: the run fails later, naming the key
    assert run_identity(cfg, "dwa", [])["tags"] == ["mm_mae", "dwa"]


def test_sweep_summary_and_figures_go_to_wandb_as_one_artifact(tmp_path, fake_wandb):
    import json

    from omegaconf import OmegaConf

    from runner.report import SummaryCallback

    for i, (balancer, worst) in enumerate([("none", 1.0), ("minimax", 0.5)]):
        (tmp_path / str(i)).mkdir()
        task = {"metrics": {"m": worst}, "primary": "m", "higher_is_better": False}
        summary = {"worst": worst, "average": worst, "higher_is_better": False}
        res = {
            "experiment": "x",
            "balancer": balancer,
            "seed": 0,
            "downstream": {"t": task},
            "summary": summary,
        }
        (tmp_path / str(i) / "results.json").write_text(json.dumps(res))
    (tmp_path / "weights.png").write_bytes(b"a figure")
    wandb_cfg = {"_target_": "runner.loggers.WandbLogger", "project": "p", "offline": True}
    SummaryCallback().on_multirun_end(
        OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}, "logger": {"wandb": wandb_cfg}})
    )
    (run,) = fake_wandb
    assert (run.init["group"], run.init["job_type"]) == (tmp_path.name, "sweep-summary") and run.finished
    (artifact,) = run.artifacts
    assert artifact.type == "sweep-summary"
    assert {"summary.md", "summary.csv", "weights.png"} <= set(artifact.manifest.entries)
    assert any("sweep/summary" in h for h in run.history)


def test_resumed_pretraining_continues_the_wandb_run_and_metrics_csv(tmp_path, fake_wandb):
    common = ["experiment=convex", "debug=smoke", "stage=pretrain"]
    run_pipeline([*common, "trainer.max_steps=2"], tmp_path)
    run_id = (tmp_path / "wandb" / "run_id").read_text().strip()
    run_pipeline([*common, "trainer.max_steps=4", "ckpt_path=last"], tmp_path)
    first, resumed = fake_wandb
    assert first.init["id"] == resumed.init["id"] == run_id and resumed.init["resume"] == "allow"
    assert resumed.init["job_type"] == "pretrain"
    rows = list(csv.DictReader((tmp_path / "csv" / "metrics.csv").read_text().splitlines()))
    steps = [int(r["step"]) for r in rows if r.get("train/loss_worst")]
    assert steps == [0, 1, 2, 3]  # the pre-resume steps kept, the resumed ones after them
    # a new run in the same directory (no ckpt_path) is a new wandb run with a new metrics.csv
    run_pipeline([*common, "trainer.max_steps=2"], tmp_path)
    assert fake_wandb[2].init["id"] != run_id
    rows = list(csv.DictReader((tmp_path / "csv" / "metrics.csv").read_text().splitlines()))
    assert [int(r["step"]) for r in rows if r.get("train/loss_worst")] == [0, 1]


def test_optimized_metric_names_what_run_py_returns(tmp_path):
    from helpers import compose_config

    from run import objective
    from utils.errors import ConfigError

    assert compose_config(["experiment=convex"], tmp_path).optimized_metric == "summary.worst"
    results = {
        "summary": {"worst": 0.5, "average": 0.25, "worst_task": "a"},
        "downstream": {"a": {"metrics": {"m": 0.5}}},
    }
    assert objective(results, "summary.worst") == 0.5
    assert objective(results, "downstream.a.metrics.m") == 0.5
    assert objective({"summary": {}, "downstream": {}}, "summary.worst") is None  # stage=pretrain
    with pytest.raises(ConfigError, match="optimized_metric=summary.wrst: results.json has no such number"):
        objective(results, "summary.wrst")
    with pytest.raises(ConfigError, match="not a number"):
        objective(results, "summary.worst_task")


def _control_args(line: str) -> list[str]:
    """The overrides of a printed ``... python run.py <overrides>`` control command."""
    import shlex

    words = shlex.split(line.split(": ", 1)[1])
    assert words[:2] == ["python", "run.py"], line
    return words[2:]


def test_a_run_ends_with_the_worst_upstream_task_results_path_and_its_random_init_control(tmp_path, capsys):
    """The run's last lines: every upstream task's final loss, the worst of them, the weights' entropy, the path
    of results.json and the command that runs the random-init control of the same seed and experiment."""
    from helpers import compose_config

    from runner.factories import run_balancer

    args = ["experiment=convex", "debug=smoke", "logger=none", "seed=2", "balancer=vanilla"]
    res = run_pipeline(args, tmp_path)
    lines = capsys.readouterr().out.splitlines()
    worst = max(res["weights"]["final"], key=res["upstream"].get)
    assert f"worst upstream task: {worst} (final loss {res['upstream'][worst]:.4g})" in lines
    rows = [x for x in lines if "│" in x and x.split("│")[1].split()[0] in res["upstream"]]
    assert len(rows) == len(res["upstream"])  # one table row per upstream task
    entropy = next(x for x in lines if x.startswith("weights' entropy: "))
    assert f"{res['weights']['mean_entropy']:.3g} nats" in entropy
    assert f"results: {(tmp_path / 'results.json').resolve()}" in lines
    (control,) = [x for x in lines if x.startswith("random-init control")]
    cfg = compose_config(_control_args(control), tmp_path / "control")
    assert run_balancer(cfg) == "random_init" and (cfg.seed, cfg.experiment) == (2, "convex")
    assert cfg.stage == "finetune" and cfg.logger == {}  # the run's other overrides kept (logger=none)


def test_the_control_command_replaces_the_runs_balancer_stage_and_checkpoints(tmp_path):
    from helpers import compose_config

    from runner.console import control_command
    from runner.factories import run_balancer

    run = ["experiment=mm_mae", "stage=pretrain", "ckpt_path=last", "balancer=dwa", "trainer.max_steps=3"]
    command = control_command({"balancer": "dwa", "seed": 4, "overrides": run})
    assert command == "python run.py experiment=mm_mae trainer.max_steps=3 seed=4 balancer=random_init"
    cfg = compose_config(_control_args(f"control: {command}"), tmp_path)
    assert (run_balancer(cfg), cfg.seed, cfg.experiment) == ("random_init", 4, "mm_mae")
    assert cfg.trainer.max_steps == 3 and cfg.ckpt_path is None and cfg.pretrained_ckpt == "random"
    # the control itself has no control
    assert control_command({"balancer": "random_init", "seed": 0, "overrides": []}) is None
