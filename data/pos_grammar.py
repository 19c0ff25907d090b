"""An English-like corpus from a probabilistic grammar, with gold part-of-speech groups.

The embedded default of the PoS-BERT experiment (paper section 4.1) cannot download a text corpus, so it
generates one: documents of sentences drawn from the context-free productions in ``PRODUCTIONS`` over a
lexicon of real English words (``LEXICON``, > 1,000 words). Every terminal category carries its POS group,
so the gold tag of every word is known by construction (tests check that NLTK's tagger agrees).

- Word frequencies are Zipfian within each category (weight ``1 / rank ** zipf_s``).
- Each document has a topic; its nouns and verbs come from that topic's list with probability
  ``topic_bias``, which makes next-sentence prediction learnable.
- Each document has a tense: past, or (with probability ``present_prob``) present, where every finite verb
  agrees with its subject in number (``she chases``, ``they chase``, ``is``/``are``, ``does``). Tense is a
  second document-level signal for next-sentence prediction, and agreement a local one for masked verbs.
- Groups follow the Penn-tag mapping of ``data.pos_tagging.penn_to_group``: subordinators such as
  ``because`` are prepositions (Penn ``IN``), ``when`` is an adverb (``WRB``), possessives are pronouns
  (``PRP$``), existential ``there`` and relative ``which`` are determiners (``EX``/``WDT``), infinitival
  ``to``, numbers and punctuation are ``other``.

Everything is deterministic given the seed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

from data.pos_words import (
    CONJUNCTIONS,
    COPULA,
    DEGREE_ADVERBS,
    DETERMINERS_PL,
    DETERMINERS_SG,
    FREQUENCY_ADVERBS,
    GENERAL_NOUNS,
    GENERAL_VERBS,
    INTERJECTIONS,
    INTRANSITIVE_VERBS,
    IRREGULAR_PLURALS,
    MANNER_ADVERBS,
    MODALS,
    NAMES,
    NEGATION_ADVERBS,
    NEGATIVE_ADJECTIVES,
    NEUTRAL_ADJECTIVES,
    NUMBERS,
    OBJECT_PRONOUNS,
    POSITIVE_ADJECTIVES,
    POSSESSIVES,
    PREPOSITIONS,
    SUBJECT_PRONOUNS_PL,
    SUBJECT_PRONOUNS_SG,
    SUBORDINATORS,
    TOPICS,
)

GROUPS: tuple[str, ...] = (
    "verb",
    "noun",
    "adjective",
    "determiner",
    "adverb",
    "pronoun",
    "preposition",
    "conjunction",
    "interjection",
)
OTHER = "other"
ALL_GROUPS: tuple[str, ...] = (*GROUPS, OTHER)
GROUP_ID = {g: i for i, g in enumerate(ALL_GROUPS)}


def _verbs(spec: str) -> list[tuple[str, str]]:
    out = []
    for item in spec.split():
        base, _, past = item.partition("/")
        out.append((base, past or base + "ed"))
    return out


def third_person(base: str) -> str:
    """The present-tense third-person singular of a verb's base form (``catch`` -> ``catches``)."""
    if base.endswith(("s", "sh", "ch", "x", "z", "o")):
        return base + "es"
    if base.endswith("y") and base[-2] not in "aeiou":
        return base[:-1] + "ies"
    return base + "s"


def plural(noun: str) -> str:
    if noun in IRREGULAR_PLURALS:
        return IRREGULAR_PLURALS[noun]
    if noun.endswith(("s", "sh", "ch", "x", "z")):
        return noun + "es"
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    if noun.endswith("f"):
        return noun[:-1] + "ves"
    return noun + "s"


def verb_bases() -> set[str]:
    """Base forms of every verb of the lexicon."""
    out = {b for b, _ in TRANSITIVE + INTRANSITIVE + CONTROL_VERBS}
    for verbs in TOPIC_VERBS.values():
        out.update(b for b, _ in verbs)
    return out


def _dedup(words: list[str]) -> list[str]:
    return list(dict.fromkeys(words))


