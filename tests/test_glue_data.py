"""Reading the real GLUE distribution as GLUE's processors do, and the hub's label order."""

import logging

import pytest

from data.glue import GLUE_TASKS, from_hub_split, load_hub, load_local, read_tsv, resolve
from utils.errors import DataError


def test_real_glue_files_sizes_quotes_and_labels(shared_data):
    glue = shared_data / "glue"
    sizes = {"CoLA": 1043, "SST-2": 872, "MRPC": 408, "RTE": 277}
    for name, n in sizes.items():
        task = resolve(name)
        dev = read_tsv(glue / task.folder / task.dev_file, task)
        assert len(dev) == n
        assert {e.label for e in dev} == {0.0, 1.0}
        assert all((e.b is None) == (not task.spec.pair) for e in dev)
    mrpc = load_local("mrpc", glue)
    assert len(mrpc.train) == 3668  # byte-order mark stripped: the header is not read as a row
    assert any(e.b.startswith('"') for e in mrpc.dev)  # quote characters are text, as in GLUE's reader
    cola = read_tsv(glue / "CoLA" / "dev.tsv", resolve("cola"))  # no header: the first line is an example
    assert cola[0].a == "The sailors rode the breeze clear of the rocks." and cola[0].label == 1.0
    rte = load_local("RTE", glue)
    assert len(rte.train) == 2490 and rte.spec.metrics == ("accuracy",)
    # RTE's labels follow the hub: entailment 0, not_entailment 1
    first = (glue / "RTE" / "dev.tsv").read_text().splitlines()[1].split("\t")[-1]
    assert rte.dev[0].label == (0.0 if first == "entailment" else 1.0)


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def glue_dir(tmp_path):
    """Tiny files in the exact formats of the tasks absent from ../shared/data."""
    mnli_head = (
        "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
        "sentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label\n"
    )
    row = (
        '0\t1\t1n\tfiction\t( x )\t( y )\t(ROOT x)\t(ROOT y)\tA man "sleeps".\tA person rests.\tneutral\t{}\n'
    )
    write(tmp_path / "MNLI" / "train.tsv", mnli_head + row.format("contradiction") + row.format("entailment"))
    dev_head = mnli_head.replace("label1\tgold_label", "label1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label")
    dev_row = row.replace("\tneutral\t", "\tneutral\tneutral\tneutral\tneutral\tneutral\t")
    write(tmp_path / "MNLI" / "dev_matched.tsv", dev_head + dev_row.format("neutral"))
    write(tmp_path / "MNLI" / "dev_mismatched.tsv", dev_head + dev_row.format("contradiction"))
    sts_head = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    sts_row = "0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA plane is taking off.\tAn air plane is taking off.\t5.000\n"
    write(tmp_path / "STS-B" / "train.tsv", sts_head + sts_row)
    write(tmp_path / "STS-B" / "dev.tsv", sts_head + sts_row.replace("5.000", "3.800"))
    qqp = (
        "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n201\t1\t2\tHow do I cook?\tHow can I cook?\t1\n"
    )
    write(tmp_path / "QQP" / "train.tsv", qqp)
    write(tmp_path / "QQP" / "dev.tsv", qqp.replace("\t1\n", "\t0\n"))
    qnli = "index\tquestion\tsentence\tlabel\n0\tWho?\tHe did.\tnot_entailment\n"
    write(tmp_path / "QNLI" / "train.tsv", qnli)
    write(tmp_path / "QNLI" / "dev.tsv", qnli)
    return tmp_path


def test_each_task_format_and_hub_label_order(glue_dir):
    mnli = load_local("MNLI-m", glue_dir)
    assert [e.label for e in mnli.train] == [2.0, 0.0]  # contradiction 2, entailment 0 (hub order)
    assert mnli.train[0].a == 'A man "sleeps".' and mnli.train[0].b == "A person rests."
    assert mnli.dev[0].label == 1.0  # neutral, from the gold_label column of a 16-column dev file
    assert load_local("mnli_mismatched", glue_dir).dev[0].label == 2.0
    sts = load_local("STS-B", glue_dir)
    assert sts.dev[0].label == pytest.approx(3.8) and sts.spec.primary == "spearman"
    qqp = load_local("qqp", glue_dir)
    assert qqp.train[0].label == 1.0 and qqp.spec.primary == "f1"
    assert load_local("QNLI", glue_dir).train[0].label == 1.0
    assert resolve("cola").spec.primary == "matthews"


def test_malformed_row_names_file_and_line(glue_dir):
    path = glue_dir / "QNLI" / "train.tsv"
    path.write_text(path.read_text() + "1\tonly two columns\n2\tWhy?\tBecause.\tentailment\n")
    with pytest.raises(DataError, match=r"QNLI/train.tsv:3: malformed QNLI row \(expected at least 4"):
        load_local("QNLI", glue_dir)
    assert len(read_tsv(path, resolve("QNLI"), skip_malformed=True)) == 2
    path.write_text("index\tquestion\tsentence\tlabel\n0\tWho?\tHe did.\tmaybe\n")
    with pytest.raises(DataError, match=r"train.tsv:2: .*label 'maybe' is not one of"):
        load_local("QNLI", glue_dir)


def test_missing_dev_or_folder_names_the_path(glue_dir):
    (glue_dir / "QQP" / "dev.tsv").unlink()
    with pytest.raises(DataError, match=r"GLUE task QQP: .*QQP/dev.tsv is missing"):
        load_local("QQP", glue_dir)
    with pytest.raises(DataError, match=r"no folder .*/RTE"):
        load_local("RTE", glue_dir)
    with pytest.raises(DataError, match="unknown GLUE task 'wnli2'"):
        resolve("wnli2")


