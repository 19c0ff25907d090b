"""Every input is checked at start-up, before any pre-training (``validate()`` of the downstream suite and of the
pre-training datamodule, called by ``runner/pipeline.py``): a bad row, a missing file, an unreachable hub or a
corpus that does not decode stops the run with one sentence, and nothing is trained or cached."""

import logging

import pytest
from helpers import run_cli, run_pipeline

from finetune.glue import GlueLikeSuite
from utils.errors import DataError

RTE_HEAD = "index\tsentence1\tsentence2\tlabel\n"
RTE_ROWS = (
    "0\tA cat sat on the mat.\tA cat sat.\tentailment\n1\tNo dog barked.\tA dog barked.\tnot_entailment\n"
)
QQP_HEAD = "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def rte_dir(root, dev_rows=RTE_ROWS):
    write(root / "RTE" / "train.tsv", RTE_HEAD + RTE_ROWS)
    write(root / "RTE" / "dev.tsv", RTE_HEAD + dev_rows)
    return root


def test_validate_parses_every_file_of_the_chosen_tasks(tmp_path):
    # a row of the dev file whose label is joined to the hypothesis by a space: 3 columns instead of 4
    glue = rte_dir(tmp_path, RTE_ROWS + "2\tIt rained.\tThe street is wet. entailment\n")
    suite = GlueLikeSuite(tasks=["RTE"], source="local", data_dir=str(glue))  # building it reads no row
    with pytest.raises(DataError) as err:
        suite.validate()
    assert str(err.value).startswith(f"{glue / 'RTE' / 'dev.tsv'}:4: malformed RTE row (expected at least 4")
    assert "downstream.skip_malformed=true" in str(err.value)
    GlueLikeSuite(tasks=["RTE"], source="local", data_dir=str(glue), skip_malformed=True).validate()
    GlueLikeSuite(tasks=["cola", "rte"]).validate()  # generated: nothing to read, no error


def test_qqp_malformed_rows_are_counted_once_at_start_up(tmp_path, caplog):
    qqp = tmp_path / "QQP"
    rows = [
        "0\t1\t2\tHow do I learn Python?\tWhat is the best way to learn Python?\t1\n",
        "1\t3\t4\tWhy is the sky blue?\tWhat makes the sky blue? 1\n",  # label joined by a space (GLUE skips it)
        "2\t5\t6\tHow old is the moon?\n",  # too few columns
        "3\t7\t8\tIs tea healthy?\tHow do I make a cake?\t0\n",
    ]
    write(qqp / "train.tsv", QQP_HEAD + "".join(rows))
    write(qqp / "dev.tsv", QQP_HEAD + rows[0])
    suite = GlueLikeSuite(tasks=["QQP"], source="local", data_dir=str(tmp_path))
    with caplog.at_level(logging.INFO, logger="data.glue"):
        suite.validate()
        data = suite.load("QQP")
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert skipped == [f"{qqp / 'train.tsv'}: skipped 2 malformed QQP row(s) of 4 (first at line 3: expected at "
                       "least 6 tab-separated columns, found 5)."]  # fmt: skip
    assert [e.label for e in data.train] == [1.0, 0.0] and len(data.dev) == 1


def test_hub_source_is_resolved_at_start_up(monkeypatch):
    import datasets

    calls = []

    def offline(name, config=None, **kw):
        calls.append((name, config))
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    suite = GlueLikeSuite(tasks=["RTE", "MRPC"], source="hub")
    with pytest.raises(DataError, match=r"GLUE task RTE: could not load nyu-mll/glue/rte .*\(ConnectionError\); "
                                        r"use downstream.source=local"):  # fmt: skip
        suite.validate()
    assert calls == [("nyu-mll/glue", "rte")]
    train = datasets.Dataset.from_dict({"sentence1": ["a"], "sentence2": ["b"], "label": [0]})
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: datasets.DatasetDict(train=train))
    with pytest.raises(DataError, match=r"GLUE task RTE: nyu-mll/glue/rte has no split 'validation'"):
        suite.validate()


def test_an_offline_hub_stops_the_pipeline_before_pretraining(tmp_path, monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match="GLUE task RTE: could not load nyu-mll/glue/rte"):
        run_pipeline(
            ["experiment=pos_bert", "downstream=glue", "downstream.tasks=[RTE]", "debug=smoke", "logger=none",
             f"paths.cache_dir={tmp_path / 'cache'}"],
            tmp_path / "run",
        )  # fmt: skip
    assert not (tmp_path / "cache").exists()  # not even the corpus was prepared
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("kind", ["latin-1", "binary"])
def test_a_corpus_that_is_not_text_stops_the_pipeline_before_its_caches(tmp_path, kind):
    path = tmp_path / "corpus.txt"
    text = "The old man walked to the river.\nHe saw a café and a red bird.\n\nShe opened the door.\nIt was dark.\n"
    if kind == "latin-1":
        path.write_bytes(text.encode("latin-1"))
        match = rf"data.corpus.text_file: {path} is not valid utf-8 \(byte 0xe9 at byte offset {text.index('é')}, line 2\)"
    else:
        path.write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 8)
        match = rf"data.corpus.text_file: {path} looks binary, not utf-8 text \(NUL bytes\)"
    with pytest.raises(DataError, match=match):
        run_pipeline(
            ["experiment=pos_bert", "data=text_file", f"data.corpus.text_file={path}", "debug=smoke", "logger=none",
             f"paths.cache_dir={tmp_path / 'cache'}"],
            tmp_path / "run",
        )  # fmt: skip
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_a_malformed_downstream_row_stops_run_py_in_seconds_with_no_step_taken(tmp_path):
    glue = rte_dir(tmp_path / "glue", RTE_ROWS + "2\tIt rained.\tThe street is wet.\tmaybe\n")
    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    proc = run_cli(
        ["experiment=pos_bert", "debug=smoke", "logger=none", "downstream=glue", "downstream.source=local",
         f"downstream.data_dir={glue}", "downstream.tasks=[RTE]", f"paths.cache_dir={cache}",
         f"hydra.run.dir={run_dir}"],
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-2000:]
    dev = glue / "RTE" / "dev.tsv"
    assert (
        f"error: {dev}:4: malformed RTE row (label 'maybe' is not one of ['entailment', 'not_entailment'])"
        in (proc.stderr)
    )
    assert "Traceback" not in proc.stderr
    # no pre-training step, no checkpoint, no results, not even the corpus caches: it failed at start-up
    # (the time it takes is the imports', about 10 s; not asserted: speed is measured in benchmarks/, not in timed tests)
    assert not (run_dir / "checkpoints").exists()
    assert not (run_dir / "results.json").exists() and not cache.exists()
    assert "pretrain step" not in proc.stdout + proc.stderr
