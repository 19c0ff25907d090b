"""Stored results and the result pages rendered from them.

``results/<name>/`` holds one finished sweep: each run's results.json as ``runs/<run dir>.json``, summary.md,
summary.csv, provenance.json and the figures (png). ``python run.py stage=report report.sweep_dir=<sweep dir> report.store=<name>`` makes
one; ``python run.py stage=report report.docs=true`` rebuilds every stored summary from its ``runs/`` through the report code
and rewrites the text between each ``<!-- results:NAME -->`` / ``<!-- /results:NAME -->`` pair of README.md and
docs/*.md from ``results/NAME/`` (the figures copied to ``docs/results/NAME/``, where mkdocs finds them);
``--check`` changes nothing and lists what is out of date. So a number in the docs changes only with its runs.
"""

from __future__ import annotations

import filecmp
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

from runner.provenance import FILE as PROVENANCE
from runner.provenance import describe
from runner.report import summary_markdown, write_csv
from runner.tables import _interval, build_table, collect

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]
RESULTS = "results"
#: the stored result the README's headline table comes from: the first of these that is stored
HEADLINE_SOURCES = ("table1", "table2", "convex_regimes", "theory")
_BLOCK = re.compile(r"(<!-- results:([\w-]+) -->\n)(.*?)(<!-- /results:\2 -->)", re.S)
_NAME = re.compile(r"[A-Za-z0-9_-]+")


class StoreError(Exception):
    """A sweep that cannot be stored under the name asked for (the message is the one sentence to print)."""


def _run_name(run_dir: Path, sweep_dir: Path) -> str:
    rel = Path(run_dir).resolve().relative_to(Path(sweep_dir).resolve())
    return "__".join(rel.parts) or Path(sweep_dir).resolve().name


