"""Real-text sources for PoS-BERT: a text file, a folder of .txt files, a save_to_disk dataset, the hub."""

import json
import logging

import pytest
from helpers import compose_config, run_pipeline

from data.pos_bert import PosBertDataModule
from data.text_sources import (
    read_disk_dataset,
    read_hub_dataset,
    read_hub_sources,
    read_text_dir,
    read_text_file,
)
from utils.errors import ConfigError, DataError

DOC_A = "The old man walked to the river.\nHe saw a small boat and a red bird.\n"
DOC_B = "She quickly opened the heavy door.\nOh, the room was dark but warm.\n"
DOC_C = "A small dog barked at the tall stranger.\nThe stranger smiled and walked away.\n"
DOC_D = "Rain fell on the quiet village all night.\nBy morning the river had risen.\n"


def test_text_folder_each_file_is_a_document(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text(DOC_A)
    (tmp_path / "sub" / "b.txt").write_text(DOC_B + "\nA third document starts here. It has two sentences.\n")
    (tmp_path / "notes.md").write_text("ignored")
    texts, docs = read_text_dir(tmp_path)
    assert texts[0] == "The old man walked to the river."
    assert len(texts) == 6 and docs == [0, 0, 1, 1, 2, 2]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"data.corpus.text_dir: .*empty holds no .txt file"):
        read_text_dir(tmp_path / "empty")


def test_disk_dataset_rows_are_documents_or_lines(tmp_path):
    from datasets import Dataset, DatasetDict

    Dataset.from_dict({"text": [DOC_A, DOC_B]}).save_to_disk(str(tmp_path / "articles"))
    texts, docs = read_disk_dataset(tmp_path / "articles", "train", "text")
    assert len(texts) == 4 and docs == [0, 0, 1, 1]  # multi-line rows are whole documents
    DatasetDict({"train": Dataset.from_dict({"body": ["One line.", "", "Next document."]})}).save_to_disk(
        str(tmp_path / "dd")
    )
    texts, docs = read_disk_dataset(tmp_path / "dd", "train", "body")
    assert texts == ["One line.", "Next document."] and docs == [0, 1]
    with pytest.raises(ConfigError, match="data.corpus.text_column='text' is not a column"):
        read_disk_dataset(tmp_path / "dd", "train", "text")
    with pytest.raises(ConfigError, match="data.corpus.hf_split='validation' is not a split"):
        read_disk_dataset(tmp_path / "dd", "validation", "body")
    (tmp_path / "junk").mkdir()
    with pytest.raises(DataError, match="is not a dataset saved with save_to_disk"):
        read_disk_dataset(tmp_path / "junk", "train", "text")


def test_hub_dataset_offline_fails_with_one_sentence(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match=r"data.corpus.hf_dataset='no-such/corpus' .*could not be loaded"):
        read_hub_dataset("no-such/corpus", None, "train", "text", streaming=True, max_rows=10)


def test_sources_are_exclusive_and_required_keys_are_named(tmp_path):
    with pytest.raises(ConfigError, match="choose one text source"):
        PosBertDataModule(cache_dir=str(tmp_path), corpus={"text_file": "a.txt", "text_dir": str(tmp_path)})
    with pytest.raises(ConfigError, match="data.corpus.streaming=true reads a hub dataset"):
        PosBertDataModule(cache_dir=str(tmp_path), corpus={"streaming": True})
    from runner.factories import build_pretraining

    for choice, key in (
        ("text_folder", "data.corpus.text_dir"),
        ("disk_dataset", "data.corpus.disk_dataset"),
    ):
        cfg = compose_config(["experiment=pos_bert", f"data={choice}"], tmp_path)
        with pytest.raises(ConfigError, match=f"{key} is required"):
            build_pretraining(cfg)
    cfg = compose_config(
        ["experiment=pos_bert", "data=text_folder", "data.corpus.text_dir=/no/such/dir"], tmp_path
    )
    with pytest.raises(DataError, match="data.corpus.text_dir: /no/such/dir is not a folder"):
        build_pretraining(cfg)


