"""PoS-BERT tagging and tokenisation: POS groups of words aligned to word-pieces.

- :func:`penn_to_group` maps NLTK's Penn Treebank tags to the groups of ``data.pos_grammar.ALL_GROUPS``;
  :func:`require_nltk_tagger` / :func:`load_nltk_tagger` / :func:`nltk_groups` install, load and run NLTK's
  English tagger.
- :func:`train_wordpiece` trains a BERT-style WordPiece tokenizer with ``tokenizers``; :func:`load_tokenizer`
  loads a named fast tokenizer; :func:`tokenizer_fingerprint` keys the caches built with it.
- :func:`tag_and_tokenize` is the ``datasets.map`` function: words (gold groups, or NLTK tags of raw text)
  -> word-pieces, each with its word's group through the fast tokenizer's ``word_ids``.
- :func:`unigram_reference`: the context-free reference of the upstream evaluation.

The caches themselves (the trained tokenizer, the tagged Arrow dataset) are written by
``data.pos_bert.PosBertDataModule``.
"""

from __future__ import annotations

import hashlib
import logging
import re

import numpy as np
import torch

from data.pos_grammar import ALL_GROUPS, GROUP_ID, OTHER
from utils.errors import ConfigError, DataError

log = logging.getLogger(__name__)

IGNORE = -100  # group id of special / padding tokens
NLTK_TAGGER = "averaged_perceptron_tagger_eng"
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


# ---------------------------------------------------------------------------------------------------------
# POS tags
# ---------------------------------------------------------------------------------------------------------
def penn_to_group(tags: list[str]) -> list[int]:
    """Penn Treebank tags of one sentence -> group ids (``data.pos_grammar.ALL_GROUPS``).

    verb VB*/MD, noun NN*, adjective JJ*, determiner DT/PDT/WDT/EX, adverb RB*/WRB, pronoun PRP/PRP$/WP/WP$,
    preposition IN and TO when not followed by a base verb, conjunction CC, interjection UH; the rest
    (numbers, particles, infinitival to, punctuation, symbols) is ``other``.
    """
    out = []
    for i, t in enumerate(tags):
        if t.startswith("VB") or t == "MD":
            g = "verb"
        elif t.startswith("NN"):
            g = "noun"
        elif t.startswith("JJ"):
            g = "adjective"
        elif t in ("DT", "PDT", "WDT", "EX"):
            g = "determiner"
        elif t.startswith("RB") or t == "WRB":
            g = "adverb"
        elif t in ("PRP", "PRP$", "WP", "WP$"):
            g = "pronoun"
        elif t == "IN":
            g = "preposition"
        elif t == "TO":
            g = OTHER if i + 1 < len(tags) and tags[i + 1] == "VB" else "preposition"
        elif t == "CC":
            g = "conjunction"
        elif t == "UH":
            g = "interjection"
        else:
            g = OTHER
        out.append(GROUP_ID[g])
    return out


_nltk_download_tried = False  # the tagger is downloaded at most once per process


def require_nltk_tagger() -> None:
    """Make sure NLTK's English tagger data is installed: when it is missing, ``nltk.download`` it once
    (quietly, with one progress line); offline, or when that fails, stop with one sentence saying how to
    install it."""
    global _nltk_download_tried
    try:
        import nltk
    except ImportError as e:  # pragma: no cover - nltk is a dependency
        raise DataError("data.corpus.text_file needs the nltk package: pip install nltk.") from e
    resource = f"taggers/{NLTK_TAGGER}/"
    try:
        nltk.data.find(resource)
        return
    except LookupError:
        pass
    if not _nltk_download_tried:
        _nltk_download_tried = True
        log.info("NLTK resource %s is missing: downloading it once with nltk.download ...", NLTK_TAGGER)
        import io
        import socket

        timeout = socket.getdefaulttimeout()
        socket.setdefaulttimeout(30)  # a network that drops packets must not hang the run
        try:
            ok = nltk.download(NLTK_TAGGER, quiet=True, print_error_to=io.StringIO())
        except Exception:  # noqa: BLE001 - offline, proxy, disk: the sentence below says what to do
            ok = False
        finally:
            socket.setdefaulttimeout(timeout)
        if ok:
            try:
                nltk.data.find(resource)
                log.info("NLTK resource %s downloaded.", NLTK_TAGGER)
                return
            except LookupError:
                pass
    raise DataError(
        f"NLTK resource 'taggers/{NLTK_TAGGER}' is missing: install it with "
        f"`python -m nltk.downloader {NLTK_TAGGER}` or set NLTK_DATA to a folder that contains it."
    )