def test_hub_rows_map_to_the_same_examples():
    from datasets import Dataset

    split = Dataset.from_dict(
        {"premise": ["p1", "p2"], "hypothesis": ["h1", "h2"], "label": [2, -1], "idx": [0, 1]}
    )
    examples = from_hub_split(split, GLUE_TASKS["MNLI-m"])
    assert len(examples) == 1 and examples[0].a == "p1" and examples[0].label == 2.0  # hidden labels dropped


def test_hub_unreachable_fails_with_one_sentence(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match="could not load nyu-mll/glue/rte .*downstream.source=local"):
        load_hub("rte", cache_dir=str(tmp_path))


@pytest.mark.slow
def test_real_glue_suite_runs_and_names_rows_as_the_leaderboard(shared_data, tmp_path):
    from helpers import run_pipeline

    glue = shared_data / "glue"
    res = run_pipeline(
        ["experiment=pos_bert", "downstream=glue", "downstream.source=local", f"downstream.data_dir={glue}",
         "downstream.tasks=[RTE,MRPC]", "debug=smoke", "logger=none", f"paths.cache_dir={tmp_path / 'cache'}"],
        tmp_path / "run",
    )  # fmt: skip
    assert list(res["downstream"]) == ["RTE", "MRPC"]
    assert res["downstream"]["MRPC"]["primary"] == "f1" and res["downstream"]["RTE"]["primary"] == "accuracy"
    assert {"f1", "accuracy"} <= set(res["downstream"]["MRPC"]["metrics"])


def test_real_glue_suite_fails_before_pretraining_when_files_are_missing(tmp_path):
    from helpers import run_pipeline

    (tmp_path / "glue" / "RTE").mkdir(parents=True)
    (tmp_path / "glue" / "RTE" / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n")
    with pytest.raises(DataError, match=r"GLUE task RTE needs .*RTE/dev.tsv, which is missing"):
        run_pipeline(
            ["experiment=pos_bert", "downstream=glue", "downstream.source=local",
             f"downstream.data_dir={tmp_path / 'glue'}", "downstream.tasks=[RTE]", "logger=none"],
            tmp_path / "run",
        )  # fmt: skip
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing was pre-trained


QQP_HEAD = "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
QQP_ROW = "{}\t1\t2\tHow do I cook?\tHow can I cook?\t{}\n"


def test_qqp_skips_malformed_rows_by_default_and_counts_them(glue_dir, caplog):
    path = glue_dir / "QQP" / "train.tsv"
    rows = [
        QQP_ROW.format(0, 1),
        "1\t3\t4\tA question cut short\n",
        QQP_ROW.format(2, "maybe"),
        QQP_ROW.format(3, 0),
    ]
    path.write_text(QQP_HEAD + "".join(rows))
    with caplog.at_level(logging.WARNING, logger="data.glue"):
        qqp = load_local("QQP", glue_dir)
    assert [e.label for e in qqp.train] == [1.0, 0.0]
    warned = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(warned) == 1 and f"{path}: skipped 2 malformed QQP row(s) of 4 (first at line 3" in warned[0]
    with pytest.raises(DataError, match=r"QQP/train.tsv:3: malformed QQP row \(expected at least 6"):
        load_local("QQP", glue_dir, skip_malformed=False)


def test_other_tasks_fail_on_malformed_rows_by_default(tmp_path):
    rte = tmp_path / "RTE"
    write(rte / "dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\tA cat sat.\tA cat.\tentailment\n")
    write(rte / "train.tsv", "index\tsentence1\tsentence2\tlabel\n0\tA.\tB.\tentailment\n1\tC.\tD.\tyes\n")
    with pytest.raises(DataError, match=r"RTE/train.tsv:3: malformed RTE row \(label 'yes' is not one of"):
        load_local("RTE", tmp_path)
    assert len(load_local("RTE", tmp_path, skip_malformed=True).train) == 1


def test_header_is_recognised_by_content_not_position(tmp_path):
    sst2 = resolve("SST-2")
    headed, headless = tmp_path / "headed.tsv", tmp_path / "headless.tsv"
    write(headed, "sentence\tlabel\na gripping film \t1\ndull \t0\n")
    write(headless, "a gripping film \t1\ndull \t0\n")
    assert [e.a for e in read_tsv(headed, sst2)] == ["a gripping film ", "dull "]
    assert [e.a for e in read_tsv(headless, sst2)] == ["a gripping film ", "dull "]  # first row kept
    write(headless, "a first row whose label is odd\tpositive\ndull \t0\n")  # not a header: no column name
    with pytest.raises(DataError, match=r"headless.tsv:1: malformed SST-2 row \(label 'positive'"):
        read_tsv(headless, sst2)


def test_skip_malformed_reaches_the_reader_from_the_config(glue_dir, tmp_path):
    from helpers import compose_config

    from finetune.glue import GlueLikeSuite
    from utils.errors import ConfigError

    cfg = compose_config(["experiment=pos_bert", "downstream=glue"], tmp_path)
    assert cfg.downstream.skip_malformed is None
    path = glue_dir / "QQP" / "train.tsv"
    path.write_text(QQP_HEAD + QQP_ROW.format(0, 1) + "1\t3\t4\tcut short\n")
    kw = dict(tasks=["QQP"], source="local", data_dir=str(glue_dir))
    assert len(GlueLikeSuite(**kw).load("QQP").train) == 1
    with pytest.raises(DataError, match=r"QQP/train.tsv:3: malformed QQP row"):
        GlueLikeSuite(**kw, skip_malformed=False).load("QQP")
    with pytest.raises(ConfigError, match="downstream.skip_malformed must be null, true or false"):
        GlueLikeSuite(**kw, skip_malformed="sometimes")
