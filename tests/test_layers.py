"""The layers import one way: run.py -> runner -> pretrain / finetune -> models / data -> utils.

A package may import its own modules and those of a lower layer, never a layer above or beside it; the models
are plain ``nn.Module``s that load without Hydra's config libraries."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RANK = {"utils": 0, "models": 1, "data": 1, "pretrain": 2, "finetune": 2, "runner": 3, "run": 4}


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in the file, including those inside functions."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
    return out


def layer_violations(root: Path) -> list[str]:
    """``path:line imports module`` for every import in the layer packages under ``root`` (and its run.py) that
    goes up or sideways."""
    wrong = []
    for package, rank in RANK.items():
        files = [root / "run.py"] if package == "run" else sorted((root / package).rglob("*.py"))
        for path in (f for f in files if f.is_file()):
            for line, module in imports_of(path):
                top = module.split(".")[0]
                if top in RANK and top != package and RANK[top] >= rank:
                    wrong.append(f"{path.relative_to(root)}:{line} imports {module}")
    return wrong


def test_no_import_goes_up_or_sideways():
    assert (ROOT / "run.py").is_file()
    assert all(list((ROOT / package).rglob("*.py")) for package in RANK if package != "run")
    assert layer_violations(ROOT) == []


def test_the_check_sees_an_upward_import(tmp_path):
    """The rule above is not vacuous: in a tree laid out like the repository's, a model importing the runner
    inside a function, a data module importing a model (sideways) and a runner importing run.py are reported,
    each with its file and line; the same tree with only downward imports passes."""
    files = {
        "models/net.py": "import torch\nfrom utils.errors import ConfigError\n",
        "data/loader.py": "import utils.io\n",
        "pretrain/task.py": "from models.net import Net\nfrom data import loader\n",
        "runner/main.py": "from pretrain.task import Task\nimport finetune.suite\n",
        "run.py": "from runner.main import main\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert layer_violations(tmp_path) == []
    (tmp_path / "models" / "bad.py").write_text(
        "import torch\n\ndef f():\n    from runner.pipeline import run\n"
    )
    (tmp_path / "data" / "sideways.py").write_text("from models.net import Net\n")
    (tmp_path / "runner" / "up.py").write_text("x = 1\nimport run\n")
    assert layer_violations(tmp_path) == [
        "models/bad.py:4 imports runner.pipeline",
        "data/sideways.py:1 imports models.net",
        "runner/up.py:2 imports run",
    ]


@pytest.mark.slow
@pytest.mark.parametrize(
    "modules", [["models.multimae", "models.bert", "models.convex"], ["data.pos_bert", "data.nyuv2"]]
)
def test_models_and_data_load_without_hydra_or_omegaconf(modules):
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in modules)
        + "bad = sorted({m.split('.')[0] for m in sys.modules} & {'hydra', 'omegaconf', 'runner', 'pretrain', 'finetune'})\n"
        + "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
