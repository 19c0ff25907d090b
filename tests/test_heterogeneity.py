"""The heterogeneity dial of the convex experiment (``data.minority``) and its map
(``experiment=heterogeneity_convex``, ``runner.figures.heterogeneity_frame`` and heterogeneity.png)."""

import math

import pytest
import torch
from helpers import SMALL_CONVEX_RUN, run_pipeline

from data.convex import make_tasks, minority_distance
from runner.figures import heterogeneity_frame
from runner.report import write_summary
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


def test_minimax_ref_takes_each_convex_task_minimum_risk_as_its_reference():
    """balancer=minimax_ref (normalize=reference) needs reference losses; the convex experiment gives every task's
    minimum expected risk, 0, so its weights are minimax's on the same losses."""
    from functools import partial

    from data.convex import ConvexDataModule
    from models.convex import ParameterVector
    from pretrain.balancers import Minimax
    from pretrain.convex import ConvexPretraining

    dm = ConvexDataModule(num_tasks=3, dim=4, minority=1.0, seed=0)
    assert dm.reference_risks == {"task0": 0.0, "task1": 0.0, "task2": 0.0}
    ref = ConvexPretraining(ParameterVector(4), partial(Minimax, normalize="reference"), num_tasks=3)
    losses = torch.tensor([5.0, 1.0, 2.0])
    with pytest.raises(ConfigError, match="no reference losses"):
        ref.aggregator.balancer(losses)
    ref.prepare_for_finetune(dm)
    torch.testing.assert_close(ref.aggregator.balancer(losses).weights, Minimax(3)(losses).weights)
    assert float(Minimax(3)(losses).weights[0]) > 0.9  # not uniform: the check has something to compare


def _run(balancer, minority, seed, upstream, initial, excess):
    return {
        "balancer": balancer,
        "seed": seed,
        "overrides": [f"data.minority={minority}", f"balancer={balancer}", f"seed={seed}"],
        "pretrained": {"worst_upstream_risk": upstream},
        "summary": {"worst": excess, "by_metric": {"initial_risk": {"worst": initial}}},
    }


def test_heterogeneity_frame_pairs_by_seed_within_each_dial_value_and_finds_the_crossover():
    """minimax - none per dial value, paired by seed: at 0 the differences straddle 0, at 0.5 and 1 they are
    below 0 (upstream), so the crossover is 0.5; the excess risk never moves, so it has no crossover."""
    runs = []
    for seed, noise in enumerate([0.1, -0.2, 0.05]):
        for m, gap in [(0.0, 0.0), (0.5, -1.0), (1.0, -4.0)]:
            runs.append(_run("none", m, seed, 10.0 + seed, 9.0, 1.0))
            runs.append(_run("minimax", m, seed, 10.0 + seed + gap + noise, 9.0 + gap, 1.0 + noise))
    frame = heterogeneity_frame(runs)
    assert list(frame["dial"]) == [0.0, 0.5, 1.0] and set(frame["row"]) == {"minimax"}
    assert list(frame["pairs"]) == [3, 3, 3]
    assert set(frame["upstream_none"]) == {11.0}  # none's mean over the seeds: the scale of the difference
    assert list(frame["upstream"]) == pytest.approx([-0.05 / 3, -1.0 - 0.05 / 3, -4.0 - 0.05 / 3])
    high = frame.iloc[-1]
    assert high["upstream_low"] < high["upstream"] < high["upstream_high"] < 0
    assert frame.iloc[0]["upstream_low"] < 0 < frame.iloc[0]["upstream_high"]
    assert set(frame["upstream_crossover"]) == {0.5}
    # the same difference in every pair: the interval is the mean itself
    assert set(frame["initial_crossover"]) == {0.5}
    assert frame["excess_crossover"].isna().all()
    assert heterogeneity_frame([r for r in runs if r["balancer"] != "none"]).empty



