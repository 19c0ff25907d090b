"""Stored results and the docs rendered from them: provenance.json, ``report.store``, ``report.docs`` and
``report.docs=true report.check=true`` (a number in the docs changes only together with the stored runs it comes
from)."""

import json
import platform
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import run_cli

from runner import docs_render
from runner.docs_render import StoreError, render_all, store
from runner.report import report_stage, write_summary
from utils.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]


def _run(sweep: Path, name: str, balancer: str, seed: int, worst: float, log=None) -> Path:
    d = sweep / name
    d.mkdir(parents=True)
    res = {
        "experiment": "convex",
        "balancer": balancer,
        "seed": seed,
        "overrides": [f"balancer={balancer}", f"seed={seed}"],
        "downstream": {"t": {"metrics": {"m": worst}, "primary": "m", "higher_is_better": False}},
        "summary": {"worst": worst, "average": worst / 2, "higher_is_better": False},
    }
    (d / "results.json").write_text(json.dumps(res))
    if log:  # Hydra's job log: the first and the last line give the run's span
        (d / "run.log").write_text("".join(f"[2026-12-01 {t},123][runner][INFO] - x\n" for t in log))
    return d


def _sweep(path: Path) -> Path:
    _run(path, "0_none_seed0", "none", 0, 0.40, log=("10:00:00", "10:00:30"))
    _run(path, "1_none_seed1", "none", 1, 0.60, log=("10:00:40", "10:01:10"))
    _run(path, "2_minimax_seed0", "minimax", 0, 0.30)
    _run(path, "3_minimax_seed1", "minimax", 1, 0.35)
    (path / "multirun.yaml").write_text(
        "hydra:\n  job: {name: run}\n  overrides:\n    hydra: [hydra.mode=MULTIRUN]\n"
        "    task: [experiment=convex, 'balancer=none,minimax', 'seed=0,1']\n"
    )
    return path


def test_provenance_records_commit_command_machine_versions_and_wall_time(tmp_path):
    sweep = _sweep(tmp_path / "sweep")
    write_summary(sweep, figures=False)
    prov = json.loads((sweep / "provenance.json").read_text())
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    assert prov["commit"] == head and isinstance(prov["dirty"], bool)
    assert prov["command"] == "python run.py -m experiment=convex balancer=none,minimax seed=0,1"
    assert prov["runs"] == 4
    assert prov["wall_seconds"] == 70  # 10:00:00 (first run's start) to 10:01:10 (last run's end)
    assert prov["started"] == "2026-12-01T10:00:00"
    assert prov["versions"]["python"] == platform.python_version()
    assert prov["versions"]["torch"] != "unknown" and prov["machine"]["cores"] >= 1
    # rebuilding the report later (e.g. after a resumed run) keeps the producer and recounts the runs
    prov["commit"] = "0" * 40
    (sweep / "provenance.json").write_text(json.dumps(prov))
    _run(sweep, "4_minimax_seed2", "minimax", 2, 0.5)
    write_summary(sweep, figures=False)
    again = json.loads((sweep / "provenance.json").read_text())
    assert again["commit"] == "0" * 40 and again["runs"] == 5


def test_provenance_without_git_says_unknown(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "no_bin"))  # no git (nor nvidia-smi) to be found
    sweep = _sweep(tmp_path / "sweep")
    write_summary(sweep, figures=False)
    prov = json.loads((sweep / "provenance.json").read_text())
    assert prov["commit"] == "unknown" and prov["dirty"] == "unknown"
    assert "commit `unknown`" in docs_render.describe(prov)


