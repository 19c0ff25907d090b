"""The layers import one way: run.py -> runner -> pretrain / finetune -> models / data -> utils (docs/design.md).

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


def test_no_import_goes_up_or_sideways():
    wrong = []
    for package, rank in RANK.items():
        files = [ROOT / "run.py"] if package == "run" else sorted((ROOT / package).rglob("*.py"))
        assert files, package
        for path in files:
            for line, module in imports_of(path):
                top = module.split(".")[0]
                if top in RANK and top != package and RANK[top] >= rank:
                    wrong.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert wrong == []


def test_the_check_sees_an_upward_import(tmp_path):
    """The rule above is not vacuous: a model importing the runner would be reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from runner.pipeline import run\n")
    ((line, module),) = imports_of(bad)
    assert (line, module.split(".")[0]) == (2, "runner") and RANK["runner"] > RANK["models"]


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
