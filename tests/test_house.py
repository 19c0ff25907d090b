"""The house rules a newcomer relies on: no module over 550 lines and no function over 60 lines outside tests/
(a long function is a sequence of named steps waiting to be split)."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("run.py", "runner", "pretrain", "finetune", "models", "data", "utils", "benchmarks")


def _sources(root: Path = REPO) -> list[Path]:
    files = []
    for name in PACKAGES:
        path = root / name
        files += [path] if path.is_file() else sorted(path.rglob("*.py"))
    return files


def long_parts(root: Path = REPO, max_lines: int = 550, max_function: int = 60) -> list[str]:
    """'path: N lines' for each module over ``max_lines`` and 'path:line name: N lines' for each function over
    ``max_function``."""
    out = []
    for path in _sources(root):
        text = path.read_text()
        rel = path.relative_to(root)
        if (n := len(text.splitlines())) > max_lines:
            out.append(f"{rel}: {n} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if (n := node.end_lineno - node.lineno + 1) > max_function:
                    out.append(f"{rel}:{node.lineno} {node.name}: {n} lines")
    return out


def test_no_module_over_550_lines_and_no_function_over_60():
    assert long_parts() == []


def test_the_scan_sees_a_long_function_and_a_long_module(tmp_path):
    (tmp_path / "utils").mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(70))
    (tmp_path / "utils" / "long.py").write_text(f"def f():\n{body}\n" + "\n" * 500)
    assert long_parts(tmp_path) == ["utils/long.py: 571 lines", "utils/long.py:1 f: 71 lines"]
