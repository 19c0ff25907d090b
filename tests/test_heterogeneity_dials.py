"""The heterogeneity dials of PoS-BERT (``data.corpus.conjunction_share``) and MM-MAE (``data.depth_relief``):
each changes its data as documented, and the downstream task that needs the starved group or modality does."""

import math

import pytest
import torch

from data.glue_like import _Gen
from data.pos_bert import PosBertDataModule, _fingerprint
from data.pos_grammar import CONJUNCTION_SHARE, conjunction_scale, expected_share, generate_corpus
from utils.errors import ConfigError


def _conjunctions(docs) -> tuple[int, int]:
    groups = [g for _, doc in docs for s in doc for g in s.groups]
    return groups.count("conjunction"), len(groups)


def test_conjunction_share_sets_the_measured_share_of_the_generated_corpus(tmp_path):
    """At three dial values the corpus's measured conjunction share is within 4 binomial standard errors of
    the key (and decreasing with it); the scale that gives it is exact in expectation."""
    assert CONJUNCTION_SHARE == pytest.approx(0.011465, abs=1e-6)
    measured = []
    for share in (CONJUNCTION_SHARE, 0.005, 0.002):
        factor = conjunction_scale(share)
        assert expected_share("CC", {"CC": factor}) == pytest.approx(share, rel=1e-9)
        dm = PosBertDataModule(cache_dir=str(tmp_path), corpus={"n_docs": 600, "conjunction_share": share})
        hits, words = _conjunctions(generate_corpus(**dm._generator_args()))
        assert abs(hits - share * words) <= 4 * math.sqrt(share * words), (share, hits / words)
        measured.append(hits / words)
    assert measured[0] > measured[1] > measured[2] > 0
    assert conjunction_scale(CONJUNCTION_SHARE) == pytest.approx(1.0, abs=1e-9)
    assert conjunction_scale(0.002) == pytest.approx(0.1489, abs=1e-4)


def test_null_is_todays_corpus_and_the_dial_is_in_the_cache_key(tmp_path):
    """null generates the corpus bit for bit and keeps the cache fingerprint of before the key; every dial
    value is its own cache (a changed dial never reuses a corpus)."""
    corpus = {"n_docs": 40, "present_prob": 0.5, "topic_bias": 0.9}
    null = PosBertDataModule(cache_dir=str(tmp_path), corpus={**corpus, "conjunction_share": None})
    assert null._generator_args()["category_scale"] is None
    assert generate_corpus(**null._generator_args()) == generate_corpus(
        40, seed=0, present_prob=0.5, topic_bias=0.9
    )
    key = {"source": null._source_key(), "vocab": 4096, "lower": True, "ids": "canonical"}
    assert _fingerprint(key) == "b354d96f08d11892"  # tests/test_pos_options.py's fingerprint without the key
    keys = {
        _fingerprint(
            PosBertDataModule(
                cache_dir=str(tmp_path), corpus={**corpus, "conjunction_share": s}
            )._source_key()
        )
        for s in (0.002, 0.005, CONJUNCTION_SHARE)
    }
    assert len(keys) == 3 and _fingerprint(null._source_key()) not in keys


@pytest.mark.parametrize(
    ("corpus", "message"),
    [
        ({"conjunction_share": 0.5}, r"^data\.corpus\.conjunction_share=0\.5 must be in \(0, 0\.0115\]"),
        ({"conjunction_share": 0.0}, r"^data\.corpus\.conjunction_share=0\.0 must be in"),
        (
            {"conjunction_share": 0.005, "text_file": "x.txt"},
            r"^data\.corpus\.conjunction_share dials the generated",
        ),
        (
            {"conjunction_share": "low"},
            r"^data\.corpus\.conjunction_share='low' must be int or float or null\.$",
        ),
    ],
)
def test_a_bad_conjunction_share_names_the_key(tmp_path, corpus, message):
    with pytest.raises(ConfigError, match=message):
        PosBertDataModule(cache_dir=str(tmp_path), corpus=corpus)


