"""Stored results and the result pages rendered from them.

``results/<name>/`` holds one finished sweep: each run's results.json as ``runs/<run dir>.json``, summary.md,
summary.csv, provenance.json and the figures (png). ``python run.py stage=report report.sweep_dir=<sweep dir> report.store=<name>`` makes
one; ``python run.py stage=report report.docs=true`` rebuilds every stored summary from its ``runs/`` through the report code
and rewrites the text between each ``<!-- results:NAME -->`` / ``<!-- /results:NAME -->`` pair of README.md and
docs/*.md from ``results/NAME/`` (the figures copied to ``docs/results/NAME/``, where mkdocs finds them);
``--check`` changes nothing and lists what is out of date. So a number in the docs changes only with its runs.

A result that is not a sweep (a benchmark's ratios, the Theorem 3.1 table, the mutation check) is stored as
``results/<name>/data.json``, the producing script's machine-readable output, and provenance.json naming the
``renderer`` (a key of :data:`RENDERERS`) that writes its Markdown from data.json: the scripts' ``--store NAME``
option, or ``python run.py stage=report report.data=<file.json> report.store=<name>`` for a JSON file written
before. Its block is re-rendered from data.json like a sweep's from its runs.
"""

from __future__ import annotations

import filecmp
import json
import logging
import math
import os
import re
import shutil
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

from runner.provenance import FILE as PROVENANCE
from runner.provenance import UNKNOWN, describe, producer
from runner.report import summary_markdown, write_csv
from runner.tables import _interval, build_table, collect

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]
RESULTS = "results"
DATA = "data.json"
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
    dest = destination(name, root, force)
    runs = collect(sweep_dir)
    if not runs:
        raise StoreError(f"{sweep_dir} holds no results.json: nothing to store.")
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


def store_data(
    name: str,
    data: dict,
    command: str = UNKNOWN,
    wall_seconds: float | str = UNKNOWN,
    renderer: str | None = None,
    root: Path = REPO,
    force: bool = False,
    made_by: dict | None = None,
) -> Path:
    """Write ``root/results/<name>/data.json`` (``data``) and provenance.json (this checkout's commit, the machine,
    ``command``, ``wall_seconds`` and ``renderer``, default ``name``) for a result that is not a sweep; ``made_by``:
    the producer fields (commit, dirty, date, machine, versions) the script recorded where it ran, which win."""
    renderer = renderer or name
    dest = destination(name, root, force)
    if renderer not in RENDERERS:
        raise StoreError(f"no renderer {renderer!r} for results/{name}/: one of {', '.join(RENDERERS)}.")
    try:
        RENDERERS[renderer][0](data)
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
        raise StoreError(
            f"the data for results/{name}/ is not what renderer {renderer!r} reads ({exc!r})."
        ) from None
    prov = {**producer(command), **(made_by or {}), "wall_seconds": wall_seconds, "renderer": renderer}
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=dest.parent))
    (tmp / DATA).write_text(json.dumps(data, indent=1) + "\n")
    (tmp / PROVENANCE).write_text(json.dumps(prov, indent=2) + "\n")
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return dest


