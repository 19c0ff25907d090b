"""Caches under bad conditions (utils/atomic.py): a full disk, a killed or interrupted preprocessing run."""

import errno
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO_ROOT, compose_config, smoke_values

import utils.atomic as atomic
from data.pos_bert import PosBertDataModule
from utils.atomic import atomic_write, remove_stale_temps
from utils.errors import DataError


def _enospc() -> OSError:
    return OSError(errno.ENOSPC, "No space left on device")


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _temp_name(final_name: str, pid: int, ns: int | None = None, host: str | None = None) -> str:
    host = atomic._host() if host is None else host
    return f".{final_name}.tmp-{host}-{pid}-{time.time_ns() if ns is None else ns}"


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name) if folder.is_dir() else []


def _assert_disk_full_sentence(msg: str, final: Path, key: str) -> None:
    assert str(final) in msg and "disk is full" in msg and "No space left on device" in msg
    assert "free some space" in msg and key in msg
    assert "\n" not in msg and msg.count(". ") == 0 and msg.endswith(".")


# ---------------------------------------------------------------------------------------------------------
# the helper
# ---------------------------------------------------------------------------------------------------------
def test_atomic_write_turns_a_full_disk_into_one_sentence_and_leaves_nothing(tmp_path):
    def partial_dir(tmp):
        tmp.mkdir()
        (tmp / "shard.arrow").write_bytes(b"half")
        raise _enospc()

    def partial_file(tmp):
        tmp.write_bytes(b"half")
        raise OSError(errno.EDQUOT, "Disk quota exceeded")

    def rust_full(tmp):  # what tokenizers' Tokenizer.save raises on a full disk
        tmp.write_bytes(b"{")
        raise Exception("No space left on device (os error 28)")

    final = tmp_path / "cache" / "tagged-0123"
    with pytest.raises(DataError) as err:
        atomic_write(final, partial_dir)
    _assert_disk_full_sentence(str(err.value), final, "paths.cache_dir=")
    assert "TRP_CACHE_DIR" in str(err.value) and isinstance(err.value.__cause__, OSError)
    assert not final.exists() and _leftovers(final.parent) == []

    with pytest.raises(DataError, match="disk quota is used up .Disk quota exceeded.") as err:
        atomic_write(tmp_path / "f.png", partial_file, what="pseudo-label", relocate="use x.y=<folder>")
    assert str(tmp_path / "f.png") in str(err.value) and "free some space or use x.y=<folder>." in str(
        err.value
    )
    with pytest.raises(DataError, match="disk is full"):
        atomic_write(tmp_path / "tok", rust_full)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"] and _leftovers(final.parent) == []

    # any other error propagates unchanged, and still leaves nothing
    def denied(tmp):
        tmp.mkdir()
        raise PermissionError(errno.EACCES, "Permission denied")

    with pytest.raises(PermissionError):
        atomic_write(final, denied)
    assert not final.exists() and _leftovers(final.parent) == []
    assert atomic_write(final, lambda tmp: tmp.write_text("ok")).read_text() == "ok"


def test_stale_temps_of_dead_processes_are_removed_and_live_ones_kept(tmp_path):
    dead, day_ago = _dead_pid(), time.time_ns() - 2 * 24 * 3600 * 10**9
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        names = {
            "dead": _temp_name("tagged-a", dead),
            "dead_legacy": f".tagged-b.tmp-{dead}-{time.time_ns()}",  # the name earlier versions used
            "live": _temp_name("tagged-c", live.pid),
            "live_other_host": _temp_name("tagged-d", dead, host="another-node"),
            "live_but_old_name": _temp_name("tagged-e", live.pid, ns=day_ago),
            "abandoned": _temp_name("tagged-f", live.pid, ns=day_ago),
            "old_but_still_written": _temp_name("tagged-i", live.pid, ns=day_ago),
            "cache": "tagged-g",
            "not_ours": ".tagged-h.tmp",
        }
        for name in names.values():
            (tmp_path / name).mkdir()
            (tmp_path / name / "part").write_text("x")
        old = time.time() - 2 * 24 * 3600
        for path in (tmp_path / names["abandoned"], tmp_path / names["abandoned"] / "part"):
            os.utime(path, (old, old))  # nothing written there for two days
        os.utime(tmp_path / names["old_but_still_written"], (old, old))  # but its file was written just now
        removed = remove_stale_temps(tmp_path)
        assert sorted(p.name for p in removed) == sorted(
            names[k] for k in ("dead", "dead_legacy", "abandoned")
        )
        kept = {"live", "live_other_host", "live_but_old_name", "old_but_still_written", "cache", "not_ours"}
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[k] for k in kept)
    finally:
        live.kill()
        live.wait()