def test_the_rte_like_label_is_a_function_of_the_conjunction():
    """Pairs drawn from the same stream with only the conjunction replaced are the same words elsewhere, and
    'and'/'but' entail where 'or' does not. A classifier that cannot see the conjunction gives the three pairs
    one answer, so on the pairs whose hypothesis keeps its nouns it is right on 2 of 3: the majority-class rate,
    chance for this task; the conjunction and the visible noun change decide every label."""
    triples = [[_Gen(seed).rte(c) for c in ("and", "but", "or")] for seed in range(300)]
    kept = [t for t in triples if t[0].label == 1]
    for a, b, o in triples:
        rest = {x.a.replace(f", {c} ", ", _ ") for x, c in ((a, "and"), (b, "but"), (o, "or"))}
        assert len(rest) == 1 and a.b == b.b == o.b  # identical but for the conjunction
        assert o.label == 0 and a.label == b.label
        changed = set(a.b.lower().rstrip(".").split()) - set(a.a.lower().replace(",", "").rstrip(".").split())
        assert (a.label == 0) == bool(changed)  # 'and': entailed unless a hypothesis word is new
    assert 0.65 < len(kept) / len(triples) < 0.85  # a quarter of the hypotheses have a changed noun

    def blind(t):  # the best single answer for pairs that differ only in the conjunction
        ones = sum(x.label for x in t)
        return max(ones, len(t) - ones) / len(t)

    majority = max(sum(x.label for t in kept for x in t), sum(1 - x.label for t in kept for x in t)) / (
        3 * len(kept)
    )
    assert sum(blind(t) for t in kept) / len(kept) == pytest.approx(2 / 3) == pytest.approx(majority)


def test_depth_relief_sets_the_log_depth_spread_and_leaves_the_other_modalities():
    """The std of log(depth / depth without relief) is data.depth_relief in every scene; RGB, the semantic map
    and the label are the relief-free scene's, and 0 is today's scene bit for bit."""
    import numpy as np

    from data.scenes import ScenesDataModule, render_scene

    for index in range(3):
        clean = render_scene(5, index, "train", image_size=32)
        assert all(
            np.array_equal(clean[k], render_scene(5, index, "train", 32, depth_relief=0.0)[k]) for k in clean
        )
        for relief in (0.05, 0.2, 0.5):
            scene = render_scene(5, index, "train", image_size=32, depth_relief=relief)
            log_ratio = np.log(scene["depth"].astype(np.float64) / clean["depth"])
            assert log_ratio.std() == pytest.approx(relief, rel=1e-4) and abs(log_ratio.mean()) < 1e-5
            assert np.array_equal(scene["rgb"], clean["rgb"]) and np.array_equal(
                scene["semseg"], clean["semseg"]
            )
            assert scene["label"] == clean["label"]
    # through the data module (the pre-training batches): the same relation
    item = ScenesDataModule(image_size=32, depth_relief=0.2, seed=5).train_set[1]
    base = ScenesDataModule(image_size=32, seed=5).train_set[1]
    assert float((item["depth"].double() / base["depth"]).log().std(unbiased=False)) == pytest.approx(
        0.2, rel=1e-4
    )


def test_the_downstream_depth_task_needs_the_scene_a_scene_blind_predictor_scores_its_chance_level():
    """MM-MAE's dial feeds the downstream depth task (rendered without relief), which a model must read from the
    scene: the best scene-blind prediction (each pixel's median training depth) scores delta_1 about 0.78, its
    chance level, while knowing only the room's geometry (floor and wall, no objects) scores above 0.85. So a
    probe's delta_1 between the two is geometry it read from RGB; one near 0.78 read none."""
    from data.scenes import SceneDataset, render_scene
    from finetune.metrics import DepthMetrics

    train = SceneDataset(128, "train", seed=0, image_size=64)
    median = torch.stack([train[i]["depth"] for i in range(len(train))]).median(0).values[0]
    blind, room = DepthMetrics(), DepthMetrics()
    for i in range(128):
        scene = render_scene(0, i, "test", 64, 3, 6, 0.03, return_layers=True)
        blind.update(median, torch.from_numpy(scene["depth"]))
        room.update(torch.from_numpy(scene["background_depth"]), torch.from_numpy(scene["depth"]))
    chance, geometry = float(blind.compute()["delta_1"]), float(room.compute()["delta_1"])
    assert 0.72 < chance < 0.82 and geometry > 0.85 and geometry - chance > 0.05