def test_store_copies_the_runs_summaries_provenance_and_figures_and_nothing_else(tmp_path):
    sweep = _sweep(tmp_path / "sweep")
    (sweep / "0_none_seed0" / "checkpoints").mkdir()
    (sweep / "0_none_seed0" / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    (sweep / "curves.png").write_bytes(b"\x89PNG figure")
    (sweep / "notes.txt").write_text("not a result")
    write_summary(sweep, figures=False)
    dest = store(sweep, "demo", root=tmp_path / "repo")
    files = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert files == [
        "curves.png",
        "provenance.json",
        "runs/0_none_seed0.json",
        "runs/1_none_seed1.json",
        "runs/2_minimax_seed0.json",
        "runs/3_minimax_seed1.json",
        "summary.csv",
        "summary.md",
    ]
    assert (dest / "runs" / "1_none_seed1.json").read_text() == (
        sweep / "1_none_seed1" / "results.json"
    ).read_text()
    with pytest.raises(StoreError, match="report.force=true"):
        store(sweep, "demo", root=tmp_path / "repo")
    (dest / "summary.md").write_text("edited")
    store(sweep, "demo", root=tmp_path / "repo", force=True)
    assert (dest / "summary.md").read_text() == (sweep / "summary.md").read_text()
    with pytest.raises(StoreError, match="letters, digits"):
        store(sweep, "../elsewhere", root=tmp_path / "repo")
    for wrong in ({"check": True}, {"sweep_dir": sweep, "force": True}, {"sweep_dir": sweep, "docs": True}):
        with pytest.raises(ConfigError, match="report\\."):  # one sentence naming the report.* keys
            report_stage(**wrong, root=tmp_path / "repo")


def _site(root: Path, sweep: Path) -> Path:
    """A repository with one stored result (demo) and the markers of it, of a missing one and the headline."""
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "results.md").write_text(
        "# Results\n\n<!-- results:demo -->\nhand-typed 0.123\n<!-- /results:demo -->\n\n"
        "<!-- results:table1 -->\n<!-- /results:table1 -->\n"
    )
    (root / "README.md").write_text("# x\n\n<!-- results:headline -->\n<!-- /results:headline -->\n")
    write_summary(sweep, figures=False)
    store(sweep, "demo", root=root)
    return root


def test_docs_are_rendered_from_results_and_the_check_catches_a_hand_edit(tmp_path, monkeypatch):
    monkeypatch.setattr(docs_render, "HEADLINE_SOURCES", ("table1", "demo"))
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "curves.png").write_bytes(b"\x89PNG figure")
    root = _site(tmp_path / "repo", _sweep(tmp_path / "sweep"))
    assert render_all(root, check=True)  # the blocks are not rendered yet
    render_all(root)
    page = (root / "docs" / "results.md").read_text()
    assert "hand-typed" not in page
    assert "| none | 2 | 0.5 +- 0.14 |" in page  # worst over seeds 0.4, 0.6: mean 0.5, std 0.14
    assert "| minimax | 2 | **0.325 +- 0.035** (-0.175) |" in page  # best of the column, minus none
    assert "![curves](results/demo/curves.png)" in page
    assert (root / "docs" / "results" / "demo" / "curves.png").read_bytes() == b"\x89PNG figure"
    assert "*Stored in `results/demo/`: commit `" in page and ", 4 runs.*" in page
    assert re.search(r"<!-- results:table1 -->\n\*Not stored yet: no `results/table1/`", page)
    readme = (root / "README.md").read_text()
    assert (
        "| minimax | 2 | 0.325 +- 0.035 | 0.162 +- 0.018 | -0.175 [-1.13, +0.778] |" in readme
    )  # t(1) = 12.7
    assert "[docs/results.md](docs/results.md)" in readme
    assert render_all(root, check=True) == []
    report_stage(docs=True, check=True, root=root)  # up to date: no error

    summary = root / "results" / "demo" / "summary.md"
    summary.write_text(
        summary.read_text().replace("0.325 +- 0.035", "0.315 +- 0.035")
    )  # a number typed by hand
    assert render_all(root, check=True) == [summary]
    with pytest.raises(DataError, match="out of date with results/: results/demo/summary.md"):
        report_stage(docs=True, check=True, root=root)
    render_all(root)  # re-rendered from the runs: the hand edit is gone
    assert "0.325 +- 0.035" in summary.read_text() and render_all(root, check=True) == []

    (root / "docs" / "results.md").write_text(
        page.replace("**0.325 +- 0.035** (-0.175)", "**0.3 +- 0.035** (-0.2)")
    )
    assert render_all(root, check=True) == [root / "docs" / "results.md"]
    render_all(root)

    run = root / "results" / "demo" / "runs" / "3_minimax_seed1.json"
    run.write_text(
        run.read_text().replace('"worst": 0.35', '"worst": 0.45')
    )  # the runs change: the docs follow
    assert root / "docs" / "results.md" in render_all(root)
    assert "| **0.375 +- 0.11** (-0.125) |" in (root / "docs" / "results.md").read_text()  # the worst column