@pytest.mark.slow
def test_wikitext_sample_runs_through_nltk_and_the_whole_run(shared_data, nltk_data, tmp_path, monkeypatch):
    monkeypatch.setenv("TRP_CACHE_DIR", str(tmp_path / "cache"))
    wiki = shared_data / "text" / "wikitext-2-raw" / "wiki.test.raw"
    if not wiki.is_file():
        pytest.skip(f"{wiki} not found")
    folder = tmp_path / "wiki"
    folder.mkdir()
    (folder / "part1.txt").write_text(wiki.read_text()[:60000])
    res = run_pipeline(
        ["experiment=pos_bert", "data=text_folder", f"data.corpus.text_dir={folder}", "debug=smoke", "logger=none",
         f"paths.cache_dir={tmp_path / 'cache'}"],
        tmp_path / "run",
    )  # fmt: skip
    assert set(res["downstream"]) == {"cola", "sst2", "mrpc", "rte", "stsb"}
    assert {"noun", "verb", "determiner", "preposition"} <= set(res["upstream"])
    assert json.loads((tmp_path / "run" / "results.json").read_text())["experiment"] == "pos_bert"


def test_text_file_in_another_encoding_names_the_byte_offset(tmp_path):
    path = tmp_path / "latin1.txt"
    text = "The old man walked to the river.\nHe saw a café and a red bird.\n"
    path.write_bytes(text.encode("latin-1"))
    offset = text.index("é")
    with pytest.raises(DataError) as err:
        read_text_file(path)
    msg = str(err.value)
    assert (
        f"data.corpus.text_file: {path} is not valid utf-8 (byte 0xe9 at byte offset {offset}, line 2)" in msg
    )
    assert "data.corpus.encoding=latin-1" in msg and "\n" not in msg
    texts, _ = read_text_file(path, "latin-1")
    assert texts[1] == "He saw a café and a red bird."
    with pytest.raises(ConfigError, match="data.corpus.encoding='klingon' is not a text encoding"):
        PosBertDataModule(cache_dir=str(tmp_path), corpus={"text_file": str(path), "encoding": "klingon"})
    cfg = compose_config(["experiment=pos_bert", "data=text_file", f"data.corpus.text_file={path}"], tmp_path)
    assert cfg.data.corpus.encoding == "utf-8"


