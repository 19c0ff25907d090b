"""Every config file of conf/ composes, with Hydra's compose API as ``python run.py`` composes it, together
with each experiment it belongs to, and what it names can be built without running anything: the
pre-training data module (constructed, never set up), the model (the large sizes with one layer), the
pre-training module with its balancer and aggregation, the downstream suite, the trainer and loggers on the
CPU, the callbacks; a launcher or sweeper is composed with the Hydra config and its class imported.
Every experiment is also composed and built with ``debug=smoke``.

A config file that none of the cases below covers fails ``test_every_config_file_is_covered``: a new file
in an experiment-specific group (data, model, module, downstream) goes into ``BELONGS``."""

from functools import cache
from pathlib import Path

import pytest
import yaml
from helpers import CONF_DIR, compose_config, smoke_values
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf

#: experiment-specific groups: choice -> the pre-training module (the experiment family) it belongs to
BELONGS = {
    "data": {
        **dict.fromkeys(
            ["pos_corpus", "wikitext", "bookcorpus", "wikipedia", "wikipedia_bookcorpus", "text_file", "text_folder",
             "disk_dataset"],
            "pos_bert",
        ),
        **dict.fromkeys(["scenes", "imagenet_folder"], "mm_mae"),
        "convex": "convex",
    },
    "model": {
        **dict.fromkeys(["bert_tiny", "bert_mini", "bert_small", "bert_base"], "pos_bert"),
        **dict.fromkeys(["mmmae_tiny", "mmmae_small", "mmmae_base"], "mm_mae"),
        "convex": "convex",
    },
    "module": {"pos_bert": "pos_bert", "mm_mae": "mm_mae", "convex": "convex"},
    "downstream": {
        **dict.fromkeys(["glue_like", "glue"], "pos_bert"),
        **dict.fromkeys(["scenes", "nyuv2", "image_folder_cls", "table2_real"], "mm_mae"),
        "convex": "convex",
    },
}
#: groups that go with every experiment: each choice is composed with each root experiment (pos_bert,
#: mm_mae, convex; the table experiments change only sweep parameters and sizes of their root)
RUN_WIDE = [
    "balancer",
    "trainer",
    "logger",
    "callbacks",
    "aggregation",
    "pseudo_label",
    "module/optimizer",  # nested under module: swapped with module/optimizer=<file>
    "module/scheduler",
    "hydra/launcher",
    "hydra/sweeper",
]
#: in config.yaml's defaults, so composed in every case
ALWAYS = {("hydra", "default"), ("paths", "default")}

#: the large models with one layer (their widths and heads as configured); the GPU MultiMAE sizes at the
#: image size their config files ask for
EXTRA = {
    ("model", "bert_mini"): ["model.num_hidden_layers=1"],
    ("model", "bert_small"): ["model.num_hidden_layers=1"],
    ("model", "bert_base"): ["model.num_hidden_layers=1"],
    ("model", "mmmae_small"): ["model.depth=1", "data.image_size=224"],
    ("model", "mmmae_base"): ["model.depth=1", "data.image_size=224"],
    # the README's command for it: ImageNet pre-training, NYUv2 adaptation
    ("data", "imagenet_folder"): ["data.root=/data/imagenet", "downstream=nyuv2"],
    ("downstream", "nyuv2"): ["downstream.root=/data/nyuv2"],
    # the README's Table 2 on real data: classification on the image folder, segmentation and depth on NYUv2
    ("downstream", "image_folder_cls"): ["data=imagenet_folder", "data.root=/data/imagenet"],
    ("downstream", "table2_real"): [
        "data=imagenet_folder",
        "data.root=/data/imagenet",
        "downstream.suites.nyuv2.root=/data/nyuv2",
    ],
    ("pseudo_label", "dpt_mask2former"): [
        "pseudo_label.image_root=/data/images",
        "pseudo_label.out_root=/data/labels",
    ],
    ("hydra/sweeper", "minimax_optuna"): ["balancer=minimax"],
    # no schedule under an experiment that sets part of it (pos_bert's warmup_steps) takes the null as well
    ("module/scheduler", "none"): ["module.scheduler=null"],
}
#: experiments on data that must be on disk (the paper presets): the paths they need, as the docs give them
EXPERIMENT_EXTRA = {
    e: {
        "data": ["data.root=/data/imagenet", "data.labels_root=/data/labels"],
        "downstream": ["downstream.suites.nyuv2.root=/data/nyuv2"],
    }
    for e in ("paper_table2", "paper_table2_s50")
}
#: groups an experiment sets keys inside that only its own choice has (paper_table2's downstream.suites)
FIXED_GROUPS = {
    "paper_table2": {"downstream"},
    "paper_table2_s50": {"downstream"},
    # the heterogeneity dials are keys of the generated data (the grammar corpus, the rendered scenes)
    "heterogeneity_pos_bert": {"data"},
    "heterogeneity_mm_mae": {"data"},
}
#: what reads a dataset on disk when constructed: composed and resolved, its class imported, not built
NOT_CONSTRUCTED = {"data": {"imagenet_folder"}, "downstream": {"nyuv2", "image_folder_cls", "table2_real"}}