def test_the_repository_docs_match_its_stored_results():
    """Every results/<name>/summary.* is what the report code rebuilds from results/<name>/runs/, and every
    results block of README.md and docs/ is rendered from them."""
    stored = sorted(
        p.name for p in (REPO / "results").glob("*") if (p / "runs").is_dir() or (p / "data.json").is_file()
    )
    assert {"convex_regimes", "theorem_3_1"} <= set(stored)
    assert render_all(REPO, check=True) == [], "run `python run.py stage=report report.docs=true`"


def test_the_check_command_fails_on_a_hand_edited_stored_number(tmp_path):
    root = tmp_path / "repo"
    for part in ("results", "docs"):
        shutil.copytree(REPO / part, root / part)
    shutil.copyfile(REPO / "README.md", root / "README.md")
    summary = root / "results" / "convex_regimes" / "summary.md"
    text = summary.read_text()
    number = re.search(r"\| (\d\.\d+) \+- ", text)[1]
    summary.write_text(text.replace(f"| {number} +- ", f"| {float(number) * 1.01:.4g} +- ", 1))
    args = ["stage=report", "report.docs=true", "report.check=true", f"report.root={root}", "logger=none",
            f"hydra.run.dir={tmp_path / 'run'}"]  # fmt: skip
    proc = run_cli(args, cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "out of date with results/: results/convex_regimes/summary.md" in proc.stderr


def _data_site(root: Path) -> Path:
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "theory.md").write_text(
        "# T\n\n<!-- results:theorem_3_1 -->\n<!-- /results:theorem_3_1 -->\n\n"
        "<!-- results:benchmarks -->\n<!-- /results:benchmarks -->\n"
    )
    return root


_T31 = {
    "instance": "one_against_63",
    "K": 1600,
    "alpha0": 19.281,
    "bound": 0.1,
    "last": 0.01,
    "last10_min": 0.01,
}


def test_a_script_result_is_stored_as_data_and_rendered_and_the_check_catches_a_hand_edit(tmp_path):
    root = _data_site(tmp_path / "repo")
    render_all(root)
    page = root / "docs" / "theory.md"
    assert "(`python -m benchmarks.theorem_3_1 --store theorem_3_1` stores it)" in page.read_text()
    rows = [
        {**_T31, "averaged": 0.0404, "constant_alpha": 0.1304},
        {**_T31, "K": 400, "averaged": 0.3, "constant_alpha": 0.2},
    ]
    dest = docs_render.store_data(
        "theorem_3_1", {"rows": rows}, "python -m benchmarks.theorem_3_1", 61.0, root=root
    )
    prov = json.loads((dest / "provenance.json").read_text())
    assert prov["renderer"] == "theorem_3_1" and prov["wall_seconds"] == 61.0 and "runs" not in prov
    assert sorted(p.name for p in dest.iterdir()) == ["data.json", "provenance.json"]
    assert render_all(root) == [page]
    text = page.read_text()
    assert "| one_against_63 | 1600 | 19.28 | 0.1000 | 0.0404 | 0.0100 | 0.0100 | 0.1304 |" in text
    assert "inside the bound in 1 of 2 rows." in text  # 0.0404 <= 0.1; 0.3 > 0.1
    assert "`python -m benchmarks.theorem_3_1`, " in text and "wall time 1.0 min.*" in text
    assert render_all(root, check=True) == []

    page.write_text(text.replace("| 0.0404 |", "| 0.0304 |"))  # a number typed by hand
    assert render_all(root, check=True) == [page]
    render_all(root)
    data = dest / "data.json"
    data.write_text(data.read_text().replace("0.0404", "0.0504"))  # the data changes: the docs follow
    assert render_all(root) == [page] and "| 0.0504 |" in page.read_text()

    with pytest.raises(StoreError, match="report.force=true"):
        docs_render.store_data("theorem_3_1", {"rows": rows}, root=root)
    with pytest.raises(StoreError, match="not what renderer 'theorem_3_1' reads"):
        docs_render.store_data("theorem_3_1", {"rows": [{"K": 3}]}, root=root, force=True)
    with pytest.raises(StoreError, match="no renderer 'nope'"):
        docs_render.store_data("x", {}, renderer="nope", root=root)