def test_a_killed_writer_leaves_a_temp_that_the_next_write_removes(tmp_path):
    final = tmp_path / "pos_bert" / "tagged-0123"
    child = (
        "import sys, time; from pathlib import Path; from utils.atomic import atomic_write\n"
        "def write(tmp):\n"
        "    tmp.mkdir(); (tmp / 'dataset_info.json').write_text('{}'); print('writing', flush=True)\n"
        "    time.sleep(60)\n"
        f"atomic_write(Path({str(final)!r}), write)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", child], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True, env=dict(os.environ)
    )
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)  # no finally, no cleanup
    proc.wait()
    (left,) = _leftovers(final.parent)
    assert left.startswith(f".{final.name}.tmp-") and not final.exists()
    assert [p.name for p in remove_stale_temps(final.parent)] == [left]
    assert _leftovers(final.parent) == []


# ---------------------------------------------------------------------------------------------------------
# PoS-BERT caches
# ---------------------------------------------------------------------------------------------------------
def _dm(cache: Path) -> PosBertDataModule:
    return PosBertDataModule(
        cache_dir=str(cache), **smoke_values("data", "pos_corpus"), seed=1, max_length=32
    )


def _n_sentences(cache: Path) -> int:
    return len(_dm(cache)._raw()["doc"])  # the generated corpus; every sentence has word-pieces


def test_tagged_cache_on_a_full_disk_fails_with_one_sentence_then_rebuilds(tmp_path, monkeypatch):
    import datasets

    def full(self, path, **kw):
        Path(path).mkdir(parents=True)
        (Path(path) / "data-00000-of-00001.arrow").write_bytes(b"half an arrow file")
        raise _enospc()

    monkeypatch.setattr(datasets.Dataset, "save_to_disk", full)
    with pytest.raises(DataError) as err:
        _dm(tmp_path).setup()
    msg = str(err.value)
    assert not list((tmp_path / "pos_bert").glob("tagged-*")) and _leftovers(tmp_path / "pos_bert") == []
    assert len(list((tmp_path / "pos_bert").glob("tokenizer-*/tokenizer.json"))) == 1  # written before: kept

    monkeypatch.undo()
    dm = _dm(tmp_path)
    dm.setup()
    assert dm.cache_hits == {"tokenizer": True, "tagged": False}
    assert len(dm.tagged) == _n_sentences(tmp_path) > 0
    (final,) = (tmp_path / "pos_bert").glob("tagged-*")
    assert len(datasets.load_from_disk(str(final))) == len(dm.tagged)
    assert _leftovers(tmp_path / "pos_bert") == []
    # the sentence named the cache that is now there
    assert f"while writing the tagged dataset cache {final}: " in msg
    _assert_disk_full_sentence(msg, final, "paths.cache_dir=")
    assert "TRP_CACHE_DIR" in msg


def test_tokenizer_cache_on_a_full_disk_fails_with_one_sentence_then_rebuilds(tmp_path, monkeypatch):
    from transformers import PreTrainedTokenizerFast

    def full(self, save_directory, **kw):
        Path(save_directory).mkdir(parents=True)
        (Path(save_directory) / "tokenizer.json").write_text('{"truncat')
        raise Exception("No space left on device (os error 28)")  # as tokenizers' Rust binding raises it

    monkeypatch.setattr(PreTrainedTokenizerFast, "save_pretrained", full)
    with pytest.raises(DataError) as err:
        _dm(tmp_path).setup()
    msg = str(err.value)
    final = Path(re.search(r"while writing the tokenizer cache (\S+): free", msg).group(1))
    assert final.parent == tmp_path / "pos_bert" and not final.exists()
    _assert_disk_full_sentence(msg, final, "paths.cache_dir=")
    assert sorted(p.name for p in (tmp_path / "pos_bert").iterdir()) == []

    monkeypatch.undo()
    dm = _dm(tmp_path)
    dm.setup()
    assert dm.cache_hits == {"tokenizer": False, "tagged": False}
    assert (final / "tokenizer.json").is_file() and len(dm.tagged) == _n_sentences(tmp_path)
    again = _dm(tmp_path)
    again.setup()
    assert again.cache_hits == {"tokenizer": True, "tagged": True}
    assert again.tokenizer.get_vocab() == dm.tokenizer.get_vocab()