# Terminal category -> (POS group, word list). Filled below; topic categories are resolved per document.
LEXICON: dict[str, tuple[str, list[str]]] = {
    "N_GEN": ("noun", _dedup(GENERAL_NOUNS.split())),
    "NAME": ("noun", NAMES.split()),
    "ADJ": (
        "adjective",
        _dedup(NEUTRAL_ADJECTIVES.split() + POSITIVE_ADJECTIVES.split() + NEGATIVE_ADJECTIVES.split()),
    ),
    "ADJ_POS": ("adjective", POSITIVE_ADJECTIVES.split()),
    "ADJ_NEG": ("adjective", NEGATIVE_ADJECTIVES.split()),
    "ADV": ("adverb", MANNER_ADVERBS.split()),
    "DEG": ("adverb", DEGREE_ADVERBS.split()),
    "FREQ": ("adverb", FREQUENCY_ADVERBS.split()),
    "NOT": ("adverb", ["not"]),
    "NEG": ("adverb", NEGATION_ADVERBS.split()),
    "WHEN": ("adverb", ["when"]),
    "DET_SG": ("determiner", DETERMINERS_SG.split()),
    "DET_PL": ("determiner", DETERMINERS_PL.split()),
    "EX": ("determiner", ["there"]),
    "WDT": ("determiner", ["which"]),
    "PRON_SG": ("pronoun", SUBJECT_PRONOUNS_SG.split()),
    "PRON_PL": ("pronoun", SUBJECT_PRONOUNS_PL.split()),
    "PRON_OBJ": ("pronoun", OBJECT_PRONOUNS.split()),
    "POSS": ("pronoun", POSSESSIVES.split()),
    "P": ("preposition", PREPOSITIONS.split()),
    "SUB": ("preposition", SUBORDINATORS.split()),
    "CC": ("conjunction", CONJUNCTIONS.split()),
    "INTJ": ("interjection", INTERJECTIONS.split()),
    "MD": ("verb", MODALS.split()),
    "DID": ("verb", ["did"]),
    "COP_SG": ("verb", [COPULA["sg"]]),
    "COP_PL": ("verb", [COPULA["pl"]]),
    "NUM": (OTHER, NUMBERS.split()),
    "TO": (OTHER, ["to"]),
    ",": (OTHER, [","]),
    ".": (OTHER, ["."]),
    "!": (OTHER, ["!"]),
}
TRANSITIVE = _verbs(GENERAL_VERBS)
INTRANSITIVE = _verbs(INTRANSITIVE_VERBS)
TOPIC_NOUNS = {t: _dedup(v["nouns"].split()) for t, v in TOPICS.items()}
TOPIC_VERBS = {t: _verbs(v["verbs"]) for t, v in TOPICS.items()}
# Verbs that take an infinitive complement ("wanted to see the dog").
CONTROL_VERBS = [
    ("want", "wanted"),
    ("try", "tried"),
    ("hope", "hoped"),
    ("decide", "decided"),
    ("plan", "planned"),
]

# Topic-dependent categories: N (singular noun), N_PL, V_PAST (transitive past), V_BASE (transitive base).
TOPIC_CATEGORIES = {"N": "noun", "N_PL": "noun", "V_PAST": "verb", "V_BASE": "verb"}
INTRANSITIVE_CATEGORIES = {"VI_PAST": "verb", "VI_BASE": "verb", "VC_PAST": "verb"}