def store_file(path: Path, name: str, root: Path = REPO, force: bool = False) -> Path:
    """``report.data=<path> report.store=<name>``: store a JSON file a script wrote as ``results/<name>/``; its
    own ``command``, ``seconds``, ``producer`` (the commit and machine it ran on) and ``renderer`` (default: the
    name) keys, where it has them, go into provenance.json."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise StoreError(f"report.data={path}: not a readable JSON file ({exc}).") from None
    if not isinstance(data, dict):
        raise StoreError(f"report.data={path}: the JSON file holds no object.")
    made_by = data.get("producer") if isinstance(data.get("producer"), dict) else None
    return store_data(
        name,
        data,
        data.get("command", UNKNOWN),
        data.get("seconds", UNKNOWN),
        renderer=data.get("renderer") if isinstance(data.get("renderer"), str) else None,
        root=root,
        force=force,
        made_by=made_by,
    )


def destination(name: str, root: Path = REPO, force: bool = False) -> Path:
    """``root/results/<name>/``, refused (StoreError) for a bad name or, without ``force``, an existing folder: the
    scripts that store ask before measuring."""
    if not _NAME.fullmatch(name):
        raise StoreError(f"report.store={name!r}: a result name is letters, digits, '_' and '-' only.")
    dest = Path(root) / RESULTS / name
    if dest.exists() and not force:
        raise StoreError(f"{dest} exists already: pass report.force=true to replace it.")
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
    runs = stored_runs(result_dir)
    table = build_table(runs)
    with tempfile.TemporaryDirectory() as tmp:
        write_csv(Path(tmp) / "summary.csv", table)
        csv = (Path(tmp) / "summary.csv").read_text()
    return {"summary.md": summary_markdown(table, result_dir, runs), "summary.csv": csv}


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
    if name == "heterogeneity_answer":
        return heterogeneity_answer(root)
    if (result_dir / DATA).is_file() and _NAME.fullmatch(name):
        return f"*Stored in `results/{name}/`: {describe(_provenance(result_dir))}.*\n\n{render_data(result_dir)}"
    if name not in summaries:
        how = (
            f"`{RENDERERS[name][1]}` stores it"
            if name in RENDERERS
            else f"`python run.py stage=report report.sweep_dir=<sweep dir> report.store={name}` stores a finished sweep"
        )
        return f"*Not stored yet: no `results/{name}/` in the repository ({how}).*\n"
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


#: the stored maps the answer block reads, in its order: (experiment, stored result)
ANSWER_MAPS = (
    ("convex, full rank", "heterogeneity_convex_random"),
    ("convex, underdetermined", "heterogeneity_convex_underdetermined"),
    ("PoS-BERT", "heterogeneity_pos_bert"),
    ("MM-MAE", "heterogeneity_mm_mae"),
)


def heterogeneity_answer(root: Path) -> str:
    """The block ``results:heterogeneity_answer``: for every stored map of :data:`ANSWER_MAPS`, per row and
    downstream measure, the crossover (the least heterogeneous dial value where the row beats the baseline after
    Holm over the map) and the paired difference there and at the map's most heterogeneous value, with the
    upstream crossover beside it; a line for each map not stored."""
    from runner.heterogeneity import DIALS, heterogeneity_frame
    from runner.statistics import ALPHA

    def cell(r, m: str) -> str:
        star = "*" if r[f"{m}_holm"] < ALPHA else ""
        return f"{r[m]:+.3g} [{r[f'{m}_low']:+.3g}, {r[f'{m}_high']:+.3g}]{star}"

    lines = [
        "Per stored map, row and downstream measure: the crossover (the least heterogeneous dial value where the "
        "row is better than the baseline, Holm over the map's family) and the paired difference to the baseline "
        "(mean [raw 95% interval] over pre-training seeds, * = survives Holm) at the crossover and at the map's "
        "most heterogeneous value; the upstream crossover beside it.",
        "",
        "| experiment | dial | row - baseline | upstream crossover | downstream measure | downstream crossover "
        "| at the crossover | at the most heterogeneous value |",
        "|---|---|---|---|---|---|---|---|",
    ]
    missing = []
    for experiment, name in ANSWER_MAPS:
        runs_dir = Path(root) / RESULTS / name / "runs"
        frame = heterogeneity_frame(stored_runs(runs_dir.parent)) if runs_dir.is_dir() else None
        if frame is None or frame.empty:
            missing.append(f"{experiment} (`results/{name}/`)")
            continue
        dial = DIALS[frame["dial_key"].iloc[0]]
        for row, f in frame.groupby("row"):
            f = f.sort_values("dial", ascending=dial.rises)
            end = f.iloc[-1]
            up = end["upstream_crossover"]
            for m, measure in dial.measures.items():
                if m == "upstream":
                    continue
                cross = end[f"{m}_crossover"]
                at = f[f["dial"] == cross].iloc[0] if math.isfinite(cross) else None
                lines.append(
                    f"| {experiment} | `{dial.key}` | {row} - {dial.baseline} | "
                    f"{'none' if not math.isfinite(up) else f'{up:g}'} | "
                    f"{measure.title.split(': ', 1)[-1].replace(' at N={n}', ' at the primary N')} | "
                    f"{'none' if at is None else f'{cross:g}'} | {'' if at is None else cell(at, m)} | "
                    f"{end['dial']:g}: {cell(end, m)} |"
                )
    if missing:
        lines.append(f"\nNot stored yet: {', '.join(missing)}.")
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
    names = {p.name for p in stored} | {p.parent.name for p in (root / RESULTS).glob(f"*/{DATA}")}
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


def render_data(result_dir: Path) -> str:
    """The Markdown of a stored result that is not a sweep: its provenance's renderer applied to data.json."""
    result_dir = Path(result_dir)
    renderer = _provenance(result_dir).get("renderer", result_dir.name)
    if renderer not in RENDERERS:
        raise StoreError(f"{result_dir / PROVENANCE} names no known renderer ({renderer!r}).")
    return RENDERERS[renderer][0](json.loads((result_dir / DATA).read_text()))


