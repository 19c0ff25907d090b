"""The embedded corpus rewards context: what PoS-BERT's targets (README, issue 13) rest on, at smoke scale.

A tiny encoder does not learn the corpus in seconds (300 steps of a width-64 model stay at the unigram plateau),
so the smoke-scale test checks the mechanism in the data itself with count-based predictors, on held-out
documents of the default corpus (conf/data/pos_corpus.yaml): each group's masked words are predictable from the
context far better than from corpus-wide frequencies (the context-free reference of ``upstream_eval``), and the
topic words of two segments tell a true next segment from a random one. The full-scale numbers of a trained
model are in the README.
"""

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from data.pos_grammar import GROUPS, TOPIC_NOUNS, TOPIC_VERBS, generate_corpus, plural, third_person
from data.pos_masking import build_nsp_pairs

CONF = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "data" / "pos_corpus.yaml").corpus
GRAMMAR = dict(topic_bias=CONF.topic_bias, present_prob=CONF.present_prob, zipf_s=CONF.zipf_s)
SIZES = dict(min_sentences=CONF.min_sentences, max_sentences=CONF.max_sentences)


def _words(docs):
    """(topic, left word, word, right word, group) of every word, sentence boundaries as <s> and </s>."""
    for topic, sentences in docs:
        for s in sentences:
            ws = ["<s>", *(w.lower() for w in s.words), "</s>"]
            for i, g in enumerate(s.groups, start=1):
                yield topic, ws[i - 1], ws[i], ws[i + 1], g


@pytest.fixture(scope="module")
def gains():
    """Per group: mean log-loss of the unigram reference minus that of P(word | context), context = the word's
    group (the slot the syntax opens), the document's topic, or the right neighbour (Dirichlet-smoothed toward
    the unigram), on 100 held-out documents after counting 300."""
    train = generate_corpus(300, seed=0, **SIZES, **GRAMMAR)
    test = generate_corpus(100, seed=1, **SIZES, **GRAMMAR)
    unigram, pairs, totals = Counter(), Counter(), Counter()
    for topic, _, w, right, g in _words(train):
        unigram[w] += 1
        for kind, c in (("group", g), ("topic", topic), ("right", right)):
            pairs[kind, c, w] += 1
            totals[kind, c] += 1
    n, v = sum(unigram.values()), len(unigram)

    def p_unigram(w):
        return (unigram[w] + 1) / (n + v)

    out, count = {g: Counter() for g in GROUPS}, Counter()
    for topic, _, w, right, g in _words(test):
        if g not in GROUPS:
            continue
        count[g] += 1
        ref = -math.log(p_unigram(w))
        for kind, c in (("group", g), ("topic", topic), ("right", right)):
            p = (pairs[kind, c, w] + 5.0 * p_unigram(w)) / (totals[kind, c] + 5.0)
            out[g][kind] += ref + math.log(p)
    return {g: {k: s / count[g] for k, s in out[g].items()} for g in GROUPS}


def test_every_group_is_predictable_from_its_slot(gains):
    # the target for a trained model is a context gain >= 0.5 nats per group; the slot alone allows it
    assert min(gains[g]["group"] for g in GROUPS) >= 0.5


def test_topic_predicts_nouns_and_the_next_word_predicts_determiners(gains):
    assert gains["noun"]["topic"] >= 0.5  # topic_bias: a document's nouns come from its topic
    assert gains["determiner"]["right"] >= 0.5  # a/an before a vowel, this/these before a plural
    assert gains["adjective"]["topic"] < 0.1  # adjectives carry no topic: the test can tell the two apart


def test_topic_words_tell_the_next_segment_from_a_random_one():
    docs = generate_corpus(300, seed=2, **SIZES, **GRAMMAR)
    sentences = [s for _, d in docs for s in d]
    doc_of = np.repeat(np.arange(len(docs)), [len(d) for _, d in docs])
    lengths = np.array([len(s.words) for s in sentences])
    a0, a1, b0, b1, label = build_nsp_pairs(doc_of, seed=0, lengths=lengths, segment_tokens=30)
    lexicon = {}
    for t in TOPIC_NOUNS:
        lexicon.update({w: t for n in TOPIC_NOUNS[t] for w in (n, plural(n))})
        lexicon.update({w: t for b, p in TOPIC_VERBS[t] for w in (b, p, third_person(b))})

    def topic(start, end):
        votes = Counter(
            lexicon[w.lower()] for s in sentences[start:end] for w in s.words if w.lower() in lexicon
        )
        return votes.most_common(1)[0][0] if votes else None

    guess = [int(topic(i, j) != topic(k, m)) for i, j, k, m in zip(a0, a1, b0, b1)]
    accuracy = float(np.mean(np.array(guess) == label))
    assert len(label) > 500 and 0.3 < label.mean() < 0.7
    assert accuracy >= 0.85  # the NSP target is reachable from the topic words alone
