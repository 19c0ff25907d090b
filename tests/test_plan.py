"""``stage=plan`` (runner/plan.py) against measured runs, the paper presets' plans, and ``trainer=auto``.

The plan's FLOPs per step and memory per device for the embedded ``pos_bert`` and ``mm_mae`` experiments (at
their ``debug=smoke`` sizes: the same models and sequence/image shapes, 8 samples a step) are compared with a
real run of the same config: the FLOPs the throughput callback counts on real batches (results.json's
``cost.flops_per_step``; on the CPU its counter leaves out the attention kernels, which the plan counts as on a
GPU, so the comparison counts the plan the same way) and the peak RSS rise of a few real training steps (benchmarks/_memory.py, in a fresh
process). The factors (docs/scaling.md, "Plan"): FLOPs within 1.5x (PoS-BERT's plan is an upper bound: every pair
at ``data.max_length`` and the vocabulary at ``data.tokenizer.vocab_size``), memory within 2x.
"""

import json
import os
import subprocess
import sys
import time

import pytest
from helpers import REPO_ROOT, compose_config, run_cli, run_pipeline

#: the memory child: peak RSS rise (benchmarks/_memory.py) of 3 real training steps of the composed config
MEMORY_CHILD = """
import json, sys, torch
sys.path[:0] = [{repo!r}, {tests!r}]
from pathlib import Path
from benchmarks import _memory
from helpers import compose_config
from runner.factories import build_pretraining
cfg = compose_config({overrides!r}, Path({out!r}))
torch.set_num_threads(1)
datamodule, _ = build_pretraining(cfg)
datamodule.prepare_data()
datamodule.setup("fit")
batches = [b for _, b in zip(range(3), datamodule.train_dataloader())]

def make_step():
    torch.manual_seed(0)
    module = build_pretraining(cfg)[1]
    module.prepare_for_finetune(datamodule) if module.prepares_from_data else None
    module.train()
    opt = torch.optim.AdamW(module.parameters(), lr=1e-4)
    state = {{"i": 0}}

    def step():
        batch = batches[state["i"] % len(batches)]
        module.training_step(batch, state["i"]).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        state["i"] += 1

    return step

_memory.report(_memory.measure_here(make_step, 3))
"""


