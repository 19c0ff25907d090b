"""The runner: stage orchestration above the experiments (run.py -> runner -> pretrain/finetune -> models/data
-> utils): trainer/logger factories, checkpoints, results and summary, the console, the sweep report and the
dashboard. Importing it registers the ``${required:key}`` and ``${auto_precision:accelerator}`` config resolvers."""

from omegaconf import OmegaConf

from utils.errors import ConfigError


def required_value(key: str):
    raise ConfigError(f"{key} is required by this config choice: set {key}=<value> on the command line.")


if not OmegaConf.has_resolver("required"):
    # `key: ${required:data.text_dir}` in a config file: a value the user must give (unlike `???`, it
    # survives being merged over a parent config's default).
    OmegaConf.register_new_resolver("required", required_value)


def auto_precision(accelerator: str) -> str:
    """``trainer.precision`` of ``trainer=auto``: bf16-mixed where ``accelerator`` (auto, gpu or cuda) lands on a
    GPU that supports bf16, else 32-true (the CPU keeps full precision and its results)."""
    if str(accelerator) not in ("auto", "gpu", "cuda"):
        return "32-true"
    import torch

    return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "32-true"


if not OmegaConf.has_resolver("auto_precision"):
    OmegaConf.register_new_resolver("auto_precision", auto_precision)