def test_a_partial_temp_of_a_killed_run_is_never_read_and_is_cleaned_up(tmp_path):
    import datasets

    # a complete cache elsewhere gives the exact names and files a killed run would have been writing
    ref = _dm(tmp_path / "ref")
    ref.setup()
    ref_dir = tmp_path / "ref" / "pos_bert"
    tagged = next(ref_dir.glob("tagged-*")).name
    cache = tmp_path / "cache" / "pos_bert"
    cache.mkdir(parents=True)
    dead = _dead_pid()
    # the tokenizer finished; the tagged dataset was half written when the process was killed
    shutil.copytree(
        ref_dir / next(ref_dir.glob("tokenizer-*")).name, cache / next(ref_dir.glob("tokenizer-*")).name
    )
    partial = cache / _temp_name(tagged, dead)
    shutil.copytree(ref_dir / tagged, partial)
    for arrow in partial.glob("*.arrow"):
        arrow.write_bytes(arrow.read_bytes()[:100])
    legacy = cache / f".{tagged}.tmp-{dead}-{time.time_ns()}"  # same, written by an earlier version
    shutil.copytree(partial, legacy)
    live = cache / _temp_name(tagged, os.getpid())  # a write of this very process, still running
    live.mkdir()
    dm = _dm(tmp_path / "cache")
    dm.setup()
    assert dm.cache_hits == {"tokenizer": True, "tagged": False}  # rebuilt, the temps were not read
    assert len(dm.tagged) == len(ref.tagged) == _n_sentences(tmp_path)
    assert dm.tagged["input_ids"] == ref.tagged["input_ids"] and dm.tagged["pos"] == ref.tagged["pos"]
    assert not partial.exists() and not legacy.exists() and live.is_dir()
    assert len(datasets.load_from_disk(str(cache / tagged))) == len(ref.tagged)


def test_full_disk_during_preprocessing_stops_the_run_with_one_sentence_and_no_results(
    tmp_path, monkeypatch, capsys
):
    """``python run.py experiment=pos_bert`` (run.py's main, in-process) with the tagged-dataset cache
    write hitting ENOSPC: exit status 1, the sentence on stderr, no results.json, no cache left."""
    import datasets
    from omegaconf import open_dict

    import run as entry_point

    def full(self, path, **kw):
        Path(path).mkdir(parents=True)
        (Path(path) / "data-00000-of-00001.arrow").write_bytes(b"half")
        raise _enospc()

    monkeypatch.setattr(datasets.Dataset, "save_to_disk", full)
    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    run_dir.mkdir()
    (run_dir / "results.json").write_text("{}")  # an earlier run's results must not survive this failure
    cfg = compose_config(
        ["experiment=pos_bert", "debug=smoke", "logger=none", f"paths.cache_dir={cache}"], run_dir
    )
    with open_dict(cfg):
        del cfg["hydra"]
    with pytest.raises(SystemExit) as exit_:
        entry_point.main(cfg)  # hydra.main passes a given config straight to the function
    assert exit_.value.code == 1
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error: ")]
    final = Path(re.search(r"while writing the tagged dataset cache (\S+): free", line).group(1))
    assert final.parent == cache / "pos_bert"
    _assert_disk_full_sentence(line.removeprefix("error: "), final, "paths.cache_dir=")
    assert not (run_dir / "results.json").exists()
    assert not final.exists() and _leftovers(cache / "pos_bert") == []