def config_files() -> dict[str, list[str]]:
    """group -> choices, one per conf/<group>/<choice>.yaml (nested groups such as hydra/launcher too)."""
    groups: dict[str, list[str]] = {}
    for path in sorted(CONF_DIR.rglob("*.yaml")):
        if path.parent != CONF_DIR:
            groups.setdefault(path.parent.relative_to(CONF_DIR).as_posix(), []).append(path.stem)
    return groups


@cache
def family(experiment: str) -> str:
    """The pre-training module an experiment file selects, following its defaults (table1_pos_bert -> pos_bert)."""
    node = yaml.safe_load((CONF_DIR / "experiment" / f"{experiment}.yaml").read_text())
    for entry in node.get("defaults", []):
        if isinstance(entry, dict) and "override /module" in entry:
            return entry["override /module"]
        if isinstance(entry, str) and entry != "_self_":
            return family(entry)
    raise AssertionError(f"experiment {experiment} selects no module")


def experiment_extra(experiment: str, swapped: str | None = None) -> list[str]:
    """The overrides :data:`EXPERIMENT_EXTRA` gives an experiment, but those of the group ``swapped``."""
    return [o for g, opts in EXPERIMENT_EXTRA.get(experiment, {}).items() if g != swapped for o in opts]


def default_choice(experiment: str, group: str) -> str | None:
    """The ``override /<group>`` choice of an experiment file, following its defaults."""
    node = yaml.safe_load((CONF_DIR / "experiment" / f"{experiment}.yaml").read_text())
    for entry in node.get("defaults", []):
        if isinstance(entry, dict) and f"override /{group}" in entry:
            return entry[f"override /{group}"]
    parents = [e for e in node.get("defaults", []) if isinstance(e, str) and e != "_self_"]
    return default_choice(parents[0], group) if parents else None


FILES = config_files()
#: the smoke values of each data and downstream file (merged over it under debug=smoke)
SMOKE_GROUPS = ("debug/smoke/data", "debug/smoke/downstream")
EXPERIMENTS = FILES["experiment"]
ROOTS = sorted({family(e) for e in EXPERIMENTS})


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[tuple[str, str], list[str]]:
    """The paths the file-reading text sources require, written once."""
    root = tmp_path_factory.mktemp("sources")
    text = "The cat sat on the mat. It was warm.\n\nA dog ran in the park. The sun was out.\n"
    (root / "corpus.txt").write_text(text)
    (root / "docs").mkdir()
    (root / "docs" / "a.txt").write_text(text)
    from datasets import Dataset

    Dataset.from_dict({"text": text.split("\n\n")}).save_to_disk(str(root / "saved"))
    return {
        ("data", "text_file"): [f"data.corpus.text_file={root / 'corpus.txt'}"],
        ("data", "text_folder"): [f"data.corpus.text_dir={root / 'docs'}"],
        ("data", "disk_dataset"): [f"data.corpus.disk_dataset={root / 'saved'}"],
    }