@pytest.mark.parametrize("relief", [-0.1, 1.5, "high", True])
def test_a_bad_depth_relief_names_the_key(relief):
    from data.scenes import ScenesDataModule

    with pytest.raises(ConfigError, match=r"^data\.depth_relief=.* must be a number in \[0, 1\]"):
        ScenesDataModule(depth_relief=relief)


def _fake_run(sweep, experiment, key, value, balancer, seed, downstream, **sections):
    """One run's results.json; its one downstream task is the one the experiment's dial feeds (its map's target
    measure reads it), scoring ``downstream``."""
    import json

    d = sweep / f"{value}_{balancer}_{seed}"
    d.mkdir(parents=True)
    task, metric = ("depth", "delta_1") if "mm_mae" in experiment else ("rte", "accuracy")
    res = {
        "experiment": experiment, "balancer": balancer, "seed": seed, "stage": "all",
        "overrides": [f"{key}={value}", f"balancer={balancer}", f"seed={seed}"],
        "downstream": {task: {"metrics": {metric: downstream}, "primary": metric, "higher_is_better": True}},
        "summary": {"worst": downstream, "average": downstream, "higher_is_better": True},
        **sections,
    }  # fmt: skip
    (d / "results.json").write_text(json.dumps(res))


def _read_map(sweep):
    import csv

    from runner.report import write_summary

    summary = write_summary(sweep).read_text()
    assert (
        sweep / "heterogeneity.png"
    ).stat().st_size > 10_000 and "![heterogeneity](heterogeneity.png)" in summary
    rows = list(csv.DictReader((sweep / "heterogeneity.csv").read_text().splitlines()))
    # summary.md carries the map's numbers as text too (the docs render it): every row and dial value of the
    # CSV with its upstream difference and interval, and each row's crossover
    assert f"## Heterogeneity map: `{rows[0]['dial_key']}`" in summary
    for r in rows:
        up = f"{float(r['upstream']):+.3g} [{float(r['upstream_low']):+.3g}, {float(r['upstream_high']):+.3g}]"
        up += "*" if r["upstream_holm"] and float(r["upstream_holm"]) < 0.05 else ""  # survives Holm over the map
        assert f"| {r['row']} | {float(r['dial']):g} | {r['pairs']} | {up} |" in summary
        cross = float(r["upstream_crossover"]) if r["upstream_crossover"] else None
        assert f"Crossover of {r['row']}: upstream {'none' if cross is None else f'{cross:g}'}" in summary
    return {(r["row"], float(r["dial"])): r for r in rows}


def test_pos_bert_map_pairs_with_vanilla_reads_the_share_and_marks_the_least_heterogeneous_crossover(
    tmp_path,
):
    """heterogeneity_pos_bert's report from fake runs: the dial is data.corpus.conjunction_share (null = the
    grammar's share), the baseline vanilla, the upstream measure the smallest context gain (higher is better);
    minimax gains 0 at null, +0.1 at 0.005 and +0.4 at 0.002 (noise 0.01, 4 seeds), so its crossover is 0.005,
    the largest share (least heterogeneous) whose difference is above 0 after Holm over the map's 18 intervals;
    downstream it never moves: no crossover."""
    key = "data.corpus.conjunction_share"
    for seed, noise in enumerate([0.01, -0.01, 0.005, 0.0]):
        for value, gain in [("null", 0.0), (0.005, 0.1), (0.002, 0.4)]:
            for balancer, up in [
                ("vanilla", 1.0),
                ("minimax", 1.0 + gain + noise),
                ("minimax_ref", 1.0 + noise),
            ]:
                acc = 0.7 + (noise if balancer != "vanilla" else 0.0)
                _fake_run(tmp_path, "heterogeneity_pos_bert", key, value, balancer, seed, acc,
                          upstream_eval={"min_context_gain": up})  # fmt: skip
    rows = _read_map(tmp_path)
    assert set(rows) == {
        (b, v) for b in ("minimax", "minimax_ref") for v in (CONJUNCTION_SHARE, 0.005, 0.002)
    }
    high = rows["minimax", 0.002]
    assert float(high["upstream"]) == pytest.approx(0.4 + 0.005 / 4) and float(high["upstream_low"]) > 0
    assert float(high["upstream_vanilla"]) == 1.0 and high["dial_key"] == key and high["pairs"] == "4"
    assert (
        float(rows["minimax", CONJUNCTION_SHARE]["upstream_low"])
        < 0
        < float(rows["minimax", CONJUNCTION_SHARE]["upstream_high"])
    )
    assert {float(r["upstream_crossover"]) for (b, _), r in rows.items() if b == "minimax"} == {0.005}
    assert all(r["upstream_crossover"] == "" for (b, _), r in rows.items() if b == "minimax_ref")
    assert all(r["downstream_crossover"] == "" for r in rows.values())