def test_benchmark_ratios_are_medians_over_rounds_with_the_per_round_range(tmp_path):
    root = _data_site(tmp_path / "repo")
    rows = [
        {"method": "plain", "round_ms": [8.0, 10.0, 9.0], "peak_mib": 3.0, "peak_exact": True},
        {"method": "none", "round_ms": [10.0, 12.0, 11.0], "peak_mib": 4.0, "peak_exact": True},
        {"method": "minimax", "round_ms": [20.0, 30.0, 22.0], "peak_mib": 8.0, "peak_exact": False},
    ]
    setup = {"tasks": 9, "width": 256, "batch": 64, "rounds": 3, "steps": 10, "clock": "cpu", "threads": 1}
    data = {**setup, "plain": "plain", "memory_method": "peak MiB: rise of peak RSS", "rows": rows}
    docs_render.store_data("benchmarks", data, root=root)
    render_all(root)
    text = (root / "docs" / "theory.md").read_text()
    assert (
        "| minimax | 22.00 | 2.00 | 2.00 - 2.50 | <=8.0 | 2.00 |" in text
    )  # medians 22 / 11; rounds 20/10, 30/12
    assert "| none | 11.00 | 1.00 | 1.00 - 1.00 | 4.0 | 1.00 |" in text
    assert "`none` through LossAggregation / plain = 1.222 time, 1.33 peak memory." in text  # 11 / 9, 4 / 3


def test_a_json_report_is_stored_with_one_command(tmp_path):
    root = _data_site(tmp_path / "repo")
    (root / "docs" / "theory.md").write_text("<!-- results:mutants -->\n<!-- /results:mutants -->\n")
    report = {
        "command": "python -m benchmarks.mutants --out m.json",
        "producer": {"commit": "f00dfeed", "dirty": False},  # where the tests ran, not where it is stored
        "seconds": 180.0,
        "survivors": ["b"],
        "mutants": [
            {"name": "a", "what": "bug a", "file": "x.py", "tests": ["tests/test_x.py"], "outcome": "killed",
             "seconds": 40.2},
            {"name": "b", "what": "bug b", "file": "y.py", "tests": ["tests/test_y.py"], "outcome": "SURVIVED",
             "seconds": 12.0},
        ],
    }  # fmt: skip
    (tmp_path / "m.json").write_text(json.dumps(report))
    report_stage(data=tmp_path / "m.json", store="mutants", root=root)
    prov = json.loads((root / "results" / "mutants" / "provenance.json").read_text())
    assert prov["command"] == report["command"] and prov["wall_seconds"] == 180.0
    assert prov["commit"] == "f00dfeed" and prov["dirty"] is False
    render_all(root)
    text = (root / "docs" / "theory.md").read_text()
    assert "| `b` | bug b | `y.py` | test_y.py | SURVIVED | 12 |" in text
    assert "2 mutants, 1 killed by the tests, 3.0 min in all." in text
    with pytest.raises(ConfigError, match="report.data=<file.json> goes with report.store"):
        report_stage(data=tmp_path / "m.json", root=root)
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="report.data=.*holds no object"):
        report_stage(data=tmp_path / "bad.json", store="m2", root=root)


def _plan_json(command: str) -> dict:
    """A plan.json as ``stage=plan`` writes it (runner/plan.py), one GPU fitting and one not."""
    gpu = {"gpu_hours": 14.19, "wall_hours": 1.774, "wall_hours_1x8": 1.774, "wall_hours_8x8": 0.222}
    change = ["data.loader.batch_size=8 trainer.accumulate_grad_batches=4 (same batch)", "trainer=fsdp"]
    mem = {"weights": 0.41, "gradients": 0.41, "optimizer_state": 0.82, "activations": 50.0}
    return {
        "experiment": "paper_table1", "parameters": 110106428, "precision": "bf16-mixed", "strategy": "ddp",
        "world_size": 8, "batch_per_device": 32, "accumulate_grad_batches": 1, "samples_per_step": 256,
        "steps": 1000000, "flops_per_step": 1.768e13, "total_flops": 1.768e19, "tokens_per_step": 32768,
        "memory_per_device_gib": {**mem, "total": 51.64},
        "gpus": {"H100 80GB": {"fits": True, "usable_gib": 71.68, **gpu},
                 "A100 40GB": {"fits": False, "usable_gib": 36.0, **gpu, "gpu_hours": 44.98, "wall_hours": 5.62,
                               "largest_batch": 8, "change": change}},
        "preprocessing": {"corpus_words": 2.5e9, "tagging_words_per_s_per_process": 21000.0,
                          "process_hours": 33.07, "wall_hours_at_data.corpus.num_proc": 2.067},
        "measured_on_cpu": {"batches": [1, 2]},
        "assumptions": {"mfu": 0.35, "usable_memory": 0.9, "corpus_words": 2.5e9},
        "command": command, "seconds": 24.0, "producer": {"commit": "c0ffee", "dirty": False}, "renderer": "plan",
    }  # fmt: skip