def compose(overrides: list[str], out_dir: Path):
    """The composed config with every interpolation outside ``hydra`` resolved (the sweep subdir needs a job
    number), so a key a choice refers to but its experiment lacks fails here."""
    cfg = compose_config(overrides, out_dir)
    for key in cfg:
        if key != "hydra" and OmegaConf.is_config(cfg[key]):
            OmegaConf.to_container(cfg[key], resolve=True)
    return cfg


def build(cfg, skip: dict[str, set[str]] | None = None):
    """What ``run.py`` builds before training: (data module, pre-training module, downstream suite); a group
    whose choice is in ``skip`` only has its ``_target_`` imported."""
    from runner.factories import build_pretraining, instantiate_node

    skip = skip or {}
    choices = cfg.hydra.runtime.choices
    if choices.data in skip.get("data", ()):
        assert get_class(cfg.data._target_)
        datamodule = None
        factory = instantiate_node(cfg.module, "module")
        aggregation = OmegaConf.to_container(cfg.aggregation, resolve=True)
        module = factory(
            model=instantiate_node(cfg.model, "model"),
            balancer=instantiate_node(cfg.balancer, "balancer"),
            aggregation=aggregation,
        )
    else:
        datamodule, module = build_pretraining(cfg)
    if choices.downstream in skip.get("downstream", ()):
        assert get_class(cfg.downstream._target_)
        suite = None
    else:
        from finetune.protocol import DownstreamSuite

        suite = instantiate_node(cfg.downstream, "downstream")
        assert isinstance(suite, DownstreamSuite)  # the pipeline calls its validate() before pre-training
    balancer = module.aggregator.balancer
    assert isinstance(balancer, get_class(cfg.balancer._target_))
    assert balancer.num_tasks == len(module.aggregator.task_names) >= 1
    return datamodule, module, suite


# -- every experiment, as is and with each debug choice (smoke) ---------------------------------------


@pytest.mark.parametrize("debug", [None, *FILES["debug"]])
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_builds(tmp_path, experiment, debug):
    extra = experiment_extra(experiment)
    cfg = compose([f"experiment={experiment}", *extra, *([f"debug={debug}"] if debug else [])], tmp_path)
    assert cfg.hydra.runtime.choices.module == family(experiment)
    datamodule, module, suite = build(cfg, skip=NOT_CONSTRUCTED if extra else None)
    assert (datamodule is not None and suite is not None) or extra
    if debug == "smoke":
        assert cfg.trainer.max_steps == 4
        assert_smoke_values(cfg)
    # a table's sweep names existing choices: `python run.py -m experiment=<table>` starts every job
    for key, values in (OmegaConf.select(cfg, "hydra.sweeper.params") or {}).items():
        if key in FILES:
            missing = set(str(values).split(",")) - set(FILES[key])
            assert not missing, (
                f"experiment {experiment} sweeps {key} over choices without a config file: {missing}"
            )
        else:
            assert OmegaConf.select(cfg, key) is not None, f"experiment {experiment} sweeps {key}, not a key"