def test_mm_mae_map_pairs_with_none_on_the_smallest_context_gain(tmp_path):
    """heterogeneity_mm_mae's report from fake runs: the dial is data.depth_relief, the baseline none, the
    upstream measure the smallest context gain over the modalities (higher is better): at relief 0.4 minimax
    raises it by 0.05 (crossover 0.4); at 0 nothing differs but noise."""
    for seed, noise in enumerate([0.002, -0.003, 0.001]):
        for relief, gain_none, gap in [(0.0, 0.3, 0.0), (0.4, 0.1, 0.05)]:
            for balancer in ("none", "minimax"):
                gain = gain_none + (gap + noise if balancer == "minimax" else 0.0)
                _fake_run(tmp_path, "heterogeneity_mm_mae", "data.depth_relief", relief, balancer, seed, 0.6,
                          upstream_eval={"min_context_gain": gain})  # fmt: skip
    rows = _read_map(tmp_path)
    assert (
        float(rows["minimax", 0.4]["upstream"]) == pytest.approx(0.05)
        and float(rows["minimax", 0.4]["upstream_none"]) == pytest.approx(0.1)
    )
    assert float(rows["minimax", 0.0]["upstream_none"]) == pytest.approx(0.3)
    assert float(rows["minimax", 0.0]["upstream_low"]) < 0 < float(rows["minimax", 0.0]["upstream_high"])
    assert (
        float(rows["minimax", 0.4]["upstream_low"]) > 0
        and float(rows["minimax", 0.4]["upstream_crossover"]) == 0.4
    )


@pytest.mark.parametrize(
    ("experiment", "measure"),
    [("heterogeneity_pos_bert", "_min_context_gain"), ("heterogeneity_mm_mae", "_min_context_gain")],
)
def test_each_map_experiment_runs_under_smoke_and_reports_what_its_map_reads(tmp_path, experiment, measure):
    """One run of each map (its high end, debug=smoke) gives results.json with the upstream measure its map
    reads and the worst downstream task (finite numbers)."""
    from helpers import run_pipeline

    import runner.heterogeneity as het

    results = run_pipeline(
        [f"experiment={experiment}", "debug=smoke", "logger=none", "balancer=minimax"], tmp_path
    )
    assert math.isfinite(getattr(het, measure)(results)) and math.isfinite(results["summary"]["worst"])
    target = {"heterogeneity_pos_bert": "rte", "heterogeneity_mm_mae": "depth"}[experiment]
    dial = next(d for d in het.DIALS.values() if target in d.measures)
    assert math.isfinite(dial.measures[target].read(results))  # the task the dial's minority feeds


