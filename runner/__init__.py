"""The runner: stage orchestration above the experiments (run.py -> runner -> pretrain/finetune -> models/data
-> utils): trainer/logger factories, checkpoints, results and summary, the console, the sweep report and the
dashboard. Importing it registers the ``${required:key}`` config resolver."""

from omegaconf import OmegaConf

from utils.errors import ConfigError


def required_value(key: str):
    raise ConfigError(f"{key} is required by this config choice: set {key}=<value> on the command line.")


if not OmegaConf.has_resolver("required"):
    # `key: ${required:data.text_dir}` in a config file: a value the user must give (unlike `???`, it
    # survives being merged over a parent config's default).
    OmegaConf.register_new_resolver("required", required_value)