# ---------------------------------------------------------------------------------------------------------
# Productions: nonterminal -> [(weight, right-hand side)]. Upper-case names without a LEXICON entry are
# nonterminals. Number agreement is carried by the _SG / _PL variants.
# ---------------------------------------------------------------------------------------------------------
PRODUCTIONS: dict[str, list[tuple[float, list[str]]]] = {
    "S": [
        (0.34, ["CLAUSE", "."]),
        (0.12, ["CLAUSE", ",", "CC", "CLAUSE", "."]),
        (0.10, ["SUB", "CLAUSE", ",", "CLAUSE", "."]),
        (0.10, ["CLAUSE", "SUB", "CLAUSE", "."]),
        (0.05, ["WHEN", "CLAUSE", ",", "CLAUSE", "."]),
        (0.06, ["INTJ", ",", "CLAUSE", "."]),
        (0.02, ["INTJ", ",", "CLAUSE", "!"]),
        (0.06, ["EX", "COP_SG", "NP_SG", "PP", "."]),
        (0.03, ["EX", "COP_PL", "NP_PL", "PP", "."]),
        (0.05, ["PP", ",", "CLAUSE", "."]),
        (0.07, ["CLAUSE_ADV", "."]),
    ],
    "CLAUSE": [
        (0.30, ["SUBJ_SG", "VP"]),
        (0.15, ["SUBJ_PL", "VP"]),
        (0.12, ["SUBJ_SG", "COP_SG", "ADJP"]),
        (0.06, ["SUBJ_PL", "COP_PL", "ADJP"]),
        (0.06, ["SUBJ_SG", "COP_SG", "PP"]),
        (0.08, ["SUBJ_SG", "MD", "VP_BASE"]),
        (0.05, ["SUBJ_PL", "MD", "VP_BASE"]),
        (0.06, ["SUBJ_SG", "DID", "NOT", "VP_BASE"]),
        (0.04, ["SUBJ_SG", "COP_SG", "NEG", "ADJP"]),
        (0.04, ["SUBJ_PL", "COP_PL", "NEG", "ADJP"]),
        (0.04, ["SUBJ_SG", "FREQ", "VP"]),
    ],
    "CLAUSE_ADV": [(1.0, ["SUBJ_SG", "VI_PAST", "ADV"]), (0.5, ["SUBJ_PL", "VI_PAST", "ADV", "PP"])],
    "SUBJ_SG": [(0.55, ["NP_SG"]), (0.25, ["PRON_SG"]), (0.20, ["NAME"])],
    "SUBJ_PL": [(0.60, ["NP_PL"]), (0.40, ["PRON_PL"])],
    "NP_SG": [
        (0.50, ["DET_SG", "NOM"]),
        (0.15, ["POSS", "NOM"]),
        (0.10, ["DET_SG", "NOM", "PP"]),
        (0.05, ["DET_SG", "NOM", "WDT", "V_PAST", "OBJ"]),
    ],
    "NP_PL": [(0.55, ["DET_PL", "NOM_PL"]), (0.20, ["NUM", "NOM_PL"]), (0.15, ["POSS", "NOM_PL"])],
    "NOM": [(0.55, ["N"]), (0.30, ["ADJ", "N"]), (0.05, ["ADJ", "ADJ", "N"]), (0.10, ["N_GEN"])],
    "NOM_PL": [(0.65, ["N_PL"]), (0.35, ["ADJ", "N_PL"])],
    "OBJ": [(0.60, ["NP_SG"]), (0.20, ["NP_PL"]), (0.12, ["PRON_OBJ"]), (0.08, ["NAME"])],
    "VP": [
        (0.40, ["V_PAST", "OBJ"]),
        (0.15, ["V_PAST", "OBJ", "PP"]),
        (0.10, ["V_PAST", "OBJ", "ADV"]),
        (0.15, ["VI_PAST"]),
        (0.10, ["VI_PAST", "PP"]),
        (0.05, ["VC_PAST", "TO", "VP_BASE"]),
        (0.05, ["ADV", "V_PAST", "OBJ"]),
    ],
    "VP_BASE": [(0.65, ["V_BASE", "OBJ"]), (0.20, ["VI_BASE"]), (0.15, ["V_BASE", "OBJ", "PP"])],
    "ADJP": [(0.65, ["ADJ"]), (0.35, ["DEG", "ADJ"])],
    "PP": [(0.75, ["P", "NP_SG"]), (0.25, ["P", "NP_PL"])],
}

_VOWEL_SOUND = set("aeiou")


@dataclass(frozen=True)
class Sentence:
    """One generated sentence: words and the gold POS group of each word."""

    words: tuple[str, ...]
    groups: tuple[str, ...]

    @property
    def text(self) -> str:
        out = ""
        for w in self.words:
            out += w if (not out or w in {",", ".", "!"}) else " " + w
        return out