def test_the_answer_block_reads_each_stored_map_and_names_the_ones_not_stored(tmp_path):
    """docs' `results:heterogeneity_answer` block is rendered from the stored maps' runs: PoS-BERT's fake map
    (minimax raises the worst task's metric by 0.05 at 0.002 only) gives the downstream crossover 0.002 with its
    starred interval; minimax_ref, which never moves, gets none; the maps not stored are named."""
    from runner.docs_render import render_all

    key = "data.corpus.conjunction_share"
    sweep = tmp_path / "sweep"
    for seed, noise in enumerate([0.002, -0.003, 0.001, 0.0]):
        for value, gap in [("null", 0.0), (0.005, 0.0), (0.002, 0.05)]:
            for balancer in ("vanilla", "minimax", "minimax_ref"):
                acc = 0.6 + (gap + noise if balancer == "minimax" else noise if balancer == "minimax_ref" else 0)
                _fake_run(sweep, "heterogeneity_pos_bert", key, value, balancer, seed, acc,
                          upstream_eval={"min_context_gain": 0.3})  # fmt: skip
    runs = tmp_path / "root" / "results" / "heterogeneity_pos_bert" / "runs"
    runs.mkdir(parents=True)
    for d in sweep.iterdir():
        (runs / f"{d.name}.json").write_text((d / "results.json").read_text())
    page = tmp_path / "root" / "docs" / "heterogeneity.md"
    page.parent.mkdir()
    page.write_text("<!-- results:heterogeneity_answer -->\n<!-- /results:heterogeneity_answer -->\n")
    render_all(tmp_path / "root")
    text = page.read_text()
    rows = {line.split(" | ")[2]: line for line in text.splitlines() if line.startswith("| PoS-BERT")}
    assert set(rows) == {"minimax - vanilla", "minimax_ref - vanilla"}
    cells = rows["minimax - vanilla"].split(" | ")
    assert cells[5] == "0.002" and cells[6].startswith("+0.05 [") and cells[6].endswith("]*")
    assert cells[7].startswith("0.002: +0.05 [")
    assert rows["minimax_ref - vanilla"].split(" | ")[5] == "none"
    assert "Not stored yet: convex, full rank (`results/heterogeneity_convex_random/`)" in text
    assert "MM-MAE (`results/heterogeneity_mm_mae/`)" in text


@pytest.mark.parametrize("acts", [True, False])
def test_the_dial_check_reads_the_minority_under_the_baseline_paired_by_seed(tmp_path, acts):
    """summary.md says whether the dial acts upstream: under vanilla the conjunctions' context gain falls from
    3.0 (grammar's share) to 2.0 and 0.5 along the dial (seed noise 0.05, shared by a seed at every share), so
    both differences to the least heterogeneous share are starred; a dial that leaves the gain at 3.0 gets
    none. minimax's runs do not enter the check."""
    from runner.heterogeneity import dial_check_frame
    from runner.report import write_summary
    from runner.tables import collect

    key = "data.corpus.conjunction_share"
    for seed, noise in enumerate([0.05, -0.05, 0.02, 0.0]):
        for value, gain in [("null", 3.0), (0.005, 2.0), (0.002, 0.5)]:
            for balancer in ("vanilla", "minimax"):
                g = (gain if acts else 3.0) + noise + (9.0 if balancer == "minimax" else 0.0)
                _fake_run(tmp_path, "heterogeneity_pos_bert", key, value, balancer, seed, 0.7 + noise / 10,
                          upstream_eval={"min_context_gain": g, "groups": {"conjunction": {"context_gain": g}}})  # fmt: skip
    frame = dial_check_frame(collect(tmp_path))
    assert list(frame["dial"]) == [CONJUNCTION_SHARE, 0.005, 0.002]  # least heterogeneous first
    assert list(frame["mean"]) == pytest.approx([3.005, (2.0 if acts else 3.0) + 0.005, (0.5 if acts else 3.0) + 0.005])
    text = write_summary(tmp_path).read_text()
    assert "## Does `data.corpus.conjunction_share` act upstream?" in text
    if acts:
        assert list(frame["diff"][1:]) == pytest.approx([-1.0, -2.5])
        assert "| 0.002 | 4 | 0.505 [" in text and "| -2.5 [-2.5, -2.5]* |" in text
    else:
        assert list(frame["diff"][1:]) == pytest.approx([0.0, 0.0]) and "]* |" not in text.split("act upstream?")[1]
