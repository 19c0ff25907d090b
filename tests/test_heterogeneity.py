"""The heterogeneity dial of the convex experiment (``data.minority``) and its map
(``experiment=heterogeneity_convex``, ``runner.figures.heterogeneity_frame`` and heterogeneity.png)."""

import math

import pytest
import torch

from data.convex import make_tasks, minority_distance
from utils.errors import ConfigError

DIAL = (0.0, 0.1, 0.25, 0.5, 1.0)
REGIMES = [("random", 8), ("underdetermined", 64)]


@pytest.mark.parametrize(("kind", "dim"), REGIMES)
def test_the_dial_moves_task_0_away_from_the_others_shared_optimum(kind, dim):
    """At every dial value tasks 1..T-1 share one optimum and task 0 sits minority * spread * sqrt(2 d) from it;
    the curvatures are the default draw's, and without the key the instance is the default one."""
    default = make_tasks(kind, 4, dim, seed=3)
    assert minority_distance(2.0, dim) == pytest.approx(2.0 * math.sqrt(2 * dim))
    for m in DIAL:
        tasks = make_tasks(kind, 4, dim, seed=3, minority=m)
        torch.testing.assert_close(tasks.B, default.B)
        assert torch.equal(tasks.c[1:], tasks.c[1].expand(3, dim))
        gap = float((tasks.c[0] - tasks.c[1]).norm())
        assert gap == pytest.approx(m * 2.0 * math.sqrt(2 * dim), rel=1e-5, abs=1e-6)
    # null is the family as drawn: optima spread out, not shared
    assert float((default.c[1] - default.c[2]).norm()) > 1.0


@pytest.mark.parametrize(("kind", "dim", "high"), [("random", 8, 11.724), ("underdetermined", 64, 133.06)])
def test_the_dial_acts_upstream_the_minority_risk_under_none_grows(kind, dim, high):
    """Under `none`'s target (the minimiser of the average risk) the minority task's risk is 0 at the
    homogeneous end, grows as minority^2 and is the worst task from the first step of the dial on."""
    uniform = torch.full((4,), 0.25, dtype=torch.float64)
    worst = []
    for m in DIAL:
        tasks = make_tasks(kind, 4, dim, seed=0, minority=m).to(torch.float64)
        risks = tasks.risks(tasks.mixture_optimum(uniform)[0])
        worst.append(float(risks[0]))
        if m > 0:
            assert int(risks.argmax()) == 0
            assert float(risks[1:].max()) < 0.5 * float(risks[0])
    assert worst[0] == pytest.approx(0.0, abs=1e-9)
    assert worst == pytest.approx([m * m * high for m in DIAL], rel=1e-3, abs=1e-9)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"kind": "random", "minority": 1.5}, "data.minority must be in [0, 1]"),
        ({"kind": "underdetermined", "minority": -0.1}, "data.minority must be in [0, 1]"),
        ({"kind": "remark52", "minority": 0.5}, "data.minority applies to data.kind=random"),
        ({"kind": "random", "num_tasks": 1, "minority": 0.5}, "data.minority needs data.num_tasks >= 2"),
    ],
)
def test_the_dial_rejects_what_it_cannot_build(kwargs, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        make_tasks(**kwargs)
