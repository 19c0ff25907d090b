"""A GLUE-shaped downstream suite generated from the PoS grammar, labels known by construction.

Five tasks with train/dev splits and the GLUE metrics; each label depends on identified POS groups, and
two hinge on rare groups (SST-2-like on negation adverbs, RTE-like on conjunctions) so that worst-case
behaviour is visible:

===========  ============  ===========================  ================================================
task         input         metric (primary first)       label depends on
===========  ============  ===========================  ================================================
cola         sentence      matthews, accuracy           determiner/noun/adjective order, verb presence,
                                                        pronoun case (determiner, noun, adjective, verb,
                                                        pronoun)
sst2         sentence      accuracy                     the predicate adjective's polarity flipped by
                                                        ``not``/``never`` (adjective, adverb)
mrpc         pair          f1, accuracy                 two changed nouns/verbs or another predicate break
                                                        the paraphrase; dropped adjectives/adverbs do not
                                                        (noun, verb vs adjective, adverb)
rte          pair          accuracy                     ``and``/``but`` entail each clause, ``or`` does not;
                                                        a changed noun breaks it (conjunction, noun)
stsb         pair          spearman, pearson            5 for dropped modifiers, 5 x the share of content
                                                        words kept, 1 for another predicate, 0 for an
                                                        unrelated sentence (noun, verb, adjective)
===========  ============  ===========================  ================================================
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from data.pos_grammar import LEXICON, TOPIC_NOUNS, TRANSITIVE, Grammar, Sentence, finish, plural, verb_bases

OBJECT_CASE = {"I": "me", "he": "him", "she": "her", "we": "us", "they": "them"}


@dataclass(frozen=True)
class TaskSpec:
    """What a downstream task is: single sentence or pair, classes (1 = regression), metrics."""

    name: str
    pair: bool
    num_labels: int
    metrics: tuple[str, ...]
    depends_on: tuple[str, ...]
    description: str = ""

    @property
    def primary(self) -> str:
        return self.metrics[0]

    @property
    def regression(self) -> bool:
        return self.num_labels == 1


TASKS: dict[str, TaskSpec] = {
    "cola": TaskSpec(
        "cola",
        False,
        2,
        ("matthews", "accuracy"),
        ("determiner", "noun", "adjective", "verb", "pronoun"),
        "acceptability: word-order, missing-verb and pronoun-case corruptions are unacceptable",
    ),
    "sst2": TaskSpec(
        "sst2",
        False,
        2,
        ("accuracy",),
        ("adjective", "adverb"),
        "sentiment: polarity of the predicate adjective, flipped by the negation adverbs not/never",
    ),
    "mrpc": TaskSpec(
        "mrpc",
        True,
        2,
        ("f1", "accuracy"),
        ("noun", "verb", "adjective", "adverb"),
        "paraphrase: dropping adjectives/adverbs keeps the meaning, changing nouns/verbs or the predicate does not",
    ),
    "rte": TaskSpec(
        "rte",
        True,
        2,
        ("accuracy",),
        ("conjunction", "noun"),
        "entailment: 'A and/but B' entails A and B, 'A or B' entails neither; a changed noun is not entailed",
    ),
    "stsb": TaskSpec(
        "stsb",
        True,
        1,
        ("spearman", "pearson"),
        ("noun", "verb", "adjective"),
        "similarity 0-5: five times the share of content words (noun/verb/adjective) kept",
    ),
}


@dataclass
class Example:
    a: str
    b: str | None
    label: float


@dataclass
class TaskData:
    spec: TaskSpec
    train: list[Example] = field(default_factory=list)
    dev: list[Example] = field(default_factory=list)


class _Gen:
    def __init__(self, seed: int, max_words: int = 16):
        self.g = Grammar(seed=seed)
        self.rng = random.Random(seed + 7919)
        self.max_words = max_words
        self.bases = verb_bases()

    def clause(self, symbol: str = "CLAUSE") -> list[tuple[str, str]]:
        for _ in range(100):
            pairs = self.g.expand(symbol, self.rng.choice(self.g.topics))
            if len(pairs) <= self.max_words:
                return pairs
        return pairs

    def sentence(self, pairs: list[tuple[str, str]], end: str = ".") -> str:
        return finish([*pairs, (end, "other")]).text

    def other_word(self, word: str, group: str) -> str:
        """A different word of the same group (for nouns/verbs keep the form: plural / past)."""
        low = word.lower()
        for _ in range(50):
            if group == "noun":
                cand = self.rng.choice(self.rng.choice(list(TOPIC_NOUNS.values())))
                if low.endswith("s") and not cand.endswith("s"):
                    cand = plural(cand)
            elif group == "verb":
                base, past = self.rng.choice(TRANSITIVE)
                cand = base if low in self.bases else past
            elif group == "adjective":
                cand = self.rng.choice(LEXICON["ADJ"][1])
            else:
                return word
            if cand != low:
                return cand
        return word

    # -- tasks ---------------------------------------------------------------------------------------------
    def cola(self) -> Example:
        pairs = self.clause()
        if self.rng.random() < 0.5:
            return Example(self.sentence(pairs), None, 1)
        words = [w for w, _ in pairs]
        groups = [g for _, g in pairs]
        kinds = ["swap", "verb"]
        if any(g == "determiner" for g in groups):
            kinds.append("det")
        if any(groups[i] == "adjective" and groups[i + 1] == "noun" for i in range(len(groups) - 1)):
            kinds.append("adj")
        if words[0] in OBJECT_CASE:
            kinds.append("case")
        kind = self.rng.choice(kinds)
        if kind == "det":  # "the big dog" -> "big dog the"
            i = groups.index("determiner")
            j = i + 1
            while j < len(groups) and groups[j] != "noun":
                j += 1
            j = min(j, len(groups) - 1)
            words.insert(j, words.pop(i))
        elif kind == "adj":  # "big dog" -> "dog big"
            i = next(
                i for i in range(len(groups) - 1) if groups[i] == "adjective" and groups[i + 1] == "noun"
            )
            words[i], words[i + 1] = words[i + 1], words[i]
        elif kind == "case":  # "he saw it" -> "him saw it"
            words[0] = OBJECT_CASE[words[0]]
        elif kind == "verb":  # drop every verb
            keep = [w for w, g in zip(words, groups) if g != "verb"]
            words = keep if len(keep) < len(words) else words[::-1]
        else:  # swap two words of different groups far apart
            i, j = 0, len(words) - 1
            if groups[i] == groups[j] or len(words) < 3:
                words = words[::-1]
            else:
                words[i], words[j] = words[j], words[i]
        return Example(self.sentence([(w, "") for w in words]), None, 0)

    def sst2(self) -> Example:
        subj = self.clause(self.rng.choice(["SUBJ_SG", "SUBJ_SG", "SUBJ_PL"]))
        plural = subj[0][0].lower() in ("we", "they", "you") or subj[-1][0].endswith("s")
        cop = ("were" if plural else "was", "verb")
        positive = self.rng.random() < 0.5
        negated = self.rng.random() < 0.3  # a minority, as in real reviews: polarity alone gives ~70%
        adj = self.rng.choice(LEXICON["ADJ_POS" if positive else "ADJ_NEG"][1])
        pred = [cop]
        if negated:
            pred.append((self.rng.choice(["not", "not", "never"]), "adverb"))
        if self.rng.random() < 0.3:
            pred.append((self.rng.choice(LEXICON["DEG"][1]), "adverb"))
        pred.append((adj, "adjective"))
        pairs = subj + pred
        r = self.rng.random()
        if r < 0.25:
            pairs = [*self.clause("PP"), (",", "other"), *pairs]
        elif r < 0.4:
            pairs = [(self.rng.choice(LEXICON["INTJ"][1]), "interjection"), (",", "other"), *pairs]
        return Example(self.sentence(pairs), None, int(positive != negated))

    def mrpc(self) -> Example:
        pairs = self.clause()
        a = self.sentence(pairs)
        words = [w for w, _ in pairs]
        groups = [g for _, g in pairs]
        # droppable modifiers: attributive adjectives and adverbs other than the negations
        mods = [
            i
            for i, g in enumerate(groups)
            if (g == "adjective" and i + 1 < len(groups) and groups[i + 1] in ("adjective", "noun"))
            or (g == "adverb" and words[i] not in ("not", "never", "when"))
        ]
        content = [
            i
            for i, g in enumerate(groups)
            if g in ("noun", "verb") and words[i].lower() not in ("was", "were", "did")
        ]
        content = [i for i in content if words[i][0].islower()]
        if self.rng.random() < 0.65 or not content:  # paraphrase: drop modifiers, or add "very"/"really"
            if mods:
                drop = set(self.rng.sample(mods, k=self.rng.randint(1, len(mods))))
                words = [w for i, w in enumerate(words) if i not in drop]
            else:
                k = self.rng.randrange(len(words))
                words = words[:k] + ["really"] + words[k:] if groups[k] == "verb" else words + []
            return Example(a, self.sentence([(w, "") for w in words]), 1)
        if self.rng.random() < 0.5:  # another predicate for the same subject
            subj_end = next((i for i, g in enumerate(groups) if g == "verb"), len(words))
            rest = [w for w, _ in self.clause("VP")]
            return Example(a, self.sentence([(w, "") for w in words[:subj_end] + rest]), 0)
        for i in self.rng.sample(content, k=min(len(content), 2)):  # two nouns/verbs changed
            words[i] = self.other_word(words[i], groups[i])
        if mods and self.rng.random() < 0.5:
            drop = self.rng.choice(mods)
            words = [w for k, w in enumerate(words) if k != drop]
        return Example(a, self.sentence([(w, "") for w in words]), 0)

    def rte(self, conjunction: str | None = None) -> Example:
        """A premise ``c1, <conj> c2`` and a hypothesis (one clause, a noun changed in a quarter): entailed iff
        the conjunction is ``and``/``but`` and no noun changed. ``conjunction`` replaces the drawn one (the rest,
        drawn from the same stream, stays the same): the pairs that differ only in it."""
        c1, c2 = self.clause(), self.clause()
        conj = self.rng.choice(["and", "but", "or"])
        conj = conjunction or conj
        premise = self.sentence([*c1, (",", "other"), (conj, "conjunction"), *c2])
        hyp = list(c1 if self.rng.random() < 0.5 else c2)
        altered = self.rng.random() < 0.25
        if altered:
            nouns = [i for i, (w, g) in enumerate(hyp) if g == "noun" and w[0].islower()]
            if nouns:
                i = self.rng.choice(nouns)
                hyp[i] = (self.other_word(hyp[i][0], "noun"), "noun")
            else:
                altered = False
        label = int(conj in ("and", "but") and not altered)
        return Example(premise, self.sentence(hyp), label)

    def stsb(self) -> Example:
        pairs = self.clause()
        a = self.sentence(pairs)
        r = self.rng.random()
        if r < 0.3:  # unrelated sentence
            return Example(a, self.sentence(self.clause()), 0.0)
        if r < 0.5:  # same subject, another predicate
            subj_end = next((i for i, (_, g) in enumerate(pairs) if g == "verb"), len(pairs))
            return Example(a, self.sentence(pairs[:subj_end] + self.clause("VP")), 1.0)
        words = [w for w, _ in pairs]
        groups = [g for _, g in pairs]
        if r < 0.7:  # paraphrase: attributive adjectives / manner adverbs dropped
            drop = {
                i
                for i, g in enumerate(groups)
                if (g == "adjective" and i + 1 < len(groups) and groups[i + 1] in ("adjective", "noun"))
                or (g == "adverb" and words[i] not in ("not", "never", "when"))
            }
            return Example(a, self.sentence([(w, "") for i, w in enumerate(words) if i not in drop]), 5.0)
        content = [
            i for i, (w, g) in enumerate(pairs) if g in ("noun", "verb", "adjective") and w[0].islower()
        ]
        content = [i for i in content if pairs[i][0] not in ("was", "were", "did")]
        if not content:
            return Example(a, a, 5.0)
        k = self.rng.randint(1, len(content))  # share of content words kept sets the score
        b = list(pairs)
        for i in self.rng.sample(content, k=k):
            b[i] = (self.other_word(b[i][0], b[i][1]), b[i][1])
        return Example(a, self.sentence(b), round(5.0 * (1 - k / len(content)), 3))


def generate_task(name: str, n_train: int, n_dev: int, seed: int = 0) -> TaskData:
    """Train and dev examples of one task (dev uses a different seed stream)."""
    if name not in TASKS:
        from utils.errors import ConfigError

        raise ConfigError(f"downstream.tasks: unknown task {name!r}; choose from {', '.join(TASKS)}.")
    offset = sorted(TASKS).index(name) * 1000
    make_train = getattr(_Gen(seed * 100_003 + offset + 1), name)
    make_dev = getattr(_Gen(seed * 100_003 + offset + 2), name)
    return TaskData(TASKS[name], [make_train() for _ in range(n_train)], [make_dev() for _ in range(n_dev)])


def generate_suite(tasks: list[str], n_train: int, n_dev: int, seed: int = 0) -> dict[str, TaskData]:
    return {t: generate_task(t, n_train, n_dev, seed) for t in tasks}


__all__ = ["TASKS", "TaskSpec", "Example", "TaskData", "generate_task", "generate_suite", "Sentence"]