def _zipf_weights(n: int, s: float) -> list[float]:
    return [1.0 / (r + 1) ** s for r in range(n)]


class Grammar:
    """Sampler of sentences and documents from ``PRODUCTIONS`` and ``LEXICON``.

    Args:
        seed: random seed (the whole corpus is a function of it).
        zipf_s: exponent of the Zipfian word frequencies within each terminal category.
        topic_bias: probability that a noun or verb comes from the document's topic list.
        max_depth: recursion limit; deeper expansions take the first production of a nonterminal.
        present_prob: probability that a document is in the present tense (0: every document in the past,
            and the random stream of the corpus is that of a grammar without tenses).
        doc_nouns: size of each document's cast: its on-topic nouns come from ``doc_nouns`` nouns of its topic
            drawn (Zipf-weighted, distinct) when the document starts, so a document keeps mentioning the same
            things, as real text does (0: every on-topic noun is drawn from the whole topic list, and the
            random stream is that of a grammar without casts).
        category_scale: a heterogeneity dial on the corpus: ``{category: factor}`` multiplies the weight of
            every production whose right-hand side holds that terminal category (e.g. ``{"CC": 0.1}``: a tenth
            of the conjoined sentences, so the conjunction group, which the RTE-like task hinges on, gets a
            smaller share of the tokens). Empty: the grammar as written, and the same random stream.
            ``data.corpus.conjunction_share`` sets ``{"CC": conjunction_scale(share)}``.
    """

    def __init__(
        self,
        seed: int = 0,
        zipf_s: float = 1.0,
        topic_bias: float = 0.75,
        max_depth: int = 6,
        present_prob: float = 0.0,
        doc_nouns: int = 0,
        category_scale: dict[str, float] | None = None,
    ):
        if not 0.0 <= present_prob <= 1.0:
            raise ValueError(f"present_prob={present_prob} must be in [0, 1]")
        if int(doc_nouns) < 0:
            raise ValueError(f"doc_nouns={doc_nouns} must be >= 0")
        self.doc_nouns = int(doc_nouns)
        self.category_scale = {str(k): float(v) for k, v in (category_scale or {}).items()}
        unknown = sorted(
            set(self.category_scale) - set(LEXICON) - set(TOPIC_CATEGORIES) - set(INTRANSITIVE_CATEGORIES)
        )
        if unknown or any(not v >= 0 for v in self.category_scale.values()):
            raise ValueError(
                f"category_scale={category_scale}: keys must be terminal categories, factors >= 0"
            )
        self._cast: list[str] | None = None
        self.present_prob = float(present_prob)
        self.rng = random.Random(seed)
        self.zipf_s = zipf_s
        self.topic_bias = topic_bias
        self.max_depth = max_depth
        self.topics = list(TOPICS)
        self.tense = "past"
        self._weights: dict[int, list[float]] = {}

    # -- sampling helpers ---------------------------------------------------------------------------------
    def _pick(self, items: list):
        w = self._weights.get(len(items))
        if w is None:
            w = self._weights[len(items)] = _zipf_weights(len(items), self.zipf_s)
        return self.rng.choices(items, weights=w, k=1)[0]

    def word(
        self, category: str, topic: str | None = None, tense: str = "past", number: str = "sg"
    ) -> tuple[str, str]:
        """One ``(word, group)`` of a terminal category; in the present tense, finite verbs agree with
        ``number`` (``sg``/``pl``), the subject of their clause."""
        if tense == "present":
            form = self._present(category, topic, number)
            if form is not None:
                return form
        if category in LEXICON:
            group, words = LEXICON[category]
            return self._pick(words), group
        topic = topic or self.rng.choice(self.topics)
        on_topic = self.rng.random() < self.topic_bias
        if category in ("N", "N_PL"):
            nouns = (self._cast or TOPIC_NOUNS[topic]) if on_topic else LEXICON["N_GEN"][1]
            noun = self._pick(nouns)
            return (plural(noun) if category == "N_PL" else noun), "noun"
        if category in ("V_PAST", "V_BASE"):
            base, past = self._pick(TOPIC_VERBS[topic] if on_topic else TRANSITIVE)
            return (past if category == "V_PAST" else base), "verb"
        if category in ("VI_PAST", "VI_BASE"):
            base, past = self._pick(INTRANSITIVE)
            return (past if category == "VI_PAST" else base), "verb"
        if category == "VC_PAST":
            return self.rng.choice(CONTROL_VERBS)[1], "verb"
        raise KeyError(f"unknown grammar symbol {category!r}")

    def _present(self, category: str, topic: str | None, number: str) -> tuple[str, str] | None:
        if category in ("COP_SG", "COP_PL"):
            return ("is" if category == "COP_SG" else "are"), "verb"
        if category == "DID":
            return "does", "verb"
        if category == "PRON_SG":  # no "I": "I chases" would break the agreement
            return self._pick(["he", "she", "it"]), "pronoun"
        if category in ("V_PAST", "VI_PAST", "VC_PAST"):
            if category == "VC_PAST":
                word, group = self.rng.choice(CONTROL_VERBS)[0], "verb"
            else:
                word, group = self.word(category.replace("_PAST", "_BASE"), topic)
            return (third_person(word) if number == "sg" else word), group
        return None

    def expand(
        self, symbol: str, topic: str, depth: int = 0, tense: str = "past", number: str = "sg"
    ) -> list[tuple[str, str]]:
        if symbol not in PRODUCTIONS:
            return [self.word(symbol, topic, tense, number)]
        options = PRODUCTIONS[symbol]
        if depth >= self.max_depth:
            rhs = options[0][1]
        else:
            weights = [o[0] * self._scale(o[1]) for o in options]
            rhs = self.rng.choices([o[1] for o in options], weights=weights, k=1)[0]
        if "SUBJ_PL" in rhs or symbol == "NP_PL":  # the clause's (or the noun phrase's) number
            number = "pl"
        elif "SUBJ_SG" in rhs or symbol == "NP_SG":
            number = "sg"
        out: list[tuple[str, str]] = []
        for s in rhs:
            out.extend(self.expand(s, topic, depth + 1, tense, number))
        return out

    def _scale(self, rhs: list[str]) -> float:
        """The ``category_scale`` factor of a production: the product over the scaled categories it holds."""
        factor = 1.0
        for category, f in self.category_scale.items():
            if category in rhs:
                factor *= f
        return factor

    def sentence(self, topic: str | None = None, symbol: str = "S", tense: str = "past") -> Sentence:
        """A sentence (or any nonterminal's phrase) with articles fixed and the first word capitalised."""
        topic = topic or self.rng.choice(self.topics)
        pairs = self.expand(symbol, topic, tense=tense)
        return finish(pairs)

    def document(self, n_sentences: int, topic: str | None = None) -> tuple[str, list[Sentence]]:
        topic = topic or self.rng.choice(self.topics)
        tense = "present" if self.present_prob > 0 and self.rng.random() < self.present_prob else "past"
        self.tense = tense  # the last document's tense (document_labels reads it)
        self._cast = self._draw_cast(topic) if self.doc_nouns else None
        try:
            return topic, [self.sentence(topic, tense=tense) for _ in range(n_sentences)]
        finally:
            self._cast = None

    def _draw_cast(self, topic: str) -> list[str]:
        """``doc_nouns`` distinct nouns of ``topic``, Zipf-weighted, in the order drawn (the first most used)."""
        pool = list(TOPIC_NOUNS[topic])
        weights = _zipf_weights(len(pool), self.zipf_s)
        cast: list[str] = []
        while pool and len(cast) < self.doc_nouns:
            i = self.rng.choices(range(len(pool)), weights=weights, k=1)[0]
            cast.append(pool.pop(i))
            weights.pop(i)
        return cast

    def documents(
        self, n_docs: int, min_sentences: int = 4, max_sentences: int = 10
    ) -> Iterator[tuple[str, list[Sentence]]]:
        for _ in range(n_docs):
            yield self.document(self.rng.randint(min_sentences, max_sentences))