def test_text_folder_skips_binary_files_and_fails_when_only_binary(tmp_path, caplog):
    (tmp_path / "a.txt").write_text(DOC_A)
    (tmp_path / "blob.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4)
    (tmp_path / "noise.txt").write_bytes(bytes((i * 37 + 128) % 256 | 0x80 for i in range(2000)))
    with caplog.at_level(logging.WARNING, logger="data.text_sources"):
        texts, docs = read_text_dir(tmp_path)
    assert texts == ["The old man walked to the river.", "He saw a small boat and a red bird."]
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert f"skipping {tmp_path / 'blob.txt'}" in warned and "NUL bytes" in warned
    assert f"skipping {tmp_path / 'noise.txt'}" in warned
    (tmp_path / "a.txt").unlink()
    with pytest.raises(
        DataError,
        match=rf"data.corpus.text_dir: {tmp_path} holds no text file: its 2 .txt file\(s\) all look",
    ):
        read_text_dir(tmp_path)
    (tmp_path / "b.txt").write_bytes(DOC_B.encode() + "Il était une fois.\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"b.txt is not valid utf-8 \(byte 0xe9 at byte offset \d+, line 3\)"):
        read_text_dir(tmp_path)  # a text file with a stray byte is not binary: it fails, naming where


def test_placeholders_are_one_token_in_no_pos_task(nltk_data, tmp_path):
    from data.pos_tagging import IGNORE, _pretokenize, tag_and_tokenize, train_wordpiece

    marks = ("<unk>", "@-@", "@,@", "@.@")
    text = "The <unk> of the north @-@ west bank rose by 1 @,@ 200 metres in <unk> ."
    tok = train_wordpiece([text, DOC_A, DOC_B], 200, placeholders=marks)
    words = _pretokenize(tok, text, marks)
    assert words.count("<unk>") == 2 and "@-@" in words and "@,@" in words and "unk" not in words
    out = tag_and_tokenize({"text": [text]}, tok, placeholders=marks)
    ids, pos = out["input_ids"][0], out["pos"][0]
    for mark in ("<unk>", "@-@", "@,@"):
        piece = tok.convert_tokens_to_ids(mark)
        assert ids.count(piece) == words.count(mark)  # one token per placeholder
        assert all(p == IGNORE for i, p in zip(ids, pos) if i == piece)  # never a masking target
    assert sum(p != IGNORE for p in pos) == len(ids) - 4  # every other piece keeps its POS group
    # a run on such a file: no placeholder is ever masked
    docs = [f"{DOC_A}The <unk> went north @-@ west.\n\n{DOC_B}\n".replace(".", f" {k}.") for k in range(20)]
    (tmp_path / "wiki.txt").write_text("".join(docs))
    dm = PosBertDataModule(cache_dir=str(tmp_path / "cache"), max_length=32,
                           corpus={"text_file": str(tmp_path / "wiki.txt"), "placeholders": list(marks)})  # fmt: skip
    dm.setup()
    unk = dm.tokenizer.convert_tokens_to_ids("<unk>")
    items = [dm.train_set[i] for i in range(len(dm.train_set))]
    marked = [p for e in items for i, p in zip(e["input_ids"], e["pos"]) if i == unk]
    assert marked and set(marked) == {IGNORE}
    assert unk not in dm.train_collator(items)["mlm_labels"].tolist()


def test_a_single_document_cannot_make_nsp_pairs(nltk_data, tmp_path):
    from models.bert import PosBert
    from pretrain.balancers import NoBalancing
    from pretrain.pos_bert import PosBertPretraining

    (tmp_path / "one.txt").write_text(DOC_A + DOC_B)  # no blank line: one document
    dm = PosBertDataModule(
        cache_dir=str(tmp_path / "cache"), corpus={"text_file": str(tmp_path / "one.txt")}, max_length=32
    )
    dm.setup()
    model = PosBert(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                    max_position_embeddings=64)  # fmt: skip
    with pytest.raises(DataError, match=r"one.txt is a single document, .*set module.nsp=off"):
        PosBertPretraining(model, NoBalancing).prepare_for_finetune(dm)
    PosBertPretraining(model, NoBalancing, nsp="off").prepare_for_finetune(dm)  # MLM alone still trains


def test_a_binary_text_file_is_named_not_trained_on(tmp_path):
    from data.text_sources import check_text_file

    blob = tmp_path / "model.bin"
    blob.write_bytes(b"PK\x03\x04\x14\x00\x00\x00" + bytes(range(256)) * 16)  # a zip archive
    with pytest.raises(DataError) as err:
        check_text_file(blob)
    assert str(err.value) == (
        f"data.corpus.text_file: {blob} looks binary, not utf-8 text (NUL bytes): point data.corpus.text_file at a text file "
        "(or set data.corpus.encoding if it is text in another encoding, e.g. utf-16)."
    )
    noise = tmp_path / "noise.txt"  # no NUL byte, but mostly undecodable
    noise.write_bytes(bytes((i * 37 + 128) % 256 | 0x80 for i in range(2000)))
    with pytest.raises(DataError, match=r"noise.txt looks binary, not utf-8 text \(\d+% of its first bytes"):
        PosBertDataModule(cache_dir=str(tmp_path / "cache"), corpus={"text_file": str(noise)}).validate()
    latin = tmp_path / "latin1.txt"
    latin.write_bytes(
        ("x" * 3_000_000 + "\ncaf\u00e9\n").encode("latin-1")
    )  # the bad byte past the first MiB
    with pytest.raises(DataError, match=r"\(byte 0xe9 at byte offset 3000004, line 2\)"):
        check_text_file(latin)
    check_text_file(latin, "latin-1")


def test_text_folder_binary_files_are_reported_once_at_start_up(nltk_data, tmp_path, caplog):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text(DOC_A + "\n" + DOC_B)
    (corpus / "b.txt").write_text(DOC_C + "\n" + DOC_D)
    (corpus / "c.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4)
    dm = PosBertDataModule(cache_dir=str(tmp_path / "cache"), corpus={"text_dir": str(corpus)}, max_length=32)
    with caplog.at_level(logging.WARNING, logger="data.text_sources"):
        dm.validate()
        dm.setup()
    skips = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    assert skips == [
        f"data.corpus.text_dir: skipping {corpus / 'c.txt'}: it looks binary, not utf-8 text (NUL bytes)."
    ]
    assert len(dm.tagged) == 8  # the two text files' sentences only
    (corpus / "b.txt").write_bytes(DOC_B.encode() + "\nIl \u00e9tait une fois.\n".encode("latin-1"))
    with pytest.raises(
        DataError, match=r"data.corpus.text_dir: .*b.txt is not valid utf-8 \(byte 0xe9 at byte offset"
    ):
        PosBertDataModule(cache_dir=str(tmp_path / "cache"), corpus={"text_dir": str(corpus)}).validate()


def test_a_line_without_sentence_ends_is_chunked_with_one_warning(nltk_data, tmp_path, caplog):
    words = " ".join(f"word{k % 50} and" for k in range(400))  # 800 words, no sentence end: one "sentence"
    path = tmp_path / "dump.txt"
    path.write_text(f"{DOC_A}\n{DOC_B}\n{DOC_C}\n{words}\n")
    dm = PosBertDataModule(cache_dir=str(tmp_path / "cache"), corpus={"text_file": str(path)}, max_length=32)
    with caplog.at_level(logging.WARNING, logger="data.pos_bert"):
        dm.setup()
    warned = [r.getMessage() for r in caplog.records if "longer than data.max_length" in r.getMessage()]
    assert len(warned) == 1
    pieces = len(dm.tokenizer(words, add_special_tokens=False)["input_ids"])
    assert warned[0] == (
        f"data.corpus.text_file={path}: 1 sentence(s) longer than data.max_length=32 word-pieces (the longest {pieces}) "
        "were split into chunks of at most 14; a line without a sentence end (. ! ?) is read as one sentence."
    )
    chunks = -(-pieces // 14)
    assert len(dm.train_set) + len(dm.val_set) == 3 + chunks - 1  # one pair per chunk but the last
    items = [dm.train_set[i] for i in range(len(dm.train_set))]
    assert all(len(e["input_ids"]) <= 32 for e in items)


def test_a_corpus_that_repeats_itself_cannot_validate(nltk_data, tmp_path):
    path = tmp_path / "twice.txt"
    path.write_text("\n".join([DOC_A, DOC_B, DOC_C, DOC_D] * 5))  # 4 documents, 5 times over
    dm = PosBertDataModule(cache_dir=str(tmp_path / "cache"), corpus={"text_file": str(path)}, max_length=32)
    with pytest.raises(DataError) as err:
        dm.setup()
    assert str(err.value) == (
        f"data.corpus.text_file={path}: 1 of the 1 validation pairs open with a segment that is also a training pair's "
        "(the text repeats itself), so validation would measure memorisation: give it text that does not repeat."
    )


def test_tagging_in_two_processes_gives_the_one_process_dataset(nltk_data, tmp_path):
    """num_proc=2 (datasets.map workers, forked after the tagger is loaded) tags exactly as one process does."""
    (tmp_path / "t.txt").write_text((DOC_A + "\n" + DOC_B + "\n") * 30)
    tagged, tokenizer = {}, None
    for num_proc in (1, 2):
        dm = PosBertDataModule(cache_dir=str(tmp_path / f"c{num_proc}"), max_length=32, tokenizer={"vocab_size": 300},
                               corpus={"text_file": str(tmp_path / "t.txt"), "num_proc": num_proc})  # fmt: skip
        tokenizer = tokenizer or dm.build_tokenizer()
        tagged[num_proc] = dm.build_tagged(tokenizer)
    assert len(tagged[1]) == len(tagged[2]) > 60
    assert tagged[1]["input_ids"] == tagged[2]["input_ids"] and tagged[1]["pos"] == tagged[2]["pos"]


def test_segment_pairs_need_segments_of_half_the_budget(nltk_data, tmp_path):
    """data.nsp.random_b=segment drops pairs whose A or B stays under segment_tokens // 2 word-pieces: a corpus
    of short documents of short sentences fails naming the key and the ways out; `sentences` pairs it."""
    (tmp_path / "short.txt").write_text(
        "Dogs run.\nCats sit.\n\nBirds fly.\nFish swim.\n\nMen walk.\nKids play.\n"
    )
    kw = dict(
        cache_dir=str(tmp_path / "cache"), corpus={"text_file": str(tmp_path / "short.txt")}, max_length=64
    )
    with pytest.raises(DataError, match=r"reach 15 word-pieces each .*data.nsp.random_b=sentences"):
        PosBertDataModule(**kw, nsp={"val_fraction": 0.34, "random_b": "segment"}).setup()
    dm = PosBertDataModule(**kw, nsp={"val_fraction": 0.34, "random_b": "sentences"})
    dm.setup()
    assert len(dm.train_set) + len(dm.val_set) == 3  # one pair per document


WIKI = [f"Article {i} opens here.\nArticle {i} closes here." for i in range(50)]
BOOKS = [f"Book sentence {i} ends." for i in range(500)]


def _hub(served: dict, limit: dict):
    """A stand-in for ``datasets.load_dataset(..., streaming=True)``: Wikipedia rows (id, url, title, text) and
    BookCorpus rows (text, one sentence), each a lazy generator that fails when read past ``limit[name]`` rows."""
    import datasets

    def load(name, config=None, split="train", streaming=False):
        rows = {"wikimedia/wikipedia": WIKI, "bookcorpus/bookcorpus": BOOKS}[name]

        def gen():
            for i, text in enumerate(rows):
                if i >= limit[name]:
                    raise AssertionError(f"{name} read past {limit[name]} rows")
                served[name] = i + 1
                extra = {"id": str(i), "url": f"u{i}", "title": f"t{i}"} if "wiki" in name else {}
                yield {**extra, "text": text}

        if not streaming:  # the whole split, as load_dataset downloads it
            return datasets.Dataset.from_dict({"text": rows})
        return datasets.IterableDataset.from_generator(gen)

    return load


def test_wikipedia_and_bookcorpus_are_read_in_order_as_whole_documents(tmp_path, monkeypatch):
    """data=wikipedia_bookcorpus: Wikipedia's first max_rows articles, then BookCorpus's first max_rows sentences
    in documents of document_rows rows, read lazily (the streams fail if read much past max_rows)."""
    import datasets

    sources = compose_config(["experiment=pos_bert", "data=wikipedia_bookcorpus"], tmp_path).data.corpus
    sources = [dict(s) for s in sources.hf_sources]
    assert [s["hf_dataset"] for s in sources] == ["wikimedia/wikipedia", "bookcorpus/bookcorpus"]
    sources[0] |= {"max_rows": 3}
    sources[1] |= {"max_rows": 25, "document_rows": 10}
    served: dict = {}
    margin = 5  # rows a stream may be read ahead
    monkeypatch.setattr(datasets, "load_dataset", _hub(served, {"wikimedia/wikipedia": 3 + margin,
                                                                "bookcorpus/bookcorpus": 25 + margin}))  # fmt: skip
    data = PosBertDataModule(cache_dir=str(tmp_path), corpus={"hf_sources": sources, "streaming": True})
    raw = data._read_raw().to_dict()  # an Arrow file under cache_dir, written a batch at a time
    texts, docs = raw["text"], raw["doc"]
    assert texts[:6] == [s for i in range(3) for s in (f"Article {i} opens here.", f"Article {i} closes here.")]
    assert texts[6:] == [f"Book sentence {i} ends." for i in range(25)]
    # 3 articles, then the 25 sentences as documents of 10, 10 and 5 rows
    assert docs == [0, 0, 1, 1, 2, 2] + [3] * 10 + [4] * 10 + [5] * 5
    assert served["wikimedia/wikipedia"] <= 3 + margin and served["bookcorpus/bookcorpus"] <= 25 + margin
    assert data.corpus_name.startswith("data.corpus.hf_sources=[{'hf_dataset': 'wikimedia/wikipedia'")

    served.clear()  # not streamed: the same corpus
    assert read_hub_sources(sources[::-1], streaming=False)[0][:2] == ["Book sentence 0 ends.", "Book sentence 1 ends."]
    with pytest.raises(ConfigError, match=r"data.corpus.hf_sources\[1\] needs hf_dataset and takes .*'split' is not"):
        read_hub_sources([sources[0], {"hf_dataset": "x", "split": "train"}])


def test_a_streamed_hub_dataset_is_read_no_further_than_max_rows(monkeypatch):
    """data.corpus.max_rows bounds what is read of a stream (the paper's Wikipedia has 6.4M articles)."""
    import datasets

    served: dict = {}
    monkeypatch.setattr(datasets, "load_dataset", _hub(served, {"wikimedia/wikipedia": 4}))
    texts, docs = read_hub_dataset("wikimedia/wikipedia", "20231101.en", "train", "text", streaming=True, max_rows=4)
    assert len(texts) == 8 and docs[-1] == 3 and served["wikimedia/wikipedia"] == 4
    with pytest.raises(AssertionError, match="read past 4 rows"):
        read_hub_dataset("wikimedia/wikipedia", "20231101.en", "train", "text", streaming=True, max_rows=5)


def test_a_streamed_corpus_goes_to_an_arrow_file_a_batch_at_a_time(tmp_path, monkeypatch):
    """The raw sentences are never listed whole: Python memory stays at about one record batch however many rows
    are read (listing them took about 2.1x the text), and the tagging reads them memory-mapped."""
    import tracemalloc

    import datasets

    import data.text_sources

    article = ("The river rose in the night and the village woke to water. " * 8 + "\n") * 6  # 48 sentences
    rows = 1500  # 4.1 MiB of text, 72,000 sentences

    def load(name, config=None, split="train", streaming=False):
        return datasets.IterableDataset.from_generator(lambda: ({"text": article} for _ in range(rows + 5)))

    monkeypatch.setattr(datasets, "load_dataset", load)
    monkeypatch.setattr(data.text_sources, "ROWS_PER_BATCH", 1000)
    corpus = {"hf_dataset": "wikimedia/wikipedia", "streaming": True, "max_rows": rows}
    warm = PosBertDataModule(cache_dir=str(tmp_path), corpus={**corpus, "max_rows": 2})
    warm._read_raw()  # the imports and first-call set-up of datasets and pyarrow, outside the measurement
    warm._drop_raw()
    dm = PosBertDataModule(cache_dir=str(tmp_path), corpus=corpus)
    tracemalloc.start()
    try:
        raw = dm._read_raw()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(raw) == rows * 48 and raw[47]["doc"] == 0 and raw[48]["doc"] == 1
    assert raw.cache_files and peak < 0.25 * rows * len(article), f"peak {peak / 2**20:.2f} MiB"
    folder = dm._raw_dir
    dm._drop_raw()
    assert not folder.exists()
