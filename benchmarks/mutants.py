"""Mutation check of the core: plant each plausible bug in a copy of the repository and run the tests that
claim to cover it. A mutant the tests let pass *survives*: a hole in the tests, not in the code.

    python -m benchmarks.mutants                    # every mutant, report on stdout
    python -m benchmarks.mutants --only alpha_constant last_iterate --workers 2 --out mutants.json

The copy holds the repository's tracked and untracked (not ignored) files; the tests run there with
``python -m pytest -x`` on the files each mutant names (the unmutated copy first: it must pass them, or the
check stops). A mutant's ``old`` text must occur exactly once in its file (``tests/test_mutants.py`` checks it
against the current code, so the list cannot silently go stale). Not part of CI: it takes minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_THEORY = ("tests/test_theorem_3_1.py",)
_CONVEX = ("tests/test_convex.py",)
_REPORT = ("tests/test_report.py", "tests/test_statistics.py")
_BALANCERS = (
    "tests/test_balancers.py",
    "tests/test_balancer_properties.py",
    "tests/test_balancer_oracles.py",
)


@dataclass(frozen=True)
class Mutant:
    name: str
    what: str  # the bug, in words
    file: str
    old: str
    new: str
    tests: tuple[str, ...]


MUTANTS = [
    Mutant(
        "alpha_constant",
        "minimax's schedule alpha_k = alpha sqrt(k+1) made constant",
        "pretrain/balancers/base.py",
        'return self.alpha * math.sqrt(k + 1) if self.schedule == "sqrt" else self.alpha',
        "return self.alpha",
        _THEORY,
    ),
    Mutant(
        "last_iterate",
        "the convex module hands over the last iterate instead of Theorem 3.1's average",
        "pretrain/convex.py",
        "if self.average_iterates and int(self.n_avg) > 0:",
        "if False:",
        _THEORY,
    ),
    Mutant(
        "weights_ignored",
        "the aggregation callback back-propagates the plain mean of the task losses, not the balancer's scalar",
        "pretrain/aggregation.py",
        "loss = self._apply(reduced, balanced, out.loss, copied, features)",
        "loss = self._apply(reduced, balanced, balanced[: len(self.task_names)].mean(), copied, features)",
        _CONVEX,
    ),
    Mutant(
        "design_without_B",
        "the underdetermined downstream design drops the shared matrix B (X = u instead of u B)",
        "data/convex.py",
        "X = u @ self.B[0]",
        "X = u",
        _CONVEX,
    ),
    Mutant(
        "uniform_weights",
        "minimax's softmax gets all-equal logits (uniform weights)",
        "pretrain/balancers/base.py",
        "weights = _masked_softmax(alpha * values, known)",
        "weights = _masked_softmax(0.0 * values, known)",
        _THEORY + _BALANCERS,
    ),
    Mutant(
        "alpha_sign",
        "minimax's softmax with the sign of alpha flipped (weights the easiest task most)",
        "pretrain/balancers/base.py",
        "weights = _masked_softmax(alpha * values, known)",
        "weights = _masked_softmax(-alpha * values, known)",
        _THEORY + _BALANCERS,
    ),
    Mutant(
        "weights_not_detached",
        "the balancers' weights computed from the differentiable losses and not detached (their gradient leaks "
        "into the update)",
        "pretrain/balancers/base.py",
        "weights = self.compute_weights(imputed, known, inputs).detach()",
        "weights = self.compute_weights(torch.where(present, losses.float(), imputed), known, inputs)",
        _BALANCERS,
    ),
    Mutant(
        "absent_counted",
        "a task with no targets in the step counts as present with loss 0",
        "pretrain/aggregation.py",
        "present = count > 0",
        "present = count >= 0",
        ("tests/test_aggregation.py",),
    ),
    Mutant(
        "pairing_by_position",
        "the report pairs two rows' runs by position instead of by pre-training seed",
        "runner/statistics.py",
        "d = (a.loc[shared] - b.loc[shared]).dropna()",
        "d = (a.reset_index(drop=True) - b.reset_index(drop=True)).dropna()",
        _REPORT,
    ),
    Mutant(
        "ddof_0",
        "the paired interval uses the population standard deviation (ddof=0)",
        "runner/statistics.py",
        "ci = res.confidence_interval(1 - ALPHA)",
        "half = stats.t.ppf(1 - ALPHA / 2, n - 1) * float(d.std(ddof=0)) / math.sqrt(n); "
        'ci = type("CI", (), {"low": mean - half, "high": mean + half})',
        _REPORT,
    ),
    Mutant(
        "normal_quantile",
        "the paired interval uses the normal quantile 1.96 instead of Student's t with n-1 degrees of freedom",
        "runner/statistics.py",
        "ci = res.confidence_interval(1 - ALPHA)",
        "half = stats.norm.ppf(1 - ALPHA / 2) * float(d.std(ddof=1)) / math.sqrt(n); "
        'ci = type("CI", (), {"low": mean - half, "high": mean + half})',
        _REPORT,
    ),
    Mutant(
        "holm_skipped",
        "the stars read the raw p-values, without Holm's correction over the family",
        "runner/statistics.py",
        'out[tested] = multipletests(p[tested], alpha=ALPHA, method="holm")[1]',
        "out[tested] = p[tested]",
        _REPORT,
    ),
    Mutant(
        "first_ok_n",
        "sample complexity as the first grid N whose draws meet eps, not the smallest N from which on all do",
        "finetune/convex.py",
        "for n in reversed(self.sample_sizes):\n"
        "            ok = sum(x <= eps for x in draws[n]) >= (1 - self.delta) * len(draws[n]) - 1e-9\n"
        "            if not ok:\n"
        "                break\n"
        "            found = n",
        "for n in self.sample_sizes:\n"
        "            ok = sum(x <= eps for x in draws[n]) >= (1 - self.delta) * len(draws[n]) - 1e-9\n"
        "            if ok:\n"
        "                found = n\n"
        "                break",
        _CONVEX,
    ),
]


def check_applies(mutant: Mutant, root: Path = REPO) -> str | None:
    """None if ``mutant.old`` occurs exactly once in its file under ``root``; else what is wrong."""
    path = root / mutant.file
    if not path.is_file():
        return f"{mutant.file} does not exist"
    n = path.read_text().count(mutant.old)
    return None if n == 1 else f"its text occurs {n} times in {mutant.file} (must be once)"


def copy_repo(dest: Path) -> None:
    """The repository's tracked and untracked, not ignored files, copied under ``dest``."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, files):
        src = REPO / os.fsdecode(name)
        if src.is_file():
            (dest / src.relative_to(REPO)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / src.relative_to(REPO))