def _row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


#: the columns of the Theorem 3.1 table: key of a row of ``benchmarks.theorem_3_1.measure`` -> (title, format)
THEOREM_3_1_COLUMNS = {
    "instance": ("instance", "{}"),
    "K": ("K", "{}"),
    "alpha0": ("alpha_0", "{:.2f}"),
    "bound": ("bound 2 R0 L'/sqrt K", "{:.4f}"),
    "averaged": ("averaged iterate (sqrt schedule)", "{:.4f}"),
    "last": ("last iterate", "{:.4f}"),
    "last10_min": ("smallest of the last 10 iterates", "{:.4f}"),
    "constant_alpha": ("averaged iterate, constant alpha_0", "{:.4f}"),
}


def theorem_3_1_row(row: dict) -> str:
    return _row(fmt.format(row[key]) for key, (_, fmt) in THEOREM_3_1_COLUMNS.items())


def _theorem_3_1(data: dict) -> str:
    """``python -m benchmarks.theorem_3_1``: one row per instance and K, gaps against the bound."""
    lines = [_row(title for title, _ in THEOREM_3_1_COLUMNS.values())]
    lines.append(_row(["---"] + ["---:"] * (len(THEOREM_3_1_COLUMNS) - 1)))
    lines += [theorem_3_1_row(r) for r in data["rows"]]
    inside = sum(r["averaged"] <= r["bound"] for r in data["rows"])
    lines += [
        "",
        f"The averaged iterate (sqrt schedule) is inside the bound in {inside} of {len(data['rows'])} rows.",
    ]
    return "\n".join(lines) + "\n"


def _benchmarks(data: dict) -> str:
    """``python -m benchmarks.bench_balancers``: median step time over the interleaved rounds and peak memory per
    method, each as a ratio to ``none``, with the range of the per-round time ratio."""
    rows = {r["method"]: r for r in data["rows"]}
    med = {m: statistics.median(r["round_ms"]) for m, r in rows.items()}
    none, plain = rows["none"], rows[data["plain"]]

    def mem_ratio(a: dict, b: dict) -> str:
        return f"{a['peak_mib'] / b['peak_mib']:.2f}" if b["peak_mib"] > 0 else "n/a"

    lines = [
        f"T={data['tasks']} tasks, trunk width {data['width']}, heads of 1000 classes, batch {data['batch']}; "
        f"median of {data['rounds']} interleaved rounds x {data['steps']} steps, torch threads {data['threads']}, "
        f"{data['clock']} clock. Time range: the smallest and largest ratio to `none` over the rounds (each round "
        f"times every method once). {data['memory_method']}.",
        "",
        _row(["method", "ms/step", "x none", "x none, range over rounds", "peak MiB", "mem x none"]),
        "|---|---:|---:|---:|---:|---:|",
    ]
    for m, r in rows.items():
        per_round = [a / b for a, b in zip(r["round_ms"], none["round_ms"])]
        peak = f"{'' if r['peak_exact'] else '<='}{r['peak_mib']:.1f}"
        lines.append(
            _row(
                [
                    m,
                    f"{med[m]:.2f}",
                    f"{med[m] / med['none']:.2f}",
                    f"{min(per_round):.2f} - {max(per_round):.2f}",
                    peak,
                    mem_ratio(r, none),
                ]
            )
        )
    lines += [
        "",
        f"Callback overhead: `none` through LossAggregation / {data['plain']} = {med['none'] / med[data['plain']]:.3f} "
        f"time, {mem_ratio(none, plain)} peak memory.",
    ]
    return "\n".join(lines) + "\n"