def load_nltk_tagger() -> None:
    """Load NLTK's English tagger into its per-process cache (about 0.5-2 s). Done before ``datasets.map``
    forks its ``num_proc`` workers, they inherit it instead of each loading its own copy."""
    import nltk

    nltk.pos_tag(["the"], lang="eng")


def nltk_groups(word_lists: list[list[str]]) -> list[list[int]]:
    """Tag sentences (lists of words) with NLTK ``pos_tag_sents`` and map the Penn tags to group ids."""
    import nltk

    tagged = nltk.pos_tag_sents(word_lists, lang="eng")
    return [penn_to_group([t for _, t in sent]) for sent in tagged]


# ---------------------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------------------
def train_wordpiece(sentences, vocab_size: int, lowercase: bool = True, placeholders=()):
    """Train a BERT-style WordPiece tokenizer with ``tokenizers`` on a sequence of strings; each of
    ``placeholders`` (e.g. WikiText's ``<unk>``, ``@-@``) becomes one atomic token, never split.

    The trained vocabulary is then made canonical (:func:`_canonical_wordpiece`): ``tokenizers``' trainer
    breaks ties between equally frequent merges by hash-map order, so two trainings on the same text give
    different ids and different unused pieces (huggingface/tokenizers#1794); the pieces that encode the text
    are the same, and only they (with the specials and the alphabet) are kept, in a fixed order."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    sentences = list(sentences)
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, min_frequency=1)
    tok.train_from_iterator(sentences, trainer=trainer)
    tok = _canonical_wordpiece(tok, sentences)
    if placeholders:
        from tokenizers import AddedToken

        tok.add_tokens([AddedToken(p, single_word=False, normalized=False) for p in placeholders])
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=512,
    )


def _canonical_wordpiece(tok, sentences: list[str]):
    """The trained WordPiece tokenizer ``tok`` with only the specials, the alphabet (single characters and their
    ``##`` forms, so unseen words still encode) and the pieces that encode ``sentences``, numbered in that order
    (pieces by falling frequency, then alphabetically). WordPiece takes the longest piece in the vocabulary at
    each position, and every piece it took is kept, so ``sentences`` encode to the same pieces as before."""
    from collections import Counter

    from tokenizers import Tokenizer, models

    vocab = tok.get_vocab()
    piece = {i: t for t, i in vocab.items()}
    counts = Counter(i for enc in tok.encode_batch(sentences, add_special_tokens=False) for i in enc.ids)
    alphabet = sorted(t for t in vocab if len(t) == 1 or (t.startswith("##") and len(t) == 3))
    fixed = set(SPECIAL_TOKENS) | set(alphabet)
    used = sorted((piece[i] for i in counts if piece[i] not in fixed), key=lambda t: (-counts[vocab[t]], t))
    order = [*SPECIAL_TOKENS, *alphabet, *used]
    out = Tokenizer(models.WordPiece(vocab={t: i for i, t in enumerate(order)}, unk_token="[UNK]"))
    out.normalizer, out.pre_tokenizer, out.decoder = tok.normalizer, tok.pre_tokenizer, tok.decoder
    return out


def load_tokenizer(name_or_path: str, key: str = "data.tokenizer.name"):
    """A fast tokenizer from a local folder or the hub; one sentence naming ``key`` when it fails."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(name_or_path)
    except Exception as e:  # OSError, ValueError, HF hub errors
        raise ConfigError(
            f"{key}={name_or_path!r} is neither a local tokenizer folder nor a reachable hub tokenizer "
            f"(offline runs need a local path)."
        ) from e
    if not tok.is_fast:
        raise ConfigError(
            f"{key}={name_or_path!r} has no fast tokenizer (word ids are needed to align POS tags)."
        )
    if tok.mask_token_id is None or tok.cls_token_id is None or tok.sep_token_id is None:
        raise ConfigError(
            f"{key}={name_or_path!r} has no [MASK]/[CLS]/[SEP] tokens, so it cannot train BERT."
        )
    return tok


def tokenizer_fingerprint(tokenizer) -> str:
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------------
# Tagging + tokenization (datasets.map workers)
# ---------------------------------------------------------------------------------------------------------
def _placeholder_pattern(placeholders) -> re.Pattern | None:
    if not placeholders:
        return None
    return re.compile("(" + "|".join(re.escape(p) for p in sorted(placeholders, key=len, reverse=True)) + ")")


def _pretokenize(tokenizer, text: str, placeholders=()) -> list[str]:
    """Words of ``text`` as the tokenizer's pre-tokenizer splits them, each placeholder kept as one word."""
    split = tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str
    pattern = _placeholder_pattern(placeholders)
    if pattern is None:
        return [w for w, _ in split(text)]
    words = []
    for k, part in enumerate(pattern.split(text)):
        if k % 2:  # a placeholder
            words.append(part)
        elif part.strip():
            words.extend(w for w, _ in split(part))
    return words


def tag_and_tokenize(batch: dict[str, list], tokenizer, placeholders=()) -> dict[str, list]:
    """``datasets.map`` function: words (+ gold groups, or NLTK tags of ``text``) -> word-pieces + groups.

    ``placeholders`` (real text: WikiText's ``<unk>``, ``@-@``, ...) are one word each and belong to no POS
    task: their pieces get ``IGNORE`` (never masked), like special tokens."""
    if "groups" in batch:
        words, groups = batch["words"], batch["groups"]
    else:
        words = [_pretokenize(tokenizer, t, placeholders) for t in batch["text"]]
        groups = nltk_groups(words)
        marks = set(placeholders)
        groups = [[IGNORE if w in marks else g for w, g in zip(ws, gs)] for ws, gs in zip(words, groups)]
    enc = tokenizer(words, is_split_into_words=True, add_special_tokens=False)
    pos = []
    for i, ids in enumerate(enc["input_ids"]):
        wid = enc.word_ids(i)
        pos.append([groups[i][w] if w is not None else IGNORE for w in wid[: len(ids)]])
    return {"input_ids": enc["input_ids"], "pos": pos}


def unigram_reference(chunks, vocab_size: int) -> tuple[torch.Tensor, dict[str, float]]:
    """The context-free reference of the upstream evaluation, from ``chunks``: ``(ids, groups)`` pairs of flat
    arrays (the word-pieces of some sentences and their groups, ``IGNORE`` on the unmaskable ones).

    ``log p(v)``: the log-frequency of each word-piece among the corpus's maskable tokens (add-one smoothed,
    ``(V,)``), i.e. the best a model that ignores the context can predict; and, per POS group, its
    cross-entropy on that group's tokens, ``-mean_{tokens of g} log p(v)`` (nats), plus ``nsp``: ``log 2``.
    Counted chunk by chunk (a (groups, V) table), so the corpus is never copied whole.
    """
    n_groups = len(ALL_GROUPS)
    joint = np.zeros(n_groups * vocab_size, dtype=np.int64)  # (group, word-piece) counts
    for ids, groups in chunks:
        ids, groups = np.asarray(ids, dtype=np.int64), np.asarray(groups, dtype=np.int64)
        keep = (groups >= 0) & (ids < vocab_size)
        joint += np.bincount(groups[keep] * vocab_size + ids[keep], minlength=len(joint))
    joint = joint.reshape(n_groups, vocab_size)
    counts = joint.sum(0).astype(np.float64)
    log_p = np.log(counts + 1.0) - np.log(counts.sum() + vocab_size)
    reference = {}
    for g, name in enumerate(ALL_GROUPS):
        if joint[g].any():
            reference[name] = float(-(joint[g] @ log_p) / joint[g].sum())
    reference["nsp"] = float(np.log(2.0))
    return torch.as_tensor(log_p, dtype=torch.float32), reference