def dotted(values: dict, prefix: str = ""):
    """``(dotted key, value)`` of every leaf of a nested dict."""
    for key, value in values.items():
        if isinstance(value, dict):
            yield from dotted(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def assert_smoke_values(cfg) -> None:
    """``debug=smoke``: the data and downstream configs carry every value of their file in conf/debug/smoke/."""
    for group in ("data", "downstream"):
        choice = cfg.hydra.runtime.choices[group]
        assert (CONF_DIR / "debug" / "smoke" / group / f"{choice}.yaml").is_file(), (
            f"conf/{group}/{choice}.yaml has no smoke values: add conf/debug/smoke/{group}/{choice}.yaml"
        )
        for key, value in dotted(smoke_values(group, choice)):
            assert OmegaConf.select(cfg[group], key) == value, f"debug=smoke: {group}.{key}"


def test_smoke_files_name_config_files():
    for group in ("data", "downstream"):
        assert set(FILES[f"debug/smoke/{group}"]) == set(FILES[group]), (
            f"conf/debug/smoke/{group}/ vs conf/{group}/"
        )


def test_smoke_values_are_plain_defaults_that_the_command_line_overrides(tmp_path):
    """A data file shows its real default; debug=smoke merges its smoke file over it; the command line wins."""
    plain = compose(["experiment=pos_bert"], tmp_path)
    assert (plain.data.corpus.n_docs, plain.data.loader.batch_size) == (20000, 32)
    smoke = compose(["experiment=pos_bert", "debug=smoke"], tmp_path)
    assert (smoke.data.corpus.n_docs, smoke.data.loader.batch_size) == (40, 8)
    mine = compose(["experiment=pos_bert", "debug=smoke", "data.corpus.n_docs=100"], tmp_path)
    assert (mine.data.corpus.n_docs, mine.data.loader.batch_size) == (100, 8)
    # over an experiment's own value too: experiment=convex sets downstream.repeats per data.kind
    convex = compose(["experiment=convex", "data.kind=underdetermined", "debug=smoke"], tmp_path)
    assert convex.downstream.repeats == 2 and convex.data.dim == 64
    for text in glob_text(CONF_DIR / "data", CONF_DIR / "downstream", CONF_DIR / "experiment"):
        assert "smoke" not in text.split("#")[0], text  # no value of a config file reads the smoke values


def glob_text(*folders: Path):
    for folder in folders:
        for path in sorted(folder.glob("*.yaml")):
            yield from (f"{path.name}: {line}" for line in path.read_text().splitlines())


@pytest.mark.parametrize(
    "group, choice, experiment",
    [(g, c, e) for g in ("data", "downstream") for c in FILES[g] for e in ROOTS if BELONGS[g].get(c) == e],
)
def test_every_data_and_downstream_choice_takes_its_smoke_values(
    tmp_path, sources, group, choice, experiment
):
    extra = EXTRA.get((group, choice), []) + sources.get((group, choice), [])
    cfg = compose([f"experiment={experiment}", f"{group}={choice}", *extra, "debug=smoke"], tmp_path)
    assert_smoke_values(cfg)


# -- experiment-specific choices with each experiment they belong to ---------------------------------------


def _specific_cases():
    """Each choice with each experiment of its family; with a table experiment (its root plus sweep parameters
    and sizes) the case is `slow`: the quick loop composes it with the root experiment."""
    for group in BELONGS:
        for choice in FILES[group]:
            for experiment in EXPERIMENTS:
                if group in FIXED_GROUPS.get(experiment, ()) and choice != default_choice(experiment, group):
                    continue
                if BELONGS[group].get(choice) == family(experiment):
                    marks = [] if experiment in ROOTS else [pytest.mark.slow]
                    yield pytest.param(
                        group, choice, experiment, id=f"{group}={choice}-{experiment}", marks=marks
                    )


@pytest.mark.parametrize("group, choice, experiment", list(_specific_cases()))
def test_experiment_specific_choice_composes_and_builds_with_its_experiment(
    tmp_path, sources, group, choice, experiment
):
    extra = EXTRA.get((group, choice), []) + sources.get((group, choice), [])
    if experiment in EXPERIMENT_EXTRA:  # its paths; a swapped group's own (not a swap of a group it fixes)
        if choice == default_choice(experiment, group):
            extra = experiment_extra(experiment)
        else:
            fixed = FIXED_GROUPS.get(experiment, set())
            extra = [o for o in extra if o.partition("=")[0] not in fixed]
            extra += experiment_extra(experiment, group)
    cfg = compose([f"experiment={experiment}", f"{group}={choice}", *extra], tmp_path)
    assert cfg.hydra.runtime.choices[group] == choice
    build(cfg, skip=NOT_CONSTRUCTED)


def test_imagenet_folder_composes_with_the_scenes_suite(tmp_path):
    # the README's SLURM command: table2_mm_mae pre-trained on an image folder, adapted on the generated scenes
    cfg = compose(
        [
            "experiment=table2_mm_mae",
            "model=mmmae_base",
            "model.depth=1",
            "data=imagenet_folder",
            "data.root=/x",
        ],
        tmp_path,
    )
    build(cfg, skip=NOT_CONSTRUCTED)


# -- run-wide choices with every root experiment -----------------------------------------------------------


@pytest.mark.parametrize(  # the quick loop builds every balancer with the convex experiment; the rest are `slow`
    "experiment", [pytest.param(e, marks=() if e == "convex" else pytest.mark.slow) for e in ROOTS]
)
@pytest.mark.parametrize("balancer", FILES["balancer"])
def test_every_balancer_builds_with_every_experiment(tmp_path, balancer, experiment):
    cfg = compose([f"experiment={experiment}", f"balancer={balancer}"], tmp_path)
    assert cfg.hydra.runtime.choices.balancer == balancer
    build(cfg)


def _run_wide_cases():
    """The other run-wide groups are independent of each other: case i of an experiment takes the i-th choice
    of every group (cycling), so each choice meets each root experiment in max(choices per group) composes."""
    groups = [g for g in RUN_WIDE if g != "balancer" and FILES.get(g)]
    for experiment in ROOTS:
        for i in range(max(len(FILES[g]) for g in groups)):
            picked = {g: FILES[g][i % len(FILES[g])] for g in groups}
            name = ",".join(f"{g}={c}" for g, c in picked.items())
            yield pytest.param(picked, experiment, id=f"{experiment}-{name}")


@pytest.mark.parametrize("picked, experiment", list(_run_wide_cases()))
def test_run_wide_choices_compose_and_build_with_every_experiment(tmp_path, picked, experiment):
    from runner.factories import build_loggers, build_trainer
    from runner.loggers import run_identity

    overrides = [f"{g}={c}" for g, c in picked.items()]
    extra = [o for g, c in picked.items() for o in EXTRA.get((g, c), [])]
    cfg = compose([f"experiment={experiment}", *overrides, *extra], tmp_path)
    assert {g: cfg.hydra.runtime.choices[g] for g in picked} == picked
    _, module, _ = build(cfg)
    assert module.aggregator.on_nonfinite == cfg.aggregation.on_nonfinite
    if cfg.trainer.accelerator == "cpu":
        trainer = build_trainer(cfg.trainer, [])
        assert trainer.num_devices == cfg.trainer.devices
    else:  # needs a GPU: the class only
        assert get_class(cfg.trainer._target_)
    nodes = [n for n in cfg.logger.values() if n and "_target_" in n]
    identity = run_identity(cfg, cfg.hydra.runtime.choices.balancer, [])
    loggers = build_loggers(
        cfg.logger, tmp_path, identity
    )  # a logger that cannot start is left out with a warning: compare them
    assert [type(lg) for lg in loggers] == [get_class(n._target_) for n in nodes]
    for stage in ("pretrain", "downstream"):
        for node in cfg.callbacks[stage].values():
            assert isinstance(instantiate(node), get_class(node._target_))
    if cfg.get("pseudo_label") is not None:
        assert isinstance(instantiate(cfg.pseudo_label), get_class(cfg.pseudo_label._target_))
    for group in ("hydra/launcher", "hydra/sweeper"):  # Hydra builds them: the plugin must import
        if group in picked:
            node = cfg.hydra[group.split("/")[1]]
            OmegaConf.to_container(node, resolve=True)
            assert get_class(node._target_)
            for key in node.get("params") or {}:  # a sweeper's search space names keys of the run's config
                assert OmegaConf.select(cfg, key) is not None, f"{group}={picked[group]} searches {key}"


def test_every_config_file_is_covered():
    covered = set(ALWAYS)
    covered |= {("experiment", e) for e in EXPERIMENTS} | {("debug", d) for d in FILES["debug"]}
    covered |= {(g, c) for g in SMOKE_GROUPS for c in FILES[g]}  # test_smoke_files_name_config_files
    covered |= {(g, c) for g in BELONGS for c, f in BELONGS[g].items() if f in ROOTS}
    covered |= {(g, c) for g in RUN_WIDE for c in FILES.get(g, [])}
    files = {(g, c) for g, choices in FILES.items() for c in choices}
    assert files - covered == set(), "config files no test composes: add them to BELONGS or RUN_WIDE"
    assert set(FILES) - set(BELONGS) - set(RUN_WIDE) <= {
        "experiment",
        "debug",
        "hydra",
        "paths",
        *SMOKE_GROUPS,
    }