def measured_rise_mib(overrides: list[str], out) -> float:
    code = MEMORY_CHILD.format(
        repo=str(REPO_ROOT), tests=str(REPO_ROOT / "tests"), overrides=overrides, out=str(out)
    )
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024), "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO_ROOT
    )
    lines = [x for x in proc.stdout.splitlines() if x.startswith("PEAK_RSS_JSON ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return json.loads(lines[-1].split(" ", 1)[1])["rise_kib"] / 1024


@pytest.mark.slow
@pytest.mark.parametrize("experiment, flops_low", [("pos_bert", 1.0), ("mm_mae", 0.95)])
def test_plan_agrees_with_a_measured_run(tmp_path, monkeypatch, experiment, flops_low):
    import runner.plan
    from runner.throughput import step_flop_counter

    overrides = [f"experiment={experiment}", "debug=smoke", "logger=none", "threads=1"]
    cfg = compose_config([*overrides, "stage=plan"], tmp_path / "plan")
    plan = runner.plan.make_plan(cfg)
    assert plan["batch_per_device"] == plan["samples_per_step"] == 8
    # the training run's counter, which on the CPU leaves out the attention kernels (the plan counts them)
    monkeypatch.setattr(runner.plan, "plan_flop_counter", step_flop_counter)
    same_counter = runner.plan.make_plan(cfg)["flops_per_step"]
    assert plan["flops_per_step"] > same_counter

    results = run_pipeline([*overrides, "stage=pretrain"], tmp_path / "run")
    ratio = same_counter / results["cost"]["flops_per_step"]
    assert flops_low <= ratio <= 1.5, f"plan/measured FLOPs per step = {ratio:.3f}"

    gib = plan["memory_per_device_gib"]
    planned_mib = (gib["gradients"] + gib["optimizer_state"] + gib["activations"]) * 1024
    measured_mib = measured_rise_mib(overrides, tmp_path / "mem")
    assert 0.5 <= planned_mib / measured_mib <= 2.0, (
        f"plan {planned_mib:.1f} MiB, measured {measured_mib:.1f}"
    )


@pytest.mark.slow
def test_plan_of_another_experiment_takes_a_batch_of_its_data(tmp_path):
    """The convex experiment has no batch maker of its own: the plan cuts one from its data module."""
    from runner.plan import make_plan

    overrides = ["experiment=convex", "debug=smoke", "logger=none"]
    plan = make_plan(compose_config([*overrides, "stage=plan"], tmp_path / "plan"))
    results = run_pipeline([*overrides, "stage=pretrain"], tmp_path / "run")
    assert plan["flops_per_step"] == results["cost"]["flops_per_step"] > 0
    assert plan["samples_per_step"] == 16 and "tokens_per_step" not in plan and "images_per_step" not in plan


@pytest.mark.slow
@pytest.mark.parametrize(
    "experiment, parameters, unit, per_step",
    [
        ("paper_table1", (109e6, 111e6), "tokens_per_step", 8 * 32 * 128),  # BERT-base; 256 pairs of 128
        ("paper_table2", (110e6, 125e6), "images_per_step", 8 * 256),  # ViT-B + 3 decoders; batch 2048
    ],
)
def test_a_paper_preset_plans_in_under_a_minute(tmp_path, experiment, parameters, unit, per_step):
    start = time.monotonic()
    proc = run_cli([f"experiment={experiment}", "stage=plan", "logger=none", f"hydra.run.dir={tmp_path}"])
    seconds = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert seconds < 60, f"stage=plan took {seconds:.0f} s"
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert parameters[0] <= plan["parameters"] <= parameters[1]
    assert plan[unit] == per_step and plan["world_size"] == 8 and plan["precision"] == "bf16-mixed"
    # the 6 x parameters x tokens rule of thumb (encoder FLOPs; PoS-BERT's MLM head only on masked positions)
    if unit == "tokens_per_step":
        assert 0.6 <= plan["flops_per_step"] / (6 * plan["parameters"] * per_step) <= 1.2
    assert plan["total_flops"] == pytest.approx(plan["flops_per_step"] * plan["steps"])
    assert f"plan of {experiment}" in proc.stdout and "H100 80GB" in proc.stdout
    # what stage=report report.data=plan.json stores as the plan's provenance (docs/scaling.md's blocks)
    assert plan["command"] == f"python run.py experiment={experiment} stage=plan logger=none"
    assert plan["renderer"] == "plan" and 0 < plan["seconds"] < 60 and len(plan["producer"]["commit"]) == 40


def test_plan_hours_and_fit_follow_the_numbers(tmp_path):
    from runner.plan import GIB, GPUS, fits, hours

    h = hours(989e12 * 0.35 * 3600 * 8, {"mfu": 0.35, "gpus_per_node": 8}, world=16)  # 8 H100-hours at 35%
    assert h["H100 80GB"]["gpu_hours"] == pytest.approx(8.0)
    assert h["H100 80GB"]["wall_hours"] == pytest.approx(0.5)
    assert h["H100 80GB"]["wall_hours_1x8"] == pytest.approx(1.0)
    assert h["A100 80GB"]["gpu_hours"] == pytest.approx(8.0 * 989 / 312)
    measured = {"activations_fixed": 0.0, "activations_per_sample": 1.0 * GIB}
    static = 30 * GIB  # weights + gradients + optimizer state
    mem = {"activations": 45 * GIB, "total": static + 45 * GIB}  # batch 45 at 1 GiB a sample
    rows = fits(mem, measured, 45, {"usable_memory": 0.9}, sharded=False)
    assert rows["H200 141GB"]["fits"] and not rows["H100 80GB"]["fits"]
    usable = GPUS["A100 40GB"][0] * 0.9
    assert rows["A100 40GB"]["largest_batch"] == int((usable - static) // GIB) == 6
    assert rows["A100 40GB"]["change"][0].startswith("data.batch_size=6 trainer.accumulate_grad_batches=8")
    assert any(c.startswith("trainer=fsdp") for c in rows["A100 40GB"]["change"])


def test_the_plan_counts_attention_on_the_cpu_as_on_a_gpu():
    import torch

    from runner.plan import plan_flop_counter

    q = torch.randn(2, 4, 32, 16)  # batch, heads, length, head width
    with plan_flop_counter() as counter:
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
    assert counter.get_total_flops() == 2 * (2 * 2 * 4 * 32 * 32 * 16)  # Q K^T and P V


def test_stage_plan_names_a_missing_step_limit(tmp_path):
    from runner.plan import make_plan
    from utils.errors import ConfigError

    cfg = compose_config(["experiment=mm_mae", "stage=plan", "trainer.max_steps=-1"], tmp_path)
    with pytest.raises(ConfigError, match=r"trainer\.max_steps"):
        make_plan(cfg)


# -- trainer=auto ----------------------------------------------------------------------------------------
def test_auto_precision_is_bf16_on_a_bf16_gpu_only(monkeypatch):
    import torch

    from runner import auto_precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert [auto_precision(a) for a in ("auto", "gpu", "cpu")] == ["bf16-mixed", "bf16-mixed", "32-true"]
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # e.g. a V100
    assert auto_precision("auto") == "32-true"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert auto_precision("gpu") == "32-true"


def test_the_default_trainer_is_auto_and_the_tests_pin_the_cpu(tmp_path, monkeypatch):
    import torch
    from lightning.pytorch.accelerators import CPUAccelerator

    from runner.factories import build_trainer

    assert os.environ["TRP_ACCELERATOR"] == "cpu"  # conftest.py's pin
    assert compose_config(["experiment=convex"], tmp_path).trainer.accelerator == "cpu"
    monkeypatch.delenv("TRP_ACCELERATOR")
    cfg = compose_config(["experiment=convex"], tmp_path)
    assert cfg.hydra.runtime.choices.trainer == "auto" and cfg.trainer.accelerator == "auto"
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: trainer=auto would train on it")
    assert cfg.trainer.precision == "32-true"
    assert isinstance(build_trainer(cfg.trainer, []).accelerator, CPUAccelerator)


@pytest.mark.slow
def test_gpu_script_reports_a_preset_against_its_plan(tmp_path):
    """benchmarks/gpu.sh's preset part on the CPU (a fake nvidia-smi, BERT-base cut to one layer on 16-piece pairs, the tiny bench
    row): the plan is written and the report row holds the plan's numbers beside the measured ones."""
    from test_benchmarks import GPU_SH, _fake_nvidia_smi

    tiny = "--device cpu --size tiny --steps 1 --warmup 1 --threads 1 --vocab 500 --length 16"
    env = {**_fake_nvidia_smi(tmp_path, ok=True), "PRESETS": "paper_table1", "OUT": str(tmp_path / "out"),
           "PLAN_ARGS": "model.num_hidden_layers=1 model.vocab_size=500 data.max_length=16", "PRESET_ARGS": tiny, "PYTHONPATH": str(REPO_ROOT)}  # fmt: skip
    args = [*tiny.split(), "--experiments", "pos_bert", "--balancers", "none", "--pos-batch", "4"]
    r = subprocess.run(["bash", str(GPU_SH), *args], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    plan = json.loads((tmp_path / "out" / "plan_paper_table1" / "plan.json").read_text())
    assert plan["world_size"] == 1 and plan["batch_per_device"] == 32
    rows = [
        x for x in (tmp_path / "out" / "gpu_report.md").read_text().splitlines() if x.startswith("| paper")
    ]
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert len(rows) == 1 and cells[0] == "paper_table1"
    assert float(cells[1]) == pytest.approx(plan["flops_per_step"] / 1e9, abs=0.1) and float(cells[2]) > 0
    assert cells[3] == "35%" and float(cells[5]) == pytest.approx(
        plan["memory_per_device_gib"]["total"], abs=0.01
    )


# -- the paper presets under debug=smoke, on stand-in data in the real formats, on the CPU ---------------------
#: the presets' ddp trainer on one CPU process; their precision (bf16-mixed) runs under CPU autocast
ONE_CPU = ["trainer.accelerator=cpu", "trainer.devices=1", "trainer.strategy=auto", "logger=none"]


@pytest.mark.slow
def test_paper_table1_runs_smoke_on_stand_in_wikipedia_and_glue(tmp_path, shared_data, nltk_data):
    """Wikipedia rows (id, url, title, text: one article each) saved with ``datasets`` stand in for the hub's Wikipedia + BookCorpus
    (data.disk_dataset instead of the stream), the GLUE distribution's RTE and MRPC files for the hub's GLUE. Not
    the preset's: BERT's hub tokenizer (a WordPiece is trained on the stand-in), one of BERT-base's 12 layers."""
    from datasets import Dataset

    raw = (shared_data / "text" / "wikitext-2-raw" / "wiki.test.raw").read_text(encoding="utf-8")
    articles = [a for a in raw.split("\n = ") if len(a) > 500][:20]
    rows = {"id": [str(i) for i in range(len(articles))], "text": articles}
    rows |= {"url": [f"https://en.wikipedia.org/{i}" for i in rows["id"]], "title": rows["id"]}
    Dataset.from_dict(rows).save_to_disk(str(tmp_path / "wikipedia"))
    overrides = [
        "experiment=paper_table1", "debug=smoke", *ONE_CPU, "print_table=false",
        "data.corpus.hf_sources=[]", "data.corpus.streaming=false", f"data.corpus.disk_dataset={tmp_path / 'wikipedia'}",
        "data.tokenizer.name=null", "data.corpus.num_proc=1", "data.loader.num_workers=0", "model.num_hidden_layers=1",
        "downstream.source=local", f"downstream.data_dir={shared_data / 'glue'}", "downstream.tasks=[RTE,MRPC]",
        "downstream.finetune_seeds=[0]",
    ]  # fmt: skip
    results = run_pipeline(overrides, tmp_path / "run")
    assert results["experiment"] == "paper_table1" and list(results["downstream"]) == ["RTE", "MRPC"]
    assert results["cost"]["steps"] == 4 and results["protocol"]["protocol"] == "finetune"


@pytest.mark.slow
def test_paper_table2_runs_smoke_on_a_stand_in_image_folder_and_nyuv2(tmp_path):
    """An ImageNet-style folder with pseudo-label PNGs and NYUv2 PNG splits (the formats of
    stage=pseudo_label and of the NYUv2 export) stand in for ImageNet and NYUv2. Not the preset's: 32 px images
    (4 patches a modality, 6 visible) and one of ViT-B's 12 blocks."""
    from test_image_folder import NUM_CLASSES, write_folder
    from test_nyuv2 import write_png_split

    write_folder(tmp_path / "img", tmp_path / "lab", {"cat": 3, "dog": 3}, size=(48, 40))
    write_png_split(tmp_path / "nyu", "train", [(40, 48), (36, 36)])
    write_png_split(tmp_path / "nyu", "test", [(36, 40)])
    overrides = [
        "experiment=paper_table2", "debug=smoke", *ONE_CPU, "print_table=false",
        f"data.root={tmp_path / 'img'}", f"data.labels_root={tmp_path / 'lab'}", f"data.num_classes={NUM_CLASSES}",
        "data.image_size=32", "model.num_visible=6", "model.depth=1", f"downstream.suites.nyuv2.root={tmp_path / 'nyu'}",
    ]  # fmt: skip
    results = run_pipeline(overrides, tmp_path / "run")
    assert results["experiment"] == "paper_table2" and results["cost"]["steps"] == 4
    assert list(results["downstream"]) == ["classification", "segmentation", "depth"]