def finish(pairs: list[tuple[str, str]]) -> Sentence:
    """Fix ``a``/``an`` and capitalise the first word of a list of ``(word, group)`` pairs."""
    words = [w for w, _ in pairs]
    groups = [g for _, g in pairs]
    for i in range(len(words) - 1):
        if words[i].lower() in ("a", "an"):
            words[i] = "an" if words[i + 1][0].lower() in _VOWEL_SOUND else "a"
    if words and words[0] != "I":
        words[0] = words[0][0].upper() + words[0][1:]
    return Sentence(tuple(words), tuple(groups))


def lexicon_words() -> set[str]:
    """Every distinct word form the grammar can produce (lower-cased), for coverage checks."""
    out: set[str] = set()
    for _group, words in LEXICON.values():
        out.update(w.lower() for w in words)
    for nouns in [*TOPIC_NOUNS.values(), LEXICON["N_GEN"][1]]:
        for n in nouns:
            out.update((n, plural(n)))
    for verbs in [*TOPIC_VERBS.values(), TRANSITIVE, INTRANSITIVE, CONTROL_VERBS]:
        for base, past in verbs:
            out.update((base, past))
        out.update(third_person(b) for b, _ in verbs)
    out.update({"an", "is", "are", "does"})
    return {w for w in out if w.isalpha()}