def test_a_plan_is_stored_under_any_name_with_the_plan_command_and_rendered(tmp_path):
    root = _data_site(tmp_path / "repo")
    (root / "docs" / "theory.md").write_text("<!-- results:plan_x -->\n<!-- /results:plan_x -->\n")
    command = "python run.py experiment=paper_table1 stage=plan logger=none"
    (tmp_path / "plan.json").write_text(json.dumps(_plan_json(command)))
    report_stage(data=tmp_path / "plan.json", store="plan_x", root=root)
    prov = json.loads((root / "results" / "plan_x" / "provenance.json").read_text())
    assert prov["renderer"] == "plan" and prov["command"] == command  # the plan's, not the store's
    assert prov["commit"] == "c0ffee" and prov["wall_seconds"] == 24.0
    render_all(root)
    text = (root / "docs" / "theory.md").read_text()
    assert f"`{command}`" in text
    assert (
        "110.1M parameters; 256 samples a step (32 a device x 8 devices x 1 accumulated) = 32,768 tokens; "
        "1,000,000 steps; 1.77e+13 FLOPs a step, 1.77e+19 in all; bf16-mixed, strategy ddp." in text
    )
    assert "Memory per device: 51.64 GiB (weights 0.41, gradients 0.41, optimizer state 0.82, activations 50.00" in text
    assert "| H100 80GB | yes (71.7) | 14.2 | 1.77 |  |" in text
    assert (
        "| A100 40GB | no (36.0) | 45 | 5.62 | data.loader.batch_size=8 trainer.accumulate_grad_batches=4 "
        "(same batch); or trainer=fsdp |" in text
    )
    assert "= 33.1 process-hours, 2.1 h at `data.corpus.num_proc`." in text
    assert "`plan.mfu`=0.35, `plan.usable_memory`=0.9, `plan.corpus_words`=2500000000.0" in text
    assert render_all(root, check=True) == []


def test_a_pretraining_only_sweep_gets_its_csv_and_provenance(tmp_path):
    """experiment=table3_cost runs stage=pretrain: no downstream row, only the upstream and cost tables."""
    sweep = tmp_path / "sweep"
    for i, (b, s, ms, h) in enumerate([("none", 0, 300.0, 1.0), ("none", 1, 300.0, 1.0), ("minimax", 0, 450.0, 0.5),
                                       ("minimax", 1, 470.0, 1.0)]):  # fmt: skip
        d = sweep / f"{i}_{b}_seed{s}"
        d.mkdir(parents=True)
        res = {"experiment": "mm_mae", "balancer": b, "seed": s, "stage": "pretrain",
               "overrides": [f"balancer={b}", f"seed={s}"], "upstream": {"rgb": 0.8},
               "weights": {"mean_entropy": h}, "downstream": {}, "summary": {}, "cost": {"median_step_ms": ms}}  # fmt: skip
        (d / "results.json").write_text(json.dumps(res))
    write_summary(sweep, figures=False)
    csv = (sweep / "summary.csv").read_text().splitlines()
    assert csv[0] == "balancer,seeds,weight_entropy_mean,weight_entropy_std"
    assert csv[1].startswith("none,2,1.0,0.0") and csv[2].startswith("minimax,2,0.75,0.35")
    assert "| minimax | 460 | 1.53 |" in (sweep / "summary.md").read_text()  # medians 460 / 300
    assert json.loads((sweep / "provenance.json").read_text())["runs"] == 4
