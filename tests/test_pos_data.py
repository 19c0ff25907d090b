"""PoS-BERT data: masking collator, POS alignment, NSP pairs, caches and bad input."""

import logging
import warnings

import numpy as np
import pytest
import torch
from helpers import smoke_values

import data.pos_bert as pb
import data.pos_tagging as pt
from data.pos_bert import PosBertDataModule
from data.pos_grammar import ALL_GROUPS
from data.pos_masking import PosMaskingCollator, build_nsp_pairs
from data.pos_tagging import IGNORE
from data.text_sources import split_documents
from utils.errors import ConfigError, DataError

PAD, MASK, VOCAB, NSPECIAL = 0, 4, 1000, 5


def _examples(n=64, length=100, seed=0, groups=None):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        L = int(rng.integers(length // 2, length))
        ids = [2, *rng.integers(NSPECIAL, VOCAB, L - 2).tolist(), 3]
        pos = [IGNORE, *(groups(L - 2) if groups else rng.integers(0, 10, L - 2).tolist()), IGNORE]
        out.append({"input_ids": ids, "token_type_ids": [0] * L, "pos": pos, "nsp_label": i % 2, "index": i})
    return out


def _collator(**kw):
    return PosMaskingCollator(pad_id=PAD, mask_id=MASK, vocab_size=VOCAB, num_special=NSPECIAL, **kw)


def test_collator_masks_15_percent_with_80_10_10():
    torch.manual_seed(0)
    ex = _examples(n=128)
    batch = _collator()(ex)
    orig = torch.full_like(batch["input_ids"], PAD)
    for i, e in enumerate(ex):
        orig[i, : len(e["input_ids"])] = torch.tensor(e["input_ids"])
    maskable = (batch["pos"] != IGNORE).sum().item()
    m = batch["masked_positions"]
    assert abs(len(m) / maskable - 0.15) < 0.01
    flat_in, flat_orig = batch["input_ids"].reshape(-1), orig.reshape(-1)
    # labels are the original ids; the carried task is the POS id of exactly those positions
    assert torch.equal(batch["mlm_labels"], flat_orig[m])
    assert torch.equal(batch["mlm_task"], batch["pos"].reshape(-1)[m])
    assert (batch["pos"].reshape(-1)[m] != IGNORE).all()  # never a special or padding token
    is_mask = (flat_in[m] == MASK).float().mean().item()
    unchanged = (flat_in[m] == flat_orig[m]).float().mean().item()
    assert abs(is_mask - 0.8) < 0.03 and abs(unchanged - 0.1) < 0.03
    # outside the masked positions nothing changed
    keep = torch.ones_like(flat_in, dtype=torch.bool)
    keep[m] = False
    assert torch.equal(flat_in[keep], flat_orig[keep])
    assert batch["attention_mask"].sum().item() == sum(len(e["input_ids"]) for e in ex)
    assert batch["nsp_labels"].tolist() == [i % 2 for i in range(128)]


def test_stratified_masking_spreads_over_groups():
    # group 8 (interjection) is 1 token per sentence, group 1 (noun) the rest
    ex = _examples(n=32, length=40, groups=lambda n: [8] + [1] * (n - 1))
    plain = _collator()(ex)
    strat = _collator(stratify=True)(ex)
    maskable = sum(len(e["input_ids"]) - 2 for e in ex)
    budget = round(0.15 * maskable)
    counts = torch.bincount(strat["mlm_task"], minlength=10)
    assert counts.sum().item() == budget
    assert counts[8].item() == min(32, budget // 2)  # the rare group gets its full half share
    assert torch.bincount(plain["mlm_task"], minlength=10)[8] < counts[8]
    assert torch.equal(strat["mlm_task"], strat["pos"].reshape(-1)[strat["masked_positions"]])


def test_seeded_masking_depends_on_the_batch_not_on_the_global_rng():
    """Training and validation masks are a function of (seed, the examples' indices in batch order): the same
    batch gets the same masks whatever the global RNG did (exact resume, DataLoader workers), while another
    batch of the same sentences (another epoch's shuffle) or another seed gets other masks."""
    ex = _examples(n=8)
    c = _collator(seed=5)
    torch.manual_seed(0)
    a = c(ex)
    torch.manual_seed(1)
    torch.rand(100)
    b = c(ex)
    assert torch.equal(a["masked_positions"], b["masked_positions"]) and torch.equal(
        a["input_ids"], b["input_ids"]
    )
    reordered = c([ex[1], ex[0], *ex[2:]])  # same sentences, other batch composition order
    other_seed = _collator(seed=6)(ex)
    width = a["input_ids"].shape[1]
    assert reordered["input_ids"].shape[1] == width
    ex0_here = a["masked_positions"][a["masked_positions"] < width]  # ex[0] is row 0 of a, row 1 of reordered
    m = reordered["masked_positions"]
    ex0_there = m[(m >= width) & (m < 2 * width)] - width
    assert not torch.equal(ex0_here, ex0_there)  # dynamic masking: its masks move with its batch
    assert not torch.equal(a["masked_positions"], other_seed["masked_positions"])
    with pytest.raises(ValueError, match="index"):
        c([{k: v for k, v in e.items() if k != "index"} for e in ex])


def test_bad_masking_probabilities():
    with pytest.raises(ConfigError, match="data.masking.mlm_probability"):
        _collator(mlm_probability=0.0)
    with pytest.raises(ConfigError, match="random_replace_prob"):
        _collator(mask_replace_prob=0.9, random_replace_prob=0.2)


def test_nsp_pairs_one_sentence_segments():
    docs = np.repeat(np.arange(50), 6)
    a0, a1, b0, b1, label = build_nsp_pairs(docs, seed=0)
    assert len(a0) == 50 * 5
    assert (a1 == a0 + 1).all() and (b1 == b0 + 1).all()
    assert (docs[a0] == docs[b0])[label == 0].all() and (b0 == a1)[label == 0].all()
    assert (docs[a0] != docs[b0])[label == 1].all()
    assert 0.4 < label.mean() < 0.6


def test_nsp_segments_pack_consecutive_sentences_up_to_the_budget():
    docs = np.repeat(np.arange(40), 10)
    lengths = np.tile([4, 6, 5, 3, 7, 4, 4, 6, 5, 3], 40)
    a0, a1, b0, b1, label = build_nsp_pairs(docs, seed=1, lengths=lengths, segment_tokens=12)
    seg = lambda s, e: lengths[s:e].sum()  # noqa: E731
    for i in range(len(a0)):
        assert a1[i] > a0[i] and b1[i] > b0[i]
        assert len(set(docs[a0[i] : a1[i]])) == 1 and len(set(docs[b0[i] : b1[i]])) == 1
        # a segment of several sentences stays within the budget
        assert a1[i] - a0[i] == 1 or seg(a0[i], a1[i]) <= 12
        assert b1[i] - b0[i] == 1 or seg(b0[i], b1[i]) <= 12
        if label[i] == 0:  # the true continuation: B follows A in its document
            assert b0[i] == a1[i] and docs[b0[i]] == docs[a0[i]]
        else:
            assert docs[b0[i]] != docs[a0[i]]
    assert (a1 - a0).max() >= 2  # sentences were packed
    # every pair of a document starts where the previous A ended
    d0 = np.flatnonzero(docs[a0] == 0)
    assert a0[d0[0]] == 0 and (a0[d0[1:]] == a1[d0[:-1]]).all()
    assert 0.35 < label.mean() < 0.65


def test_nsp_random_b_sentences_gives_random_b_the_true_b_sentence_count():
    """Documents of 3-8 sentences, segments up to 30 word-pieces: a random B filled to the budget is longer than a
    true B (the rest of its document), a cue unrelated to context; with random_b=sentences each random B has exactly
    as many whole sentences as its pair's true B, from one other document, and the As are unchanged."""
    rng = np.random.default_rng(0)
    docs = np.repeat(np.arange(300), rng.integers(3, 9, 300))
    lengths = rng.integers(6, 14, len(docs))
    plain = build_nsp_pairs(docs, seed=2, lengths=lengths, segment_tokens=30)
    matched = build_nsp_pairs(docs, seed=2, lengths=lengths, segment_tokens=30, random_b="sentences")
    np.testing.assert_array_equal(plain[0], matched[0])
    np.testing.assert_array_equal(plain[1], matched[1])
    a0, a1, b0, b1, label = matched
    ends = np.r_[np.flatnonzero(docs[1:] != docs[:-1]) + 1, len(docs)]
    for i in np.flatnonzero(label == 1):
        j, e = a1[i], ends[np.searchsorted(ends, a1[i], side="right")]
        true_end = j + 1
        while true_end < e and lengths[j : true_end + 1].sum() <= 30:
            true_end += 1
        assert (
            b1[i] - b0[i] == true_end - j
            and len(set(docs[b0[i] : b1[i]])) == 1
            and docs[b0[i]] != docs[a0[i]]
        )

    def mean_b(pairs, lab):
        return np.mean([lengths[s:e].sum() for s, e, y in zip(pairs[2], pairs[3], pairs[4]) if y == lab])

    assert mean_b(plain, 1) > mean_b(plain, 0) + 3  # the cue
    assert abs(mean_b(matched, 1) - mean_b(matched, 0)) < 1.5  # gone


def test_nsp_random_b_segment_draws_another_documents_true_b():
    """random_b=segment: segments packed blind (sentences added while the segment has < 15 of the 30 word-pieces),
    pairs with a segment cut short by the document end dropped; a true B follows its A; a random B is exactly the
    true B of a pair of another document. So random and true Bs have the same lengths and sentence counts, and
    B's length does not follow A's in either: only the document tells them apart. Deterministic in the seed."""
    rng = np.random.default_rng(0)
    docs = np.repeat(np.arange(2000), rng.integers(3, 9, 2000))
    lengths = rng.integers(6, 14, len(docs))
    kw = dict(seed=2, lengths=lengths, segment_tokens=30, random_b="segment")
    a0, a1, b0, b1, label = pairs = build_nsp_pairs(docs, **kw)
    walk = build_nsp_pairs(docs, **{**kw, "random_prob": 0.0})  # every pair with its true B
    np.testing.assert_array_equal(walk[0], a0)
    np.testing.assert_array_equal(walk[1], a1)
    cum = np.concatenate([[0], np.cumsum(lengths)])
    for s, e in [*zip(walk[0], walk[1]), *zip(walk[2], walk[3])]:
        assert cum[e] - cum[s] >= 15 and cum[e - 1] - cum[s] < 15  # reached half, stopped right there
    slot_bs = set(zip(walk[2].tolist(), walk[3].tolist()))
    for i in range(len(a0)):
        if label[i] == 0:
            assert (b0[i], b1[i]) == (walk[2][i], walk[3][i]) and b0[i] == a1[i]
        else:
            assert (b0[i], b1[i]) in slot_bs and docs[b0[i]] != docs[a0[i]]
    assert 0.45 < label.mean() < 0.55
    len_a, len_b = cum[a1] - cum[a0], cum[b1] - cum[b0]
    true, rand = label == 0, label == 1
    assert abs(len_b[rand].mean() - len_b[true].mean()) < 0.5
    assert abs((b1 - b0)[rand].mean() - (b1 - b0)[true].mean()) < 0.05
    for sel in (true, rand):
        assert abs(np.corrcoef(len_a[sel], len_b[sel])[0, 1]) < 0.06  # no joint length cue either
    for x, y in zip(pairs, build_nsp_pairs(docs, **kw)):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError, match="random_b"):
        build_nsp_pairs(docs, **{**kw, "random_b": "shuffle"})


@pytest.fixture
def smoke_dm(tmp_path):
    dm = PosBertDataModule(
        cache_dir=str(tmp_path), **smoke_values("data", "pos_corpus"), seed=1, max_length=32
    )
    dm.setup()
    return dm


def test_wordpieces_carry_their_words_group(smoke_dm):
    tok = smoke_dm.tokenizer
    words = ["The", "bellatroon", "sang", "."]
    groups = [3, 1, 0, 9]
    out = pt.tag_and_tokenize({"words": [words], "groups": [groups]}, tok)
    ids, pos = out["input_ids"][0], out["pos"][0]
    enc = tok([words], is_split_into_words=True, add_special_tokens=False)
    wid = enc.word_ids(0)
    assert len(ids) > 4  # the made-up word is split into several pieces
    assert pos == [groups[w] for w in wid]


def test_datamodule_batch_and_cache_reuse(tmp_path, smoke_dm, monkeypatch):
    assert smoke_dm.cache_hits == {"tokenizer": False, "tagged": False}
    batch = next(iter(smoke_dm.train_dataloader()))
    assert batch["input_ids"].shape[1] <= 32
    assert (batch["input_ids"][:, 0] == smoke_dm.tokenizer.cls_token_id).all()
    assert torch.equal(batch["mlm_task"], batch["pos"].reshape(-1)[batch["masked_positions"]])

    def boom(*a, **k):
        raise AssertionError("re-trained or re-tagged although cached")

    monkeypatch.setattr(pb, "train_wordpiece", boom)
    monkeypatch.setattr(pb, "generate_corpus", boom)
    dm2 = PosBertDataModule(
        cache_dir=str(tmp_path), **smoke_values("data", "pos_corpus"), seed=1, max_length=32
    )
    dm2.setup()
    assert dm2.cache_hits == {"tokenizer": True, "tagged": True}
    assert len(dm2.tagged) == len(smoke_dm.tagged)
    # another seed is another corpus: a new cache entry
    monkeypatch.undo()
    dm3 = PosBertDataModule(
        cache_dir=str(tmp_path), **smoke_values("data", "pos_corpus"), seed=2, max_length=32
    )
    dm3.setup()
    assert dm3.cache_hits == {"tokenizer": False, "tagged": False}


def test_interrupted_cache_write_leaves_no_cache(tmp_path, monkeypatch):
    import datasets

    def interrupted(self, path, **kw):
        (__import__("pathlib").Path(path) / "partial").mkdir(parents=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(datasets.Dataset, "save_to_disk", interrupted)
    dm = PosBertDataModule(cache_dir=str(tmp_path), **smoke_values("data", "pos_corpus"))
    with pytest.raises(KeyboardInterrupt):
        dm.setup()
    assert not list((tmp_path / "pos_bert").glob("tagged-*"))
    assert not list((tmp_path / "pos_bert").glob(".tagged-*"))
    monkeypatch.undo()
    dm = PosBertDataModule(cache_dir=str(tmp_path), **smoke_values("data", "pos_corpus"))
    dm.setup()
    assert dm.cache_hits["tagged"] is False and len(dm.tagged) > 0


def test_unknown_tokenizer_names_the_key(tmp_path):
    dm = PosBertDataModule(
        cache_dir=str(tmp_path),
        **smoke_values("data", "pos_corpus", tokenizer={"name": str(tmp_path / "no_such_tokenizer")}),
    )
    with pytest.raises(ConfigError) as e:
        dm.setup()
    msg = str(e.value)
    assert msg.startswith("data.tokenizer.name=") and "no_such_tokenizer" in msg and msg.count(". ") == 0


def test_empty_corpus(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match=r"data.corpus.text_file: .*empty.txt contains no sentence"):
        PosBertDataModule(cache_dir=str(tmp_path), corpus={"text_file": str(empty)}).setup()
    with pytest.raises(DataError, match="does not exist"):
        PosBertDataModule(
            cache_dir=str(tmp_path), corpus={"text_file": str(tmp_path / "missing.txt")}
        ).setup()
    with pytest.raises(DataError, match="data.corpus.n_docs=0"):
        PosBertDataModule(cache_dir=str(tmp_path), corpus={"n_docs": 0})


def test_a_corpus_with_fewer_than_two_training_pairs_stops(tmp_path):
    # 2 documents of 2 sentences: 2 NSP pairs, one of which validation takes (it used to train on the other and
    # validate on that same pair when there was one)
    corpus = {"n_docs": 2, "min_sentences": 2, "max_sentences": 2}
    kw = dict(cache_dir=str(tmp_path), corpus=corpus, max_length=32)
    with pytest.raises(DataError) as err:
        PosBertDataModule(**kw).setup()
    assert str(err.value) == (
        "the generated corpus (data.corpus.n_docs=2): the corpus yields 2 NSP pair(s) (4 sentences in 2 document(s)), "
        "1 of them for validation (data.nsp.val_fraction=0.05); pre-training needs at least 2 training pairs and 1 "
        "validation pair: give it more text."
    )
    dm = PosBertDataModule(**{**kw, "corpus": {**corpus, "n_docs": 3}})
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set)) == (2, 1)
    train = {(dm.train_set.a0[i], dm.train_set.b0[i]) for i in range(2)}
    assert (dm.val_set.a0[0], dm.val_set.b0[0]) not in train


def test_real_text_documents_and_sentences(tmp_path):
    lines = [
        " = Valkyria = ",
        "",
        "It was released in 2011. It sold well! Critics liked it.",
        " = = Plot = = ",
        "A man ran.",
    ]
    texts, docs = split_documents(lines, "x")
    assert texts == ["It was released in 2011.", "It sold well!", "Critics liked it.", "A man ran."]
    assert docs == [0, 0, 0, 1]
    with pytest.raises(
        DataError, match=r"^data.corpus.hf_dataset='no-such/dataset-xyz' .* could not be loaded"
    ):
        PosBertDataModule(cache_dir=str(tmp_path), corpus={"hf_dataset": "no-such/dataset-xyz"}).setup()


TEXT = """The old man walked to the market.
He bought some fresh bread and a red apple.

She quickly opened the heavy door.
They were happy because the sun was bright.

A small dog barked at the tall stranger.
The stranger smiled and walked away slowly.
"""  # 3 documents: 3 NSP pairs, 2 to train on and 1 to validate


def test_text_file_is_nltk_tagged_and_missing_group_warns(tmp_path, nltk_data):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    dm = PosBertDataModule(
        cache_dir=str(tmp_path / "c"),
        corpus={"text_file": str(path)},
        tokenizer={"vocab_size": 200},
        loader={"batch_size": 2},
    )
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        dm.setup()
    msgs = [str(x.message) for x in w if "no token of POS group" in str(x.message)]
    assert len(msgs) == 1 and "interjection" in msgs[0] and "corpus.txt" in msgs[0]
    first = dm.tagged[0]
    tok = dm.tokenizer
    names = [ALL_GROUPS[g] for g in first["pos"]]
    pieces = tok.convert_ids_to_tokens(first["input_ids"])
    tagged = dict(zip(pieces, names))
    assert tagged["the"] == "determiner" and tagged["man"] == "noun" and tagged["walked"] == "verb"
    assert tagged["to"] == "preposition" and tagged["old"] == "adjective" and tagged["."] == "other"
    assert dm.group_counts["conjunction"] >= 1 and dm.group_counts["interjection"] == 0
    batch = next(iter(dm.train_dataloader()))  # still trains the other groups
    assert batch["input_ids"].shape[0] == len(dm.train_set) >= 1


def test_missing_nltk_tagger_is_downloaded_once_or_named_offline(tmp_path, monkeypatch, caplog):
    import nltk

    monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "nltk_data")])
    monkeypatch.setattr(pt, "_nltk_download_tried", False)
    calls = []

    def offline(resource, **kwargs):  # what nltk.download does without a network: False, nothing installed
        calls.append((resource, kwargs.get("quiet")))
        return False

    monkeypatch.setattr(nltk, "download", offline)
    with caplog.at_level(logging.INFO, logger="data.pos_tagging"), pytest.raises(DataError) as e:
        pt.require_nltk_tagger()
    assert str(e.value) == (
        "NLTK resource 'taggers/averaged_perceptron_tagger_eng' is missing: install it with `python -m "
        "nltk.downloader averaged_perceptron_tagger_eng` or set NLTK_DATA to a folder that contains it."
    )
    assert calls == [("averaged_perceptron_tagger_eng", True)]  # quietly
    assert [r.getMessage() for r in caplog.records] == [
        "NLTK resource averaged_perceptron_tagger_eng is missing: downloading it once with nltk.download ..."
    ]
    with pytest.raises(DataError, match="python -m nltk.downloader"):
        pt.require_nltk_tagger()
    assert len(calls) == 1  # once per process, not at every call

    def online(resource, **kwargs):  # installs the resource where NLTK looks
        calls.append((resource, kwargs.get("quiet")))
        (tmp_path / "nltk_data" / "taggers" / resource).mkdir(parents=True)
        return True

    monkeypatch.setattr(nltk, "download", online)
    monkeypatch.setattr(pt, "_nltk_download_tried", False)
    pt.require_nltk_tagger()
    assert (
        len(calls) == 2 and (tmp_path / "nltk_data" / "taggers" / "averaged_perceptron_tagger_eng").is_dir()
    )
    pt.require_nltk_tagger()  # found: no further download
    assert len(calls) == 2


def test_each_cache_logs_one_line_built_then_hit_with_its_path(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="data.pos_bert")

    def cache_lines():
        lines = [r.getMessage() for r in caplog.records if " cache " in r.getMessage()]
        caplog.clear()
        return lines

    PosBertDataModule(
        cache_dir=str(tmp_path), **smoke_values("data", "pos_corpus"), seed=3, max_length=32
    ).setup()
    built = cache_lines()
    assert [m.split(":")[0] for m in built] == ["tokenizer cache built", "tagged corpus cache built"]
    paths = [m.split(": ", 1)[1].split(" (")[0] for m in built]
    assert "tokenizer-" in paths[0] and "tagged-" in paths[1] and all(str(tmp_path) in p for p in paths)
    PosBertDataModule(
        cache_dir=str(tmp_path), **smoke_values("data", "pos_corpus"), seed=3, max_length=32
    ).setup()
    assert cache_lines() == [f"tokenizer cache hit: {paths[0]}", f"tagged corpus cache hit: {paths[1]}"]
