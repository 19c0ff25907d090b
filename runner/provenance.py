"""``provenance.json`` of a sweep: what produced its numbers. The commit and whether tracked files differed from
it, the command line, the date, the machine (CPU model, core count, GPU), the versions of python, torch,
lightning and transformers, the sweep's wall time (first run start to last run end, from the runs' ``run.log``)
and the number of runs. Written by the report next to summary.md; anything it cannot find reads "unknown".

A sweep folder that has a provenance.json keeps its producer's fields (commit, command, date, machine,
versions) when the report is rebuilt later, and a parent folder of several sweeps merges theirs; only the runs
and the wall time are recounted. A stored result that is not a sweep (runner/docs_render.py ``store_data``) gets
the same producer fields (:func:`producer`), its script's wall time and no run count.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path

UNKNOWN = "unknown"
FILE = "provenance.json"
PRODUCER_KEYS = ("commit", "dirty", "command", "date", "machine", "versions")
_REPO = Path(__file__).resolve().parents[1]
_STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)[,.]\d+\]")  # Hydra's job log line


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=_REPO, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_state() -> tuple[str, bool | str]:
    """(commit, dirty): HEAD of the repository holding this code and whether a tracked file differs from it
    (untracked files do not count); ("unknown", "unknown") without git or outside a checkout."""
    commit = _git("rev-parse", "HEAD")
    if not commit:
        return UNKNOWN, UNKNOWN
    status = _git("status", "--porcelain", "--untracked-files=no")
    return commit, (UNKNOWN if status is None else bool(status))


def machine() -> dict:
    """CPU model, logical core count and GPU name (None without CUDA)."""
    cpu = platform.processor() or UNKNOWN
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": _gpu()}


def _gpu() -> str | None:
    """The first CUDA device's name: from torch when the process has imported it (a sweep's callback), else
    from nvidia-smi (the report command does not import torch for it); None without one."""
    torch = sys.modules.get("torch")
    try:
        if torch is not None:
            return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        return out.stdout.splitlines()[0].strip() if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None
    except Exception:  # noqa: BLE001 - a broken CUDA set-up must not cost the report
        return UNKNOWN


def versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "lightning", "transformers"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = UNKNOWN
    return out


def run_span(run_dir: str | Path) -> tuple[dt.datetime, dt.datetime] | None:
    """First and last timestamp of a run's Hydra log (``run.log``, or any ``*.log`` of the run folder)."""
    logs = sorted(Path(run_dir).glob("*.log"))
    stamps = []
    for log in logs:
        try:
            lines = log.read_text(errors="replace").splitlines()
        except OSError:
            continue
        stamps += [dt.datetime.fromisoformat(m[1]) for line in lines if (m := _STAMP.match(line))]
    return (min(stamps), max(stamps)) if stamps else None


def sweep_span(runs: list[dict]) -> dict:
    """started, finished (ISO) and wall_seconds over the runs' logs; "unknown" when no run has a log."""
    spans = [s for r in runs if "_dir" in r and (s := run_span(r["_dir"]))]
    if not spans:
        return {"started": UNKNOWN, "finished": UNKNOWN, "wall_seconds": UNKNOWN}
    start, end = min(s[0] for s in spans), max(s[1] for s in spans)
    return {
        "started": start.isoformat(),
        "finished": end.isoformat(),
        "wall_seconds": int((end - start).total_seconds()),
    }


def recorded_commands(sweep_dir: Path) -> list[str]:
    """The command line of every Hydra multirun below ``sweep_dir``, from its ``multirun.yaml``."""
    from omegaconf import OmegaConf

    commands = []
    for path in sorted(Path(sweep_dir).rglob("multirun.yaml")):
        try:
            hydra = OmegaConf.load(path).hydra
            overrides = [
                o for o in [*hydra.overrides.hydra, *hydra.overrides.task] if o != "hydra.mode=MULTIRUN"
            ]
            commands.append(f"python {hydra.job.name}.py -m " + shlex.join(str(o) for o in overrides))
        except Exception:  # noqa: BLE001 - an unreadable record only loses the command
            continue
    return commands


def _merge(records: list[dict]) -> dict:
    """The producer fields of several sweeps' provenance (a parent folder of sweeps)."""

    def joined(key: str):
        values = list(dict.fromkeys(str(r.get(key, UNKNOWN)) for r in records))
        return values[0] if len(values) == 1 else "; ".join(values)

    dirty = [r.get("dirty", UNKNOWN) for r in records]
    return {
        "commit": joined("commit"),
        "dirty": True if True in dirty else (UNKNOWN if UNKNOWN in dirty else False),
        "command": joined("command"),
        "date": min(str(r.get("date", UNKNOWN)) for r in records),
        "machine": records[0].get("machine", UNKNOWN),
        "versions": records[0].get("versions", UNKNOWN),
    }


def _producer(sweep_dir: Path, argv: list[str] | None) -> dict:
    """Who made the sweep: this process (``argv``: the multirun's own command line), else the provenance
    already in the folder, else those of the sweeps below it, else this environment and the recorded commands."""
    own = sweep_dir / FILE
    if argv is None:
        found = [own] if own.is_file() else sorted(sweep_dir.glob(f"*/**/{FILE}"))
        records = []
        for path in found:
            try:
                records.append(json.loads(path.read_text()))
            except (OSError, json.JSONDecodeError):
                continue
        if records:
            return _merge(records)
    command = "python " + shlex.join(argv) if argv else "; ".join(recorded_commands(sweep_dir)) or UNKNOWN
    return producer(command)


def producer(command: str) -> dict:
    """The producer fields for ``command`` run by this process: commit, dirty, command, date, machine, versions."""
    commit, dirty = git_state()
    return {
        "commit": commit,
        "dirty": dirty,
        "command": command,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions(),
    }


def write_provenance(sweep_dir: Path, runs: list[dict], argv: list[str] | None = None) -> Path:
    """Write ``provenance.json`` into ``sweep_dir`` (see the module docstring) and return its path."""
    sweep_dir = Path(sweep_dir)
    record = {k: v for k, v in _producer(sweep_dir, argv).items() if k in PRODUCER_KEYS}
    record.update(sweep_span(runs))
    record["runs"] = len(runs)
    path = sweep_dir / FILE
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def describe(record: dict) -> str:
    """One line for the docs: commit, command, date, machine, wall time and, for a sweep, its runs."""
    commit = str(record.get("commit", UNKNOWN))
    short = f"`{commit[:10] if re.fullmatch(r'[0-9a-f]{40}', commit) else commit}`"
    if record.get("dirty") is True:
        short += " (with uncommitted changes)"
    m = record.get("machine") or {}
    if isinstance(m, dict):
        where = f"{m.get('cpu', UNKNOWN)}, {m.get('cores', UNKNOWN)} cores"
        where += f", {m['gpu']}" if m.get("gpu") else ", no GPU"
    else:
        where = str(m)
    wall = record.get("wall_seconds", UNKNOWN)
    date = str(
        record.get("started") if record.get("started", UNKNOWN) != UNKNOWN else record.get("date", UNKNOWN)
    )
    wall = f"{wall / 60:.1f} min" if isinstance(wall, (int, float)) else UNKNOWN
    runs = f", {record['runs']} runs" if "runs" in record else ""
    return f"commit {short}, `{record.get('command', UNKNOWN)}`, {date[:10]}, {where}, wall time {wall}{runs}"