def generate_corpus(
    n_docs: int, seed: int = 0, min_sentences: int = 4, max_sentences: int = 10, **grammar_kwargs
) -> list[tuple[str, list[Sentence]]]:
    """``n_docs`` documents ``(topic, sentences)``; deterministic in ``seed``."""
    g = Grammar(seed=seed, **grammar_kwargs)
    return list(g.documents(n_docs, min_sentences, max_sentences))


def document_labels(
    n_docs: int, seed: int = 0, min_sentences: int = 4, max_sentences: int = 10, **grammar_kwargs
) -> list[tuple[str, str]]:
    """``(topic, tense)`` of each document that :func:`generate_corpus` makes with the same arguments."""
    g = Grammar(seed=seed, **grammar_kwargs)
    return [(topic, g.tense) for topic, _ in g.documents(n_docs, min_sentences, max_sentences)]


def expected_share(
    category: str, category_scale: dict[str, float] | None = None, max_depth: int = 6
) -> float:
    """The expected share of a corpus's words that ``category`` produces: E[its words] / E[all words] per
    sentence of ``S``, computed exactly from ``PRODUCTIONS`` (with :class:`Grammar`'s ``category_scale`` and depth
    limit; every terminal is one word). A long corpus's measured share converges to it."""
    scale = category_scale or {}
    memo: dict[tuple[str, int], tuple[float, float]] = {}

    def counts(symbol: str, depth: int) -> tuple[float, float]:
        if symbol not in PRODUCTIONS:
            return float(symbol == category), 1.0
        if (symbol, depth) not in memo:
            options = PRODUCTIONS[symbol]
            if depth >= max_depth:
                weighted = [(1.0, options[0][1])]
            else:
                weighted = [(w * math.prod(scale.get(s, 1.0) for s in set(rhs)), rhs) for w, rhs in options]
            total = sum(w for w, _ in weighted)
            hits = words = 0.0
            for w, rhs in weighted:
                for s in rhs:
                    h, n = counts(s, depth + 1)
                    hits, words = hits + w / total * h, words + w / total * n
            memo[symbol, depth] = hits, words
        return memo[symbol, depth]

    hits, words = counts("S", 0)
    return hits / words


#: the conjunction group's expected share of the words of the grammar as written (``expected_share("CC")``)
CONJUNCTION_SHARE = expected_share("CC")


def conjunction_scale(share: float) -> float:
    """The factor on the conjoined sentence's production (``category_scale={"CC": factor}``) whose corpus has
    the expected conjunction share ``share`` (in (0, :data:`CONJUNCTION_SHARE`]): the share is increasing in the
    factor, so bisection finds it to 1e-12."""
    if not 0.0 < share <= CONJUNCTION_SHARE:
        raise ValueError(f"share={share} must be in (0, {CONJUNCTION_SHARE:.4g}]")
    lo, hi = 0.0, 1.0
    while hi - lo > 1e-12:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if expected_share("CC", {"CC": mid}) < share else (lo, mid)
    return hi