def store(sweep_dir: Path, name: str, root: Path = REPO, force: bool = False) -> Path:
    """Copy a finished sweep (with its summary written) into ``root/results/<name>/``: the runs' results.json
    as ``runs/<run dir>.json``, summary.md, summary.csv, provenance.json and the png figures, nothing else."""
    sweep_dir = Path(sweep_dir)
    if not _NAME.fullmatch(name):
        raise StoreError(f"report.store={name!r}: a result name is letters, digits, '_' and '-' only.")
    runs = collect(sweep_dir)
    if not runs:
        raise StoreError(f"{sweep_dir} holds no results.json: nothing to store.")
    dest = Path(root) / RESULTS / name
    if dest.exists() and not force:
        raise StoreError(f"{dest} exists already: pass report.force=true to replace it.")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=dest.parent))
    try:
        _copy_sweep(sweep_dir, runs, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return dest


def _copy_sweep(sweep_dir: Path, runs: list[dict], tmp: Path) -> None:
    (tmp / "runs").mkdir()
    for run in runs:
        name = _run_name(run["_dir"], sweep_dir)
        shutil.copyfile(Path(run["_dir"]) / "results.json", tmp / "runs" / f"{name}.json")
    for f in ["summary.md", "summary.csv", PROVENANCE, *sorted(p.name for p in sweep_dir.glob("*.png"))]:
        if (sweep_dir / f).is_file():
            shutil.copyfile(sweep_dir / f, tmp / f)
    stored = tmp / "summary.md"
    if not stored.is_file() or rebuilt_summary(tmp)["summary.md"] != stored.read_text():
        log.warning(
            "summary.md rebuilt from the stored runs differs from the sweep's: `report.docs=true` will rewrite it"
        )


def stored_runs(result_dir: Path) -> list[dict]:
    """The runs of a stored result, in file-name order (the order ``collect`` reads a sweep's run folders)."""
    runs = []
    for path in sorted((Path(result_dir) / "runs").glob("*.json")):
        run = json.loads(path.read_text())
        run["_dir"] = str(path)
        runs.append(run)
    return runs


def rebuilt_summary(result_dir: Path) -> dict[str, str]:
    """summary.md and summary.csv of a stored result as the report code writes them from its ``runs/``."""
    table = build_table(stored_runs(result_dir))
    with tempfile.TemporaryDirectory() as tmp:
        write_csv(Path(tmp) / "summary.csv", table)
        csv = (Path(tmp) / "summary.csv").read_text()
    return {"summary.md": summary_markdown(table, result_dir), "summary.csv": csv}


def _demote(summary: str, fig_prefix: str) -> str:
    """summary.md for a docs page: no top title, section titles in bold, figure links relative to the page."""
    lines = summary.splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    text = "\n".join(re.sub(r"^#{1,6} (.+)$", r"**\1**", line) for line in lines).strip("\n")
    return re.sub(r"!\[([^\]]*)\]\(([^)/]+\.png)\)", rf"![\1]({fig_prefix}\2)", text)


def _provenance(result_dir: Path) -> dict:
    try:
        return json.loads((result_dir / PROVENANCE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def render_block(name: str, root: Path, page: Path, summaries: dict[str, str]) -> str:
    """The text between the markers ``results:name`` of ``page``: the summary rebuilt from ``results/name/runs``
    (``summaries``: name -> summary.md) with the stored provenance, or a one-line note when it is not stored."""
    result_dir = Path(root) / RESULTS / name
    if name == "headline":
        return _headline(root, page)
    if name not in summaries:
        return (
            f"*Not stored yet: no `results/{name}/` in the repository "
            f"(`python run.py stage=report report.sweep_dir=<sweep dir> report.store={name}` stores a finished sweep).*\n"
        )
    source = f"*Stored in `results/{name}/`: {describe(_provenance(result_dir))}.*"
    prefix = _rel(root, f"docs/{RESULTS}/{name}/", page)
    return source + "\n\n" + _demote(summaries[name], prefix) + "\n"


def _rel(root: Path, target: str, page: Path) -> str:
    rel = os.path.relpath(Path(root) / target, Path(page).parent).replace(os.sep, "/")
    return rel + "/" if target.endswith("/") else rel


def _headline(root: Path, page: Path) -> str:
    """README's compact table: worst and average (mean +- std over seeds) and the paired difference of the worst
    case to ``none``, per row of the first stored result of HEADLINE_SOURCES."""
    link = f"[docs/results.md]({_rel(root, 'docs/results.md', page)})"
    name = next((n for n in HEADLINE_SOURCES if (Path(root) / RESULTS / n / "runs").is_dir()), None)
    if name is None:
        return f"*No result is stored yet; the tables will be in {link}.*\n"
    table = build_table(stored_runs(Path(root) / RESULTS / name))
    cmp = table["compare"].to_dict("index") if not table["compare"].empty else {}
    arrow = "higher is better" if table["higher_is_better"] else "lower is better"
    lines = [
        f"`results/{name}` ({', '.join(table['experiments'])}: the worst and average over the downstream tasks of "
        f"{', '.join(sorted(set(table['primary'].values())))}, {arrow}; mean +- std over seeds, paired 95% "
        f"interval vs `none`, * = Holm-adjusted p < 0.05 over the table's worst and average differences). All "
        f"tables, figures and provenance: {link}.",
        "",
        "| row | seeds | worst | average | worst - none |",
        "|---|---|---|---|---|",
    ]
    for b, row in table["rows"].items():
        cells = [f"{row[m][0]:.3g} +- {row[m][1]:.2g}" if m in row else "" for m in ("worst", "average")]
        c = cmp.get(b, {})
        diff = _interval(c, "worst_diff", "worst")
        lines.append(f"| {b} | {len(table['seeds'].get(b, []))} | {' | '.join(cells)} | {diff} |")
    return "\n".join(lines) + "\n"


def _pages(root: Path) -> list[Path]:
    return [
        p for p in [Path(root) / "README.md", *sorted((Path(root) / "docs").rglob("*.md"))] if p.is_file()
    ]


def _sync(path: Path, text: str, check: bool, stale: list[Path]) -> None:
    if path.is_file() and path.read_text() == text:
        return
    stale.append(path)
    if not check:
        path.write_text(text)


def _sync_figures(result_dir: Path, root: Path, check: bool, stale: list[Path]) -> None:
    """docs/results/NAME/ holds exactly the png figures of results/NAME/."""
    dest = Path(root) / "docs" / RESULTS / result_dir.name
    want = {p.name: p for p in result_dir.glob("*.png")}
    have = {p.name: p for p in dest.glob("*.png")} if dest.is_dir() else {}
    for f, src in want.items():
        if f not in have or not filecmp.cmp(src, have[f], shallow=False):
            stale.append(dest / f)
            if not check:
                dest.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dest / f)
    for f in set(have) - set(want):
        stale.append(dest / f)
        if not check:
            (dest / f).unlink()


def render_all(root: Path = REPO, check: bool = False) -> list[Path]:
    """Rebuild every stored summary from its runs, its figures under docs/results/, and every results block of
    README.md and docs/*.md; return the files that were (``check``: would be) changed."""
    root = Path(root)
    stale: list[Path] = []
    stored = sorted(
        p for p in (root / RESULTS).glob("*") if _NAME.fullmatch(p.name) and (p / "runs").is_dir()
    )
    summaries = {}
    for result_dir in stored:
        rebuilt = rebuilt_summary(result_dir)
        for f, text in rebuilt.items():
            _sync(result_dir / f, text, check, stale)
        summaries[result_dir.name] = rebuilt["summary.md"]
        _sync_figures(result_dir, root, check, stale)
    names = {p.name for p in stored}
    for orphan in sorted(
        p for p in (root / "docs" / RESULTS).glob("*") if p.is_dir() and p.name not in names
    ):
        stale.append(orphan)  # the figures of a result no longer stored
        if not check:
            shutil.rmtree(orphan)
    for page in _pages(root):
        text = page.read_text()
        new = _BLOCK.sub(lambda m, page=page: m[1] + render_block(m[2], root, page, summaries) + m[4], text)
        _sync(page, new, check, stale)
    return stale
