"""The one learning-rate schedule and weight-decay split (utils/optim.py) reproduces each experiment's former one."""

import functools
import math
from types import SimpleNamespace

import pytest
import torch
from test_fast_path import BERT, MAE

from models.bert import PosBert
from models.multimae import MultiMAE
from pretrain import mm_mae, pos_bert
from pretrain.balancers import GradNorm, Uncertainty
from pretrain.mm_mae import MMMAEPretraining
from pretrain.pos_bert import PosBertPretraining
from utils.optim import decay_groups, warmup_decay_schedule


# The four schedules as they were written in each configure_optimizers before utils/optim.py.
def former_pos_bert(step, warmup, total, floor):  # linear warm-up, linear decay to floor
    if warmup and step < warmup:
        return (step + 1) / warmup
    if total <= warmup:
        return 1.0
    return max(floor, 1.0 - (1.0 - floor) * (step - warmup) / max(1, total - warmup))


def former_mm_mae(step, warmup, total, floor):  # warmup = min(warmup_steps, total); cosine to floor
    if step < warmup:
        return (step + 1) / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def former_glue(step, warmup, total):  # warmup = int(warmup_ratio * total); linear decay to 0
    if step < warmup:
        return (step + 1) / max(1, warmup)
    if total <= warmup:
        return 1.0
    return max(0.0, (total - step) / max(1, total - warmup))


def former_vision(step, warmup, total):  # warmup = min(warmup_steps, total); cosine to 0
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min((step - warmup) / max(total - warmup, 1), 1.0)))


def factors(steps: int, groups: int = 1, **kw) -> list[list[float]]:
    """The learning-rate factor of every group at steps 0 .. steps-1 (base lr 1)."""
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(groups)]
    opt = torch.optim.SGD([{"params": [p]} for p in params], lr=1.0)
    sched = warmup_decay_schedule(opt, **kw)
    out = []
    for _ in range(steps):
        out.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return out


def first_group(steps: int, **kw) -> list[float]:
    return [f[0] for f in factors(steps, **kw)]


@pytest.mark.parametrize("warmup, total", [(5, 40), (0, 12), (1, 2), (5, 3), (5, 0)])
def test_pos_bert_schedule(warmup, total):
    got = first_group(total + 8, warmup_steps=warmup, total_steps=total, min_lr_ratio=0.1, decay="linear")
    assert got == pytest.approx([former_pos_bert(s, warmup, total, 0.1) for s in range(total + 8)], rel=1e-12)


@pytest.mark.parametrize("warmup_steps, total", [(4, 30), (0, 9), (3, 4), (50, 7)])
def test_mm_mae_schedule(warmup_steps, total):
    warmup = min(warmup_steps, total)  # what clip_warmup does (conf/module/scheduler/warmup_cosine.yaml)
    options = {"warmup_steps": warmup_steps, "min_lr_ratio": 0.05, "decay": "cosine", "clip_warmup": True}
    got = first_group(total, total_steps=total, **options)
    expected = [former_mm_mae(s, warmup, total, 0.05) for s in range(total)]
    assert got == pytest.approx(expected, rel=1e-12)
    if total > warmup:  # held at the floor after the last step, as before
        later = first_group(total + 5, total_steps=total, **options)
        assert later[total:] == pytest.approx(
            [former_mm_mae(s, warmup, total, 0.05) for s in range(total, total + 5)]
        )


@pytest.mark.parametrize("ratio, total", [(0.1, 50), (0.0, 10), (0.25, 7), (0.1, 0)])
def test_glue_schedule(ratio, total):
    warmup = int(ratio * total)
    got = first_group(total + 5, warmup_steps=warmup, total_steps=total, min_lr_ratio=0.0, decay="linear")
    assert got == pytest.approx(
        [former_glue(s, warmup, total) for s in range(total + 5)], rel=1e-12, abs=1e-15
    )