def test_a_raw_interval_that_does_not_survive_holm_over_the_map_is_no_crossover():
    """One map is one family: at dial 0.5 minimax's raw 95% interval lies below 0 (paired t p = 0.019 over 3
    seeds), but with 5 more dial values tested beside it Holm's adjusted p is 6 x 0.019 > 0.05, so no star and no
    crossover; alone (a one-value map) the same runs give the crossover 0.5."""
    from runner.heterogeneity import heterogeneity_markdown

    runs = []
    for seed, (hit, noise) in enumerate([(-1.0, 0.1), (-1.3, -0.2), (-0.8, 0.05)]):
        for m in (0.0, 0.1, 0.2, 0.3, 0.4, 0.5):
            runs.append(_run("none", m, seed, 10.0, 9.0, 1.0))
            runs.append(_run("minimax", m, seed, 10.0 + (hit if m == 0.5 else noise), 9.0, 1.0))
    frame = heterogeneity_frame(runs)
    at = frame.set_index("dial").loc[0.5]
    assert at["upstream_high"] < 0 and at["upstream_p"] == pytest.approx(0.0192, abs=5e-4)
    assert at["upstream_holm"] == pytest.approx(6 * at["upstream_p"])
    assert frame["upstream_crossover"].isna().all()
    text = heterogeneity_markdown(frame)
    assert "6 intervals in this family" in text and "*" not in text.split("|---|")[-1]
    alone = heterogeneity_frame([r for r in runs if r["overrides"][0] == "data.minority=0.5"])
    assert set(alone["upstream_crossover"]) == {0.5}
    assert "] * |" not in text and "]* |" in heterogeneity_markdown(alone)

MAP_RUN = [
    "experiment=heterogeneity_convex",
    "data.kind=underdetermined",
    *SMALL_CONVEX_RUN,
    "downstream.repeats=4",
    "downstream.sample_sizes=[4,16]",
    "downstream.primary_n=4",
]


@pytest.mark.slow
def test_convex_map_has_its_crossover_where_the_minority_is_starved(tmp_path):
    """The map through the pipeline on fixed seeds (underdetermined regime): at minority=0 every task is the same
    task, so minimax and none pre-train the same theta (difference exactly 0); at minority=1 minimax's worst
    upstream risk and worst downstream excess risk are lower with paired 95% intervals below 0, so the crossover
    is 1 (with uniform weights, i.e. none's, there would be none). The sweep report writes heterogeneity.png and
    lists it in summary.md."""
    for m in (0.0, 1.0):
        for seed in range(4):  # 3 pairs leave too little for Holm over the map's family
            for balancer in ("none", "minimax"):
                run = [*MAP_RUN, f"data.minority={m}", f"balancer={balancer}", f"seed={seed}"]
                run_pipeline(run, tmp_path / f"m{m}_{balancer}_{seed}")
    summary = write_summary(tmp_path)
    from runner.tables import collect

    frame = heterogeneity_frame(collect(tmp_path))
    low, high = frame.iloc[0], frame.iloc[1]
    assert (low["dial"], high["dial"]) == (0.0, 1.0)
    assert low["upstream"] == 0.0 and low["excess"] == 0.0
    assert high["upstream_high"] < 0 and high["upstream"] < -10.0
    assert high["excess_high"] < 0
    assert high["upstream_crossover"] == 1.0 and high["excess_crossover"] == 1.0
    assert high["upstream_holm"] < 0.05 and high["excess_holm"] < 0.05
    assert (tmp_path / "heterogeneity.png").stat().st_size > 10_000
    assert "![heterogeneity](heterogeneity.png)" in summary.read_text()


def _share(sentences, group: str) -> float:
    groups = [g for s in sentences for g in s.groups]
    return groups.count(group) / len(groups)


def test_pos_dial_category_scale_lowers_the_conjunction_share_of_the_corpus():
    """The PoS-BERT dial in the grammar (``category_scale``, not yet a ``data.`` key): scaling the conjoined
    sentence's production lowers the conjunction group's share of the corpus tokens about in proportion (the
    group the RTE-like task hinges on); scale 1 is the grammar as written, the same corpus."""
    from data.pos_grammar import generate_corpus

    def sentences(**kw):
        return [s for _, doc in generate_corpus(150, seed=0, **kw) for s in doc]

    base = sentences()
    assert sentences(category_scale={"CC": 1.0}) == base
    shares = {f: _share(sentences(category_scale={"CC": f}), "conjunction") for f in (1.0, 0.3, 0.1, 0.0)}
    assert shares[0.0] == 0.0
    assert shares[1.0] == pytest.approx(_share(base, "conjunction"))
    assert shares[1.0] > shares[0.3] > shares[0.1] > 0
    assert 0.05 < shares[0.1] / shares[1.0] < 0.25  # 0.11 expected from the weights; 150 documents: 0.17
    with pytest.raises(ValueError, match="category_scale"):
        generate_corpus(1, category_scale={"conjunction": 0.5})
