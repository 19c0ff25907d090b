"""The README and the mkdocs site in docs/: the site builds strictly, the README stays a short front door, every
code fence marked to run does run, and no file cites a file the repository does not hold.

Convention: a fence tagged ```python runs (in a fresh namespace, from a temporary working directory); a fence
tagged ```python notest is an illustration and does not. The fences are read with markdown-it-py (rich's
dependency, in the ``docs`` extra) and executed here: pytest-markdown-docs collects Markdown only through its own
command-line flag and sybil through a conftest hook, while these tests must run in the ordinary collection.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

markdown_it = pytest.importorskip("markdown_it", reason="markdown-it-py is not installed (the docs extra)")

ROOT = Path(__file__).resolve().parents[1]
README_LIMIT = 12_000  # bytes
# design notes kept outside the repository (spelt in two parts so that this file does not cite them itself)
MISSING_FILES = tuple(name + ".md" for name in ("DESIGN", "BALANCERS"))


def _markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _tracked_files() -> list[Path]:
    """The repository's files: git's tracked and untracked-but-not-ignored ones (a new file counts too)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files are unknown")
    return [ROOT / p for p in out.decode().split("\0") if p and (ROOT / p).is_file()]


def _tokens(path: Path):
    return markdown_it.MarkdownIt("commonmark").enable("table").parse(path.read_text(encoding="utf-8"))


def _runnable_fences() -> list[tuple[str, str]]:
    """(id, code) of every ```python fence not marked ``notest``, in README.md and docs/."""
    fences = []
    for path in _markdown_files():
        for tok in _tokens(path):
            words = tok.info.split()
            if tok.type == "fence" and words[:1] == ["python"] and "notest" not in words[1:]:
                fences.append((f"{path.relative_to(ROOT)}:{tok.map[0] + 1}", tok.content))
    return fences


FENCES = _runnable_fences()


def test_readme_is_a_short_front_door():
    size = (ROOT / "README.md").stat().st_size
    assert size <= README_LIMIT, (
        f"README.md is {size} bytes; keep it under {README_LIMIT} and move guides to docs/"
    )
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert re.search(r"<!-- results:headline -->.*<!-- /results:headline -->", text, re.S)


def test_the_readme_example_is_collected_to_run():
    readme = [name for name, _ in FENCES if name.startswith("README.md:")]
    assert len(readme) == 1, f"expected the README's one runnable example, found {readme}"


@pytest.mark.parametrize("code", [c for _, c in FENCES], ids=[n for n, _ in FENCES])
def test_code_fence_runs(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "<fence>", "exec"), {"__name__": "__main__"})


@pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None, reason="mkdocs is not installed (the docs extra)"
)
def test_mkdocs_builds_strictly(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "-f",
            str(ROOT / "mkdocs.yml"),
            "-d",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "balancers" / "index.html").is_file()


def test_no_file_cites_a_file_outside_the_repository():
    citing = []
    for path in _tracked_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        citing += [f"{path.relative_to(ROOT)} cites {name}" for name in MISSING_FILES if name in text]
    assert not citing, citing


def _links(path: Path):
    for tok in _tokens(path):
        for child in tok.children or []:
            if child.type == "link_open":
                yield child.attrs["href"]


def test_relative_markdown_links_resolve_inside_the_repository():
    broken, checked = [], 0
    for path in [p for p in _tracked_files() if p.suffix == ".md"]:
        for href in _links(path):
            target = href.split("#", 1)[0]
            if not target or re.match(r"^[a-z][a-z0-9+.-]*:", target):  # an anchor, a URL
                continue
            checked += 1
            resolved = (path.parent / target).resolve()
            if not resolved.exists() or ROOT not in resolved.parents:
                broken.append(f"{path.relative_to(ROOT)} -> {href}")
    assert not broken, broken
    assert checked >= 10, f"only {checked} relative links found: is the Markdown parsed?"


def test_configuration_page_names_every_config_group_and_choice():
    page = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    missing = []
    for yaml in sorted((ROOT / "conf").rglob("*.yaml")):
        group = yaml.parent.relative_to(ROOT / "conf").as_posix()
        if group == ".":
            continue  # conf/config.yaml: the top-level keys
        missing += [f"{group}: {word}" for word in (group, yaml.stem) if f"`{word}`" not in page]
    assert not missing, f"docs/configuration.md does not name {missing}"