@pytest.mark.parametrize("warmup_steps, total", [(10, 60), (0, 5), (20, 6)])
def test_vision_schedule(warmup_steps, total):
    warmup = min(warmup_steps, total)
    got = first_group(total, warmup_steps=warmup, total_steps=total, min_lr_ratio=0.0, decay="cosine")
    assert got == pytest.approx([former_vision(s, warmup, total) for s in range(total)], rel=1e-12, abs=1e-15)


def test_schedule_values_by_hand():
    linear = first_group(13, warmup_steps=4, total_steps=10, min_lr_ratio=0.1, decay="linear")
    assert linear[:5] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])
    assert linear[7] == pytest.approx(1 - 0.9 * 3 / 6) and linear[10:] == pytest.approx([0.1] * 3)
    cosine = first_group(8, warmup_steps=2, total_steps=6, min_lr_ratio=0.2, decay="cosine")
    assert cosine[:3] == pytest.approx([0.5, 1.0, 1.0])
    assert cosine[4] == pytest.approx(0.6) and cosine[6:] == pytest.approx([0.2, 0.2])


def test_constant_groups_keep_their_rate_and_bad_decay_is_refused():
    got = factors(6, groups=3, warmup_steps=2, total_steps=5, decay="linear", constant_groups=[2])
    assert [f[2] for f in got] == [1.0] * 6
    assert [f[0] for f in got] == [f[1] for f in got] == pytest.approx([0.5, 1, 1, 2 / 3, 1 / 3, 0])
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match="decay='step'"):
        warmup_decay_schedule(opt, 1, 2, decay="step")


def test_decay_groups_split_by_dimension_and_name():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    net.register_parameter("pos_token", torch.nn.Parameter(torch.zeros(1, 2, 4)))
    frozen = torch.nn.Linear(2, 2).requires_grad_(False)
    named = list(net.named_parameters()) + [("frozen.weight", frozen.weight)]
    decay, other = decay_groups(named, 0.05, no_decay=("token",), lr=0.3)
    assert [id(p) for p in decay["params"]] == [id(net[0].weight)]
    assert {id(p) for p in other["params"]} == {
        id(net[0].bias),
        id(net[1].weight),
        id(net[1].bias),
        id(net.pos_token),
    }
    assert (decay["weight_decay"], other["weight_decay"], decay["lr"], other["lr"]) == (0.05, 0.0, 0.3, 0.3)


@pytest.mark.parametrize("experiment", ["pos_bert", "mm_mae"])
@pytest.mark.parametrize("balancer, constant", [(GradNorm, True), (functools.partial(GradNorm, lr=None), False),
                                                (Uncertainty, False), (functools.partial(Uncertainty, lr=0.01), True)])  # fmt: skip
def test_a_balancers_own_learning_rate_stays_constant_in_both_experiments(
    experiment, balancer, constant, monkeypatch
):
    """The rule of utils/optim.py: a balancer group with its own lr keeps it; one without follows the model."""
    torch.manual_seed(0)
    if experiment == "pos_bert":
        schedule = functools.partial(pos_bert.SCHEDULE, warmup_steps=4)
        module = PosBertPretraining(PosBert(**BERT), balancer, scheduler=schedule)
    else:
        schedule = functools.partial(mm_mae.SCHEDULE, warmup_steps=4)
        module = MMMAEPretraining(MultiMAE(**MAE), balancer, scheduler=schedule)
    monkeypatch.setattr(module, "_trainer", SimpleNamespace(estimated_stepping_batches=20))
    config = module.configure_optimizers()
    opt, sched = config["optimizer"], config["lr_scheduler"]["scheduler"]
    (own,) = module.aggregator.balancer_param_groups()
    lr = module.make_optimizer.keywords["lr"]
    first = [g["lr"] for g in opt.param_groups]
    assert first[0] == first[1] == pytest.approx(lr / 4)  # warm-up step 0 of 4
    assert first[2] == pytest.approx(own["lr"] if constant else lr / 4)
    for _ in range(2):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(3 * lr / 4)
    assert opt.param_groups[2]["lr"] == pytest.approx(own["lr"] if constant else 3 * lr / 4)