def run_tests(root: Path, tests: tuple[str, ...], workers: int) -> tuple[str, float, str]:
    """``pytest -x`` on ``tests`` inside ``root``: (outcome, seconds, last lines of output)."""
    env = {**os.environ, "PYTHONPATH": str(root), "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    env.setdefault("TRP_CACHE_DIR", str(REPO / ".cache" / "mutants"))
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-n", str(workers), *tests]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])
    return outcome(proc.returncode, tail), time.perf_counter() - start, tail


def outcome(code: int, tail: str) -> str:
    """``killed`` when a test failed (pytest-xdist's -x reports the stop as exit 2, 'interrupted'),
    ``SURVIVED`` when all passed, else an error (collection, usage)."""
    if code == 0:
        return "SURVIVED"
    if code == 1 or (code == 2 and re.search(r"\b\d+ failed\b", tail)):
        return "killed"
    return f"error (pytest exit {code})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", help="names of the mutants to run (default: all)")
    parser.add_argument("--workers", type=int, default=2, help="pytest-xdist workers per test run")
    parser.add_argument("--out", type=Path, help="also write the report as JSON here")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTANTS if not args.only or m.name in args.only]
    stale = {m.name: why for m in chosen if (why := check_applies(m))}
    if stale:
        print("stale mutants (update benchmarks/mutants.py):", json.dumps(stale, indent=1))
        return 2
    from runner.provenance import producer

    command = "python -m benchmarks.mutants " + " ".join(sys.argv[1:] if argv is None else argv)
    made_by = {k: v for k, v in producer(command).items() if k != "command"}  # the commit the tests ran at
    start = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="mutants-") as tmp:
        root = Path(tmp) / "repo"
        copy_repo(root)
        every = tuple(sorted({t for m in chosen for t in m.tests}))
        result, seconds, tail = run_tests(root, every, args.workers)
        print(
            f"unmutated copy: the tests {'pass' if result == 'SURVIVED' else 'fail'} ({len(every)} files, {seconds:.0f} s)"
        )
        if result != "SURVIVED":
            print("the tests fail without a mutation; fix them first:\n" + tail)
            return 2
        for m in chosen:
            path = root / m.file
            original = path.read_text()
            path.write_text(original.replace(m.old, m.new))
            try:
                result, seconds, tail = run_tests(root, m.tests, args.workers)
            finally:
                path.write_text(original)
            rows.append({**asdict(m), "outcome": result, "seconds": round(seconds, 1), "tail": tail})
            print(f"{m.name:22s} {result:24s} {seconds:6.0f} s  {m.what}", flush=True)
    total = time.perf_counter() - start
    survivors = [r["name"] for r in rows if r["outcome"] != "killed"]
    print()
    print(render(rows, total))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        report = {"command": command, "producer": made_by, "seconds": round(total, 1), "survivors": survivors,
                  "mutants": rows}  # fmt: skip
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 1 if survivors else 0


def render(rows: list[dict], total: float) -> str:
    """The report as a Markdown table."""
    lines = ["| mutant | the bug | file | tests run | outcome | s |", "|---|---|---|---|---|---|"]
    for r in rows:
        tests = ", ".join(Path(t).name for t in r["tests"])
        lines.append(
            f"| `{r['name']}` | {r['what']} | `{r['file']}` | {tests} | {r['outcome']} | {r['seconds']:.0f} |"
        )
    survivors = sum(r["outcome"] != "killed" for r in rows)
    lines.append("")
    lines.append(f"{len(rows)} mutants, {survivors} not killed, {total / 60:.1f} min in all.")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
