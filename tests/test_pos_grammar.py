"""The embedded English-like grammar: coverage, determinism, frequencies, topics, and a real tagger's view."""

from collections import Counter

import pytest

from data.pos_grammar import (
    ALL_GROUPS,
    GROUP_ID,
    GROUPS,
    PRODUCTIONS,
    TOPIC_NOUNS,
    generate_corpus,
    lexicon_words,
    plural,
)
from data.pos_tagging import penn_to_group


@pytest.fixture(scope="module")
def corpus():
    return generate_corpus(150, seed=3)


def test_lexicon_and_productions_are_large_enough():
    assert len(lexicon_words()) >= 1000
    assert sum(len(v) for v in PRODUCTIONS.values()) >= 20
    assert {"SUB", "CC", "PP", "INTJ"} <= {s for opts in PRODUCTIONS.values() for _, rhs in opts for s in rhs}


def test_every_group_occurs_with_gold_tags(corpus):
    counts = Counter(g for _, doc in corpus for s in doc for g in s.groups)
    assert set(counts) == set(ALL_GROUPS)
    for g in GROUPS:
        assert counts[g] > 20, g
    # rare groups stay rare, as in real text
    assert counts["interjection"] < counts["noun"] / 5
    assert counts["conjunction"] < counts["verb"] / 5


def test_words_and_groups_aligned_and_sentences_well_formed(corpus):
    for _, doc in corpus:
        for s in doc:
            assert len(s.words) == len(s.groups)
            assert s.words[-1] in {".", "!"} and s.groups[-1] == "other"
            assert s.words[0][0].isupper()
            for i in range(len(s.words) - 1):  # a/an agreement
                if s.words[i].lower() == "a":
                    assert s.words[i + 1][0].lower() not in "aeiou"


def test_deterministic_by_seed():
    a = generate_corpus(5, seed=11)
    b = generate_corpus(5, seed=11)
    c = generate_corpus(5, seed=12)
    assert a == b
    assert a != c


