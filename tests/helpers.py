"""Helpers shared by the test files (``from helpers import ...``): compose the run's config, run the pipeline
in-process or ``run.py`` in a subprocess. Fixtures live in conftest.py."""

import os
from functools import cache
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
CONF_DIR = REPO_ROOT / "conf"


def smoke_values(group: str, config: str, **overrides) -> dict:
    """The values ``debug=smoke`` gives conf/<group>/<config>.yaml (conf/debug/smoke/<group>/<config>.yaml, the
    files its defaults list names merged in), with ``overrides`` merged over them (a section's dict key by key):
    keyword arguments that make its class smoke-sized."""
    from omegaconf import OmegaConf

    merged = OmegaConf.merge(_smoke_file(group, config), overrides)
    return OmegaConf.to_container(merged)


@cache
def _smoke_file(group: str, config: str):
    import yaml
    from omegaconf import OmegaConf

    node = yaml.safe_load((CONF_DIR / "debug" / "smoke" / group / f"{config}.yaml").read_text()) or {}
    merged = OmegaConf.create()
    for entry in node.pop("defaults", []):  # smoke/<group>/<file>@<package>
        path, _, package = entry.partition("@")
        _, sub_group, name = path.split("/")
        values = _smoke_file(sub_group, name)
        for key in reversed([] if package in ("", "_here_") else package.split(".")):
            values = {key: values}
        merged = OmegaConf.merge(merged, values)
    return OmegaConf.merge(merged, node)


def compose_config(overrides: list[str], output_dir: Path):
    """Compose the run's config as ``python run.py <overrides>`` would, with the run dir at output_dir."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    import runner  # noqa: F401  (registers the config resolvers, as run.py's import of the runner does)

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[*overrides, f"hydra.run.dir={output_dir}", f"paths.output_dir={output_dir}"],
            return_hydra_config=True,
        )
    HydraConfig().set_config(cfg)
    return cfg


def run_pipeline(overrides: list[str], output_dir: Path) -> dict | None:
    """Run the pipeline in-process (what run.py does) and return its results dict."""
    from omegaconf import open_dict

    from runner.pipeline import run

    cfg = compose_config(overrides, output_dir)
    with open_dict(cfg):
        del cfg["hydra"]
    return run(cfg)


def run_cli(args: list[str], cwd: Path = REPO_ROOT, timeout: int = 300, env: dict | None = None):
    """``python run.py <args>`` in a subprocess (wandb disabled unless ``env`` says otherwise); returns the
    CompletedProcess."""
    import subprocess
    import sys

    env = {
        **os.environ,
        "WANDB_MODE": "disabled",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(REPO_ROOT),
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "run.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


#: A convex pipeline run made small for statistical tests that pre-train many times through the whole path of
#: ``run.py``: no logger, callbacks, table, checkpoint or validation; 50 SGD steps on batches of 256 (low noise).
SMALL_CONVEX_RUN = [
    "logger=none",
    "callbacks=none",
    "print_table=false",
    "checkpoint.save_last=false",
    "trainer.limit_val_batches=0",
    "trainer.max_steps=50",
    "data.batch_size=256",
]
