"""Data throughput, printed in one run: what the pre-training loaders deliver on this machine's CPUs.

1. POS tagging of raw text (PoS-BERT's ``data=text_file`` path: NLTK ``pos_tag_sents`` + tokenising + aligning
   the tags to word-pieces, ``datasets.map``) in sentences/s with ``num_proc`` 1 and 2 (and ``--num-proc``),
   on generated text, each in a fresh cache; the time of loading NLTK's tagger (once per process) apart, and
   the CPU seconds of the main and worker processes, from which the rate on idle cores follows; then the time
   of a second, cached run (tokenizer, tagged dataset and NSP pairs from the cache).
2. The image-folder loader of MM-MAE (``data=imagenet_folder``: JPEG decode, the two pseudo-label PNGs, one
   random-resized crop of all three, normalisation) in images/s per DataLoader worker count, over one epoch
   after a warm-up epoch (persistent workers started); on a generated ImageNet-like folder (``--images``
   JPEGs of 500 x 375 with their depth and semantic PNGs) unless ``--root`` / ``--labels-root`` name one; with
   the CPU seconds of the main and worker processes (Linux), from which the rate on idle cores follows.

    python -m benchmarks.bench_data [--nltk-data DIR] [--sentences 20000] [--num-proc 1,2]
                                    [--images 512] [--workers 0,1,2] [--root DIR --labels-root DIR]

NLTK's tagger data is looked up where NLTK looks (``NLTK_DATA``, ``~/nltk_data``, ...) or in ``--nltk-data``;
without it part 1 says so and is skipped. The numbers are wall-clock rates: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def find_tagger(nltk_data: str | None) -> bool:
    """Put ``nltk_data`` first on NLTK's path (and in NLTK_DATA for worker processes); whether the English
    tagger is found."""
    import nltk

    from data.pos_tagging import NLTK_TAGGER

    if nltk_data:
        os.environ["NLTK_DATA"] = nltk_data
        if nltk_data not in nltk.data.path:
            nltk.data.path.insert(0, nltk_data)
    try:
        nltk.data.find(f"taggers/{NLTK_TAGGER}/")
    except LookupError:
        return False
    return True


def bench_tagging(args) -> list[tuple[int, float]]:
    """Sentences/s of tagging + tokenising per ``num_proc``; returns ``[(num_proc, sentences/s), ...]``."""
    import datasets

    from data.pos_bert import PosBertDataModule
    from data.pos_tagging import load_nltk_tagger

    if not find_tagger(args.nltk_data):
        print("POS tagging: NLTK's English tagger not found (give --nltk-data DIR or set NLTK_DATA); skipped")
        return []
    datasets.disable_progress_bars()
    for name in ("data.pos_bert", "data.pos_tagging"):
        logging.getLogger(name).setLevel(logging.WARNING)
    t0 = time.perf_counter()
    load_nltk_tagger()  # what build_tagged does first; its forked map workers inherit the loaded tagger
    load_s = time.perf_counter() - t0
    rates, cpu = [], {}  # cpu: num_proc -> (CPU s of this process, CPU s of its worker processes)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        text, n, words = write_corpus(tmp / "corpus.txt", args.sentences)
        make = functools.partial(PosBertDataModule, tokenizer={"vocab_size": 4096})
        corpus = {"text_file": str(text)}
        first = tmp / f"cache{args.num_proc[0]}"
        # built and cached in the first num_proc's cache: the cached run below finds it
        tokenizer = make(cache_dir=str(first), corpus=corpus).build_tokenizer()
        print(
            f"POS tagging: NLTK pos_tag_sents + tokenize + align (datasets.map), {n} generated sentences "
            f"({words} words); NLTK tagger load {load_s:.2f} s (once per process, before the timing)"
        )
        for num_proc in args.num_proc:
            dm = make(cache_dir=str(tmp / f"cache{num_proc}"), corpus={**corpus, "num_proc": num_proc})
            dt, cpu[num_proc] = time_tagging(dm, tokenizer)
            rates.append((num_proc, n / dt))
            print(
                f"  num_proc={num_proc}: {dt:6.2f} s  {n / dt:8.0f} sentences/s  {words / dt:9.0f} words/s  "
                f"(CPU s: main process {cpu[num_proc][0]:.2f}, map workers {cpu[num_proc][1]:.2f})"
            )
        time_cached_setup(make(cache_dir=str(first), corpus=corpus))
    print_tagging_speedups(rates, cpu)
    return rates


def write_corpus(path: Path, sentences: int) -> tuple[Path, int, int]:
    """About ``sentences`` generated sentences, one a line, documents apart by an empty line, written to
    ``path``; returns ``(path, sentences, words)``."""
    from data.pos_grammar import generate_corpus

    lines = []
    for _, sents in generate_corpus(max(2, sentences // 7), seed=123):
        lines += [s.text for s in sents] + [""]
    path.write_text("\n".join(lines) + "\n")
    return path, sum(1 for x in lines if x), sum(len(x.split()) for x in lines)


def time_tagging(dm, tokenizer) -> tuple[float, tuple[float, float]]:
    """Wall seconds of ``dm.build_tagged(tokenizer)`` and the CPU seconds it took (main, map workers)."""
    c0, t0 = cpu_seconds(), time.perf_counter()
    dm.build_tagged(tokenizer)
    dt, c1 = time.perf_counter() - t0, cpu_seconds()
    return dt, (c1[0] - c0[0], c1[1] - c0[1])


def time_cached_setup(dm) -> None:
    """Time ``dm.setup()`` where the tokenizer and the tagged dataset are already cached (asserting both hit)."""
    t0 = time.perf_counter()
    dm.setup()
    assert dm.cache_hits == {"tokenizer": True, "tagged": True}, dm.cache_hits
    print(f"  second (cached) run, tokenizer + tagged dataset + NSP pairs: {time.perf_counter() - t0:.2f} s")


def print_tagging_speedups(rates: list[tuple[int, float]], cpu: dict[int, tuple[float, float]]) -> None:
    """Each ``num_proc > 1`` against ``num_proc=1``: measured, and expected on idle cores from the CPU times."""
    base = dict(rates).get(1)
    for num_proc, rate in rates:
        if base and num_proc > 1:
            # on idle cores: the main process's part, then the workers' part split evenly over num_proc cores
            own, workers = cpu[num_proc]
            idle = sum(cpu[1]) / (own + workers / num_proc)
            print(
                f"  num_proc={num_proc} / num_proc=1: {rate / base:.2f}x measured (wall clock); "
                f"{idle:.2f}x expected on {num_proc} idle cores (from the CPU times, workers' share split evenly)"
            )


def cpu_seconds() -> tuple[float, float]:
    """User + system CPU seconds of this process, and of its finished child processes."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime


def write_image_folder(root: Path, labels: Path, n: int, size=(500, 375), classes: int = 8) -> None:
    """``n`` ImageNet-like JPEGs (smooth colour fields with noise, ~70 KB each at quality 90) in ``classes``
    class folders, with 16-bit depth and 8-bit semantic PNGs of the same size, as stage=pseudo_label writes.
    Every image is one of ``classes`` patterns shifted by a random offset (fast to write, distinct files)."""
    import json

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    patterns = []
    for k in range(classes):
        phase = rng.uniform(0, 6.28, 3)
        rgb = np.stack(
            [np.sin(xx / (30 + 10 * c + k) + phase[c]) + np.cos(yy / (25 + 7 * c)) for c in range(3)], -1
        )
        rgb = (rgb * 60 + 128 + rng.normal(0, 12, (h, w, 3))).clip(0, 255).astype(np.uint8)
        depth = ((yy / h) * 50000 + 5000 + rng.normal(0, 500, (h, w))).clip(0, 65535).astype(np.uint16)
        semseg = ((xx // (40 + 5 * k) + yy // 50) % 150).astype(np.uint8)
        patterns.append((rgb, depth, semseg))
    for i in range(n):
        rel = Path(f"class{i % classes}") / f"img{i:05d}.JPEG"
        dy, dx = int(rng.integers(h)), int(rng.integers(w))
        rgb, depth, semseg = (np.roll(a, (dy, dx), axis=(0, 1)) for a in patterns[i % classes])
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(root / rel, quality=90)
        for kind, arr in (("depth", depth), ("semseg", semseg)):
            out = labels / kind / rel.with_suffix(".png")
            out.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(out, compress_level=1)
    (labels / "pseudo_labels.json").write_text(json.dumps({"num_classes": 150, "depth_scale": None}))


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (Linux: /proc/<pid>/stat); 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def children_of(pid: int) -> list[int]:
    """Live child processes of ``pid`` (Linux: the ppid field of /proc/*/stat)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return kids


def bench_image_folder(args) -> list[tuple[int, float]]:
    """Images/s of the image-folder loader per worker count; returns ``[(workers, images/s), ...]``."""
    import torch

    from data.image_folder import ImageFolderDataModule

    torch.set_num_threads(1)  # workers run one torch thread each; the in-process loader gets the same
    rates = []
    linux = Path("/proc/self/stat").is_file()
    with tempfile.TemporaryDirectory() as tmp:
        if args.root:
            root, labels = Path(args.root), Path(args.labels_root or args.root)
            what = f"{root} (labels {labels})"
        else:
            root, labels = Path(tmp) / "images", Path(tmp) / "labels"
            t0 = time.perf_counter()
            write_image_folder(root, labels, args.images)
            size = sum(f.stat().st_size for f in root.rglob("*.JPEG")) / args.images / 1024
            what = f"{args.images} generated 500x375 JPEGs (~{size:.0f} KB each; written in {time.perf_counter() - t0:.0f} s)"
        print(
            f"image-folder loader: {what}, crop {args.image_size}, batch {args.batch_size}, one epoch timed"
        )
        for workers in args.workers:
            dm = ImageFolderDataModule(
                str(root), str(labels), image_size=args.image_size, batch_size=args.batch_size,
                num_workers=workers, val_fraction=0.0, samples_per_epoch=args.images,
            )  # fmt: skip
            loader = dm.train_dataloader()
            for _ in loader:  # warm-up epoch: workers started, files in the page cache
                pass
            kids = children_of(os.getpid()) if linux else []
            before = [process_cpu_seconds(k) for k in kids] + [time.process_time()]
            t0 = time.perf_counter()
            n = sum(int(batch["rgb"].shape[0]) for batch in loader)
            dt = time.perf_counter() - t0
            after = [process_cpu_seconds(k) for k in kids] + [time.process_time()]
            cpu = sum(after) - sum(before)
            rates.append((workers, n / dt))
            line = f"  num_workers={workers}: {n} images in {dt:6.2f} s  {n / dt:7.1f} images/s"
            if linux and cpu > 0:
                cores = min(max(workers, 1), os.cpu_count() or 1)
                line += (
                    f"  ({n / cpu:.1f} images per CPU second, main process + {len(kids)} workers: "
                    f"~{cores * n / cpu:.0f} images/s expected on {cores} idle core{'s' * (cores > 1)})"
                )
            print(line)
            del loader, dm
    return rates


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--nltk-data", help="folder holding taggers/averaged_perceptron_tagger_eng (else NLTK's path)"
    )
    p.add_argument("--sentences", type=int, default=20000, help="generated sentences to tag")
    p.add_argument("--num-proc", default="1,2", help="datasets.map processes to compare")
    p.add_argument("--images", type=int, default=512, help="generated images (no --root)")
    p.add_argument("--root", help="an image folder (<root>/<class>/<image>) instead of the generated one")
    p.add_argument("--labels-root", help="its pseudo-labels (stage=pseudo_label's out_root)")
    p.add_argument("--workers", default="0,1,2", help="DataLoader worker counts to compare")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--skip-tagging", action="store_true")
    p.add_argument("--skip-images", action="store_true")
    args = p.parse_args(argv)
    args.num_proc = [int(x) for x in args.num_proc.split(",")]
    args.workers = [int(x) for x in args.workers.split(",")]
    from runner.console import quiet_console

    quiet_console()  # no torchdata 'set_vital' warning
    print(
        f"CPUs: {os.cpu_count()}; load average {os.getloadavg()[0]:.2f} (wall-clock rates: other jobs lower them)"
    )
    if not args.skip_tagging:
        bench_tagging(args)
    if not args.skip_images:
        bench_image_folder(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
