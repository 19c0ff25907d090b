"""The optimizer and the schedule are config groups nested under module (conf/module/optimizer/,
conf/module/scheduler/): swapped from the command line with ``module/optimizer=<file>`` and
``module/scheduler=<file>``, built by ``PretrainingModule.configure_optimizers`` (pretrain/base.py) over the
model's parameter groups and the balancer's."""

import lightning as L
import pytest
import torch
from helpers import compose_config

from runner.factories import build_pretraining
from utils.errors import ConfigError


def build(overrides, tmp_path):
    return build_pretraining(compose_config([*overrides, "debug=smoke"], tmp_path))


def test_the_optimizer_is_swapped_from_the_command_line_and_trains(tmp_path):
    overrides = ["experiment=pos_bert", "module/optimizer=sgd", "balancer=gradnorm"]
    datamodule, module = build(overrides, tmp_path)
    config = module.configure_optimizers()
    opt = config["optimizer"]
    assert type(opt) is torch.optim.SGD
    (gradnorm,) = module.aggregator.balancer_param_groups()
    assert [id(p) for p in opt.param_groups[-1]["params"]] == [id(p) for p in gradnorm["params"]]
    # without a trainer the length is unknown: warm-up step 0 of the experiment's 500 at its lr 1.5e-3
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1.5e-3 / 500, 1.5e-3 / 500, 0.025])
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 0.0, 0.0]
    assert opt.param_groups[0]["momentum"] == 0.0

    trainer = L.Trainer(
        max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
    )  # fmt: skip
    before = module.model.bert.embeddings.word_embeddings.weight.detach().clone()
    trainer.fit(module, datamodule=datamodule)
    (fitted,) = trainer.optimizers
    assert type(fitted) is torch.optim.SGD and trainer.global_step == 2
    assert not torch.equal(before, module.model.bert.embeddings.word_embeddings.weight)
    # two steps of the warm-up (a 2-step run is shorter than it); GradNorm's own lr is constant
    assert [g["lr"] for g in fitted.param_groups] == pytest.approx([3 * 1.5e-3 / 500] * 2 + [0.025])


def test_module_scheduler_none_leaves_the_bare_optimizer(tmp_path):
    _, module = build(["experiment=mm_mae", "module/scheduler=none"], tmp_path)
    opt = module.configure_optimizers()  # no scheduler: the bare optimizer, at its lr from the first step
    assert type(opt) is torch.optim.AdamW and opt.param_groups[0]["lr"] == 2e-3
    assert opt.param_groups[0]["betas"] == (0.9, 0.95) and opt.param_groups[0]["weight_decay"] == 0.05


def test_an_experiment_that_sets_part_of_the_schedule_turns_it_off_with_null(tmp_path):
    _, module = build(
        ["experiment=pos_bert", "module.scheduler=null"], tmp_path
    )  # pos_bert sets warmup_steps
    opt = module.configure_optimizers()
    assert type(opt) is torch.optim.AdamW and opt.param_groups[0]["lr"] == 1.5e-3


def test_the_convex_experiment_takes_constant_step_sgd(tmp_path):
    _, module = build(["experiment=convex", "module.optimizer.lr=0.2"], tmp_path)
    opt = module.configure_optimizers()
    assert type(opt) is torch.optim.SGD and [g["lr"] for g in opt.param_groups] == [0.2]
    assert opt.param_groups[0]["momentum"] == 0.0


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["module.optimizer=sgd"], r"module/optimizer=sgd \(a slash, not a dot\)"),
        (["module/scheduler=none"], r"holds \['warmup_steps'\].*module.scheduler=null"),
        (["module.optimizer.lr=0"], r"module.optimizer.lr=0 must be positive"),
        (["module.scheduler.warmup_steps=-1"], r"module.scheduler.warmup_steps=-1 must be >= 0"),
    ],
)
def test_a_wrong_optimizer_or_schedule_names_the_key(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        build(["experiment=pos_bert", *overrides], tmp_path)