def _mutants(data: dict) -> str:
    """``python -m benchmarks.mutants --out <file>``: each planted bug and whether the tests named for it fail."""
    lines = ["| mutant | the bug | file | tests run | outcome | s |", "|---|---|---|---|---|---:|"]
    for r in data["mutants"]:
        tests = ", ".join(Path(t).name for t in r["tests"])
        lines.append(
            _row([f"`{r['name']}`", r["what"], f"`{r['file']}`", tests, r["outcome"], f"{r['seconds']:.0f}"])
        )
    killed = sum(r["outcome"] == "killed" for r in data["mutants"])
    total = data.get("seconds")
    took = (
        f", {total / 60:.1f} min in all" if isinstance(total, (int, float)) and math.isfinite(total) else ""
    )
    lines += ["", f"{len(data['mutants'])} mutants, {killed} killed by the tests{took}."]
    return "\n".join(lines) + "\n"


def _plan_head(plan: dict) -> list[str]:
    """What a step is and costs, and the memory per device by part."""
    unit = next((k for k in ("tokens_per_step", "images_per_step") if k in plan), None)
    per_step = f" = {plan[unit]:,} {unit.split('_')[0]}" if unit else ""
    mem = plan["memory_per_device_gib"]
    parts = ", ".join(f"{k.replace('_', ' ')} {v:.2f}" for k, v in mem.items() if k != "total")
    return [
        f"`{plan['experiment']}`: {plan['parameters'] / 1e6:.1f}M parameters; {plan['samples_per_step']:,} samples "
        f"a step ({plan['batch_per_device']} a device x {plan['world_size']} devices x "
        f"{plan['accumulate_grad_batches']} accumulated){per_step}; {plan['steps']:,} steps; "
        f"{plan['flops_per_step']:.3g} FLOPs a step, {plan['total_flops']:.3g} in all; {plan['precision']}, "
        f"strategy {plan['strategy']}.",
        "",
        f"Memory per device: {mem['total']:.2f} GiB ({parts} GiB).",
        "",
    ]


def _plan_gpus(plan: dict) -> list[str]:
    """One row per named GPU: fit, GPU-hours at the assumed MFU, wall-clock hours on the run's GPUs, the change."""
    world, mfu = plan["world_size"], plan["assumptions"]["mfu"]
    head = ["GPU", "fits (usable GiB)", f"GPU-hours at MFU {mfu}", f"hours on {world} GPUs", "if it does not fit"]
    lines = [_row(head), "|---|---|---:|---:|---|"]
    for name, g in plan["gpus"].items():
        fit = f"{'yes' if g['fits'] else 'no'} ({g['usable_gib']:.1f})"
        change = "" if g["fits"] else "; or ".join(g["change"])
        lines.append(_row([name, fit, f"{g['gpu_hours']:,.3g}", f"{g['wall_hours']:,.3g}", change]))
    return lines


def _plan(plan: dict) -> str:
    """``python run.py experiment=... stage=plan`` (runner/plan.py's plan.json): the step, the memory per device
    by part, the fit and GPU-hours per named GPU, the pre-processing bill and the assumptions."""
    lines = [*_plan_head(plan), *_plan_gpus(plan), ""]
    pre = plan.get("preprocessing")
    if pre:
        lines += [
            f"Pre-processing: NLTK tagging of {pre['corpus_words']:.3g} words at "
            f"{pre['tagging_words_per_s_per_process']:,.0f} words/s per process = {pre['process_hours']:,.1f} "
            f"process-hours, {pre['wall_hours_at_data.corpus.num_proc']:,.1f} h at `data.corpus.num_proc`.",
            "",
        ]
    assumed = ", ".join(f"`plan.{k}`={v}" for k, v in plan["assumptions"].items() if v is not None)
    batches = " and ".join(str(b) for b in plan["measured_on_cpu"]["batches"])
    lines.append(
        f"Assumed: {assumed}; FLOPs and activations measured by one CPU training step at batches {batches}."
    )
    return "\n".join(lines) + "\n"


#: renderer name -> (function data.json -> Markdown, the command that stores it under that name)
RENDERERS: dict[str, tuple[Callable[[dict], str], str]] = {
    "theorem_3_1": (_theorem_3_1, "python -m benchmarks.theorem_3_1 --store theorem_3_1"),
    "benchmarks": (_benchmarks, "python -m benchmarks.bench_balancers --store benchmarks"),
    "plan": (
        _plan,
        "python run.py experiment=<preset> stage=plan hydra.run.dir=<dir> && python run.py stage=report "
        "report.data=<dir>/plan.json report.store=<name>",
    ),
    "mutants": (
        _mutants,
        "python -m benchmarks.mutants --out mutants.json && python run.py stage=report report.data=mutants.json "
        "report.store=mutants",
    ),
}