def test_zipfian_frequencies(corpus):
    dets = Counter(
        w.lower() for _, doc in corpus for s in doc for w, g in zip(s.words, s.groups) if g == "determiner"
    )
    ranked = [c for _, c in dets.most_common()]
    assert ranked[0] > 3 * ranked[len(ranked) // 2]


def test_topic_biases_nouns(corpus):
    on_topic = total = 0
    forms = {t: set(ns) | {plural(n) for n in ns} for t, ns in TOPIC_NOUNS.items()}
    for topic, doc in corpus:
        for s in doc:
            for w, g in zip(s.words, s.groups):
                if g == "noun" and w[0].islower():
                    total += 1
                    on_topic += w in forms[topic]
    assert on_topic / total > 0.5  # topic_bias 0.75 minus general nouns (names excluded)


def test_penn_mapping():
    tags = [
        "UH",
        "PRP",
        "MD",
        "VB",
        "TO",
        "VB",
        "TO",
        "DT",
        "NN",
        "WDT",
        "PRP$",
        "CD",
        "CC",
        "RB",
        "WRB",
        "EX",
        "JJ",
        ".",
    ]
    names = [ALL_GROUPS[i] for i in penn_to_group(tags)]
    assert names == [
        "interjection", "pronoun", "verb", "verb", "other", "verb", "preposition", "determiner", "noun",
        "determiner", "pronoun", "other", "conjunction", "adverb", "adverb", "determiner", "adjective", "other",
    ]  # fmt: skip
    assert GROUP_ID["other"] == 9


def test_nltk_agrees_with_gold_tags(nltk_data, corpus):
    import nltk

    sents = [s for _, doc in corpus for s in doc][:600]
    tagged = nltk.pos_tag_sents([list(s.words) for s in sents])
    agree = total = 0
    for s, t in zip(sents, tagged):
        pred = penn_to_group([tag for _, tag in t])
        gold = [GROUP_ID[g] for g in s.groups]
        agree += sum(p == g for p, g in zip(pred, gold))
        total += len(gold)
    assert agree / total >= 0.90, agree / total


def test_present_tense_documents_agree_with_their_subjects():
    from data.pos_grammar import third_person, verb_bases

    docs = generate_corpus(120, seed=5, present_prob=0.5)
    bases = verb_bases()
    present = past = 0
    for _, sents in docs:
        words = [w.lower() for s in sents for w in s.words]
        is_present = bool({"is", "are", "does"} & set(words))
        is_past = bool({"was", "were", "did"} & set(words))
        assert not (is_present and is_past)  # one tense per document
        present += is_present
        past += is_past
        if not is_present:
            continue
        for s in sents:
            w, g = [x.lower() for x in s.words], s.groups
            for i in range(len(w) - 1):  # a pronoun subject followed by its verb
                if (
                    w[i] in ("he", "she")
                    and g[i + 1] == "verb"
                    and w[i + 1] in {third_person(b) for b in bases}
                ):
                    assert w[i + 1] not in bases
                if w[i] in ("they", "we") and g[i + 1] == "verb" and w[i + 1] not in ("are", "could", "would",
                                                                                    "should", "might", "will",
                                                                                    "can", "must"):  # fmt: skip
                    assert w[i + 1] in bases, (w[i], w[i + 1])
            assert "i" not in w or w.index("i") > 0 or g[0] != "pronoun"  # no "I" subject: it would not agree
    assert 40 < present < 80 and 40 < past < 80
    assert generate_corpus(30, seed=5) == generate_corpus(
        30, seed=5, present_prob=0.0
    )  # the past-only corpus


def test_doc_nouns_gives_each_document_a_cast_of_nouns():
    forms = {t: {w: n for n in ns for w in (n, plural(n))} for t, ns in TOPIC_NOUNS.items()}

    def casts(docs):
        return [
            {
                forms[topic][w]
                for s in doc
                for w, g in zip(s.words, s.groups)
                if g == "noun" and w in forms[topic]
            }
            for topic, doc in docs
        ]

    with_cast = casts(generate_corpus(80, seed=3, doc_nouns=3))
    assert all(len(c) <= 3 for c in with_cast)
    assert sum(len(c) == 3 for c in with_cast) > 20  # the cast is used, not one noun per document
    assert max(len(c) for c in casts(generate_corpus(80, seed=3))) > 5  # without it: the whole topic list
    # documents of one topic have different casts
    by_topic = {}
    for (topic, _), c in zip(generate_corpus(80, seed=3, doc_nouns=3), with_cast):
        by_topic.setdefault(topic, set()).add(frozenset(c))
    assert max(len(v) for v in by_topic.values()) > 2
    assert generate_corpus(30, seed=5) == generate_corpus(30, seed=5, doc_nouns=0)


def test_trained_tokenizer_is_the_same_every_time_and_keeps_only_the_pieces_the_corpus_uses():
    """tokenizers' WordPiece trainer breaks ties by hash-map order (huggingface/tokenizers#1794): the kept
    vocabulary is canonical, and the corpus encodes to the same pieces as with the trainer's own vocabulary."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    from data.pos_tagging import SPECIAL_TOKENS, train_wordpiece

    texts = [" ".join(s.words) for _, doc in generate_corpus(300, seed=0, present_prob=0.5) for s in doc]
    toks = [train_wordpiece(texts, 4096) for _ in range(3)]
    vocab = toks[0].get_vocab()
    assert toks[1].get_vocab() == vocab and toks[2].get_vocab() == vocab
    assert [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])][:5] == SPECIAL_TOKENS
    used = {i for ids in toks[0](texts, add_special_tokens=False)["input_ids"] for i in ids}
    merged = [
        t
        for t in vocab
        if len(t) > 1 and not (t.startswith("##") and len(t) == 3) and t not in SPECIAL_TOKENS
    ]
    assert len(merged) > 500 and all(vocab[t] in used for t in merged)
    raw = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    raw.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    raw.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    raw.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=4096, special_tokens=SPECIAL_TOKENS))
    assert raw.get_vocab_size() > len(vocab)  # the trainer's own vocabulary has pieces no word uses
    for text in texts[:200]:
        assert toks[0].tokenize(text) == raw.encode(text, add_special_tokens=False).tokens
