"""PoS-BERT data: tokenizer, POS tags aligned to word-pieces, NSP pairs, the masking collator, the datamodule.

Pipeline (run once, cached under ``cache_dir``; never in the training loop):

1. Sentences with word-level POS groups: the embedded grammar (``data.pos_grammar``, gold groups) or real
   text (a local file or a hub dataset; documents end at blank lines or ``= Title =`` headings) tagged by NLTK
   ``pos_tag_sents`` on the words of the tokenizer's pre-tokenizer, Penn tags mapped by
   :func:`penn_to_group`.
2. A tokenizer: the one the user names (hub name or local path), or a WordPiece tokenizer trained on the
   corpus with ``tokenizers`` and cached.
3. ``datasets.Dataset.map(num_proc=...)`` tags (text files) and tokenizes with ``is_split_into_words``;
   each word-piece gets its word's group through the fast tokenizer's ``word_ids``. The result is saved as
   Arrow under a fingerprint of (source, seed, size, tokenizer), written to a temporary name and renamed.
4. NSP pairs (sentence A, next sentence or a sentence of another document) and
   :class:`PosMaskingCollator`, which masks word-pieces (BERT 15%, 80/10/10, optionally stratified over the
   groups) and carries the group of exactly the masked positions.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import logging
import re
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning import LightningDataModule
from torch.utils.data import DataLoader

from data.loading import resumable_loader
from data.pos_grammar import ALL_GROUPS, GROUP_ID, GROUPS, OTHER, generate_corpus
from utils.atomic import atomic_write, remove_stale_temps
from utils.errors import ConfigError, DataError

log = logging.getLogger(__name__)

IGNORE = -100  # group id of special / padding tokens
NLTK_TAGGER = "averaged_perceptron_tagger_eng"
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
CACHE_FORMAT = 1  # bump when the cached layout changes


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
        raise DataError("data.text_file needs the nltk package: pip install nltk.") from e
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
    """Train a BERT-style WordPiece tokenizer with ``tokenizers`` on an iterable of strings; each of
    ``placeholders`` (e.g. WikiText's ``<unk>``, ``@-@``) becomes one atomic token, never split."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, min_frequency=1)
    tok.train_from_iterator(sentences, trainer=trainer)
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


def load_tokenizer(name_or_path: str, key: str = "data.tokenizer"):
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


def _fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


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


def unigram_reference(input_ids, pos, vocab_size: int) -> tuple[torch.Tensor, dict[str, float]]:
    """The context-free reference of the upstream evaluation.

    ``log p(v)``: the log-frequency of each word-piece among the corpus's maskable tokens (add-one smoothed,
    ``(V,)``), i.e. the best a model that ignores the context can predict; and, per POS group, its
    cross-entropy on that group's tokens, ``-mean_{tokens of g} log p(v)`` (nats), plus ``nsp``: ``log 2``.
    """
    ids = (
        np.concatenate([np.asarray(x, dtype=np.int64) for x in input_ids])
        if len(input_ids)
        else np.zeros(0, int)
    )
    groups = np.concatenate([np.asarray(p, dtype=np.int64) for p in pos]) if len(pos) else np.zeros(0, int)
    keep = groups >= 0
    ids, groups = ids[keep], groups[keep]
    counts = np.bincount(ids, minlength=vocab_size)[:vocab_size].astype(np.float64)
    log_p = np.log(counts + 1.0) - np.log(counts.sum() + vocab_size)
    reference = {}
    for g, name in enumerate(ALL_GROUPS):
        sel = groups == g
        if sel.any():
            reference[name] = float(-log_p[ids[sel]].mean())
    reference["nsp"] = float(np.log(2.0))
    return torch.as_tensor(log_p, dtype=torch.float32), reference


# ---------------------------------------------------------------------------------------------------------
# NSP pairs
# ---------------------------------------------------------------------------------------------------------
def build_nsp_pairs(
    docs: np.ndarray,
    seed: int,
    random_prob: float = 0.5,
    lengths: np.ndarray | None = None,
    segment_tokens: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Segment pairs for next-sentence prediction, as BERT builds them.

    ``docs``: document index of each sentence (sentences of a document are consecutive); ``lengths``: their
    word-piece counts. Walking through each document, segment A takes consecutive sentences while they fit in
    ``segment_tokens`` word-pieces (at least one sentence, and one sentence of the document is left after it);
    B is the segment that follows A in the document (label 0, "is next") or, with ``random_prob``, a segment
    of as many word-pieces starting at a random sentence of another document (label 1). The next pair starts
    where A ended, so every sentence but a document's last opens a segment A once. ``segment_tokens=0``: one
    sentence per segment (A = a sentence, B = the next one). Returns ``(a_start, a_end, b_start, b_end,
    label)``, segments as half-open sentence ranges.
    """
    rng = np.random.default_rng(seed)
    docs = np.asarray(docs)
    n = len(docs)
    lengths = np.ones(n, dtype=np.int64) if lengths is None else np.asarray(lengths, dtype=np.int64)
    target = max(0, int(segment_tokens))
    bounds = np.flatnonzero(np.r_[True, docs[1:] != docs[:-1], True])  # document starts + n
    starts, ends = bounds[:-1], bounds[1:]
    doc_of = np.repeat(np.arange(len(starts)), ends - starts)  # document number of each sentence
    several = len(starts) > 1

    def grow(i: int, stop: int) -> int:  # end of the segment opening at sentence i, before sentence stop
        j, tokens = i + 1, lengths[i]
        while j < stop and tokens + lengths[j] <= target:
            tokens += lengths[j]
            j += 1
        return j

    out = []
    for s, e in zip(starts, ends):
        i = s
        while i < e - 1:
            j = grow(i, e - 1)  # A = [i, j), leaving >= 1 sentence for its true B
            if several and rng.random() < random_prob:
                k = int(rng.integers(0, n - (e - s)))  # a sentence outside document d
                k = k if k < s else k + (e - s)
                out.append((i, j, k, grow(k, ends[doc_of[k]]), 1))
            else:
                out.append((i, j, j, grow(j, e), 0))
            i = j
    if not out:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, empty, empty
    a0, a1, b0, b1, label = (np.asarray(c, dtype=np.int64) for c in zip(*out))
    return a0, a1, b0, b1, label


def split_long_sentences(
    input_ids: list[list[int]], pos: list[list[int]], docs: np.ndarray, max_length: int, chunk: int
) -> tuple[list[list[int]], list[list[int]], np.ndarray, int, int]:
    """Split every "sentence" longer than ``max_length`` word-pieces (a line without a sentence end, a table
    flattened into one line, ...) into consecutive chunks of at most ``chunk`` pieces, in its document; the rest
    stay as they are. Returns ``(input_ids, pos, docs, n_split, longest)``: ``n_split`` sentences were split,
    the longest had ``longest`` pieces."""
    long = [i for i, ids in enumerate(input_ids) if len(ids) > max_length]
    if not long:
        return input_ids, pos, docs, 0, 0
    longest = max(len(input_ids[i]) for i in long)
    out_ids, out_pos, out_docs = [], [], []
    for ids, groups, doc in zip(input_ids, pos, docs.tolist()):
        step = chunk if len(ids) > max_length else max(1, len(ids))
        for k in range(0, len(ids), step):
            out_ids.append(ids[k : k + step])
            out_pos.append(groups[k : k + step])
            out_docs.append(doc)
    return out_ids, out_pos, np.asarray(out_docs, dtype=np.int64), len(long), longest


def repeated_segments(input_ids: list[list[int]], a0, a1, train_idx, val_idx) -> int:
    """How many validation pairs open with a segment A whose text is also a training pair's segment A (text
    compared through a hash of each sentence's word-pieces; only the validation keys are kept in memory)."""
    sentence = np.asarray([hash(tuple(x)) for x in input_ids], dtype=np.int64)

    def keys(idx):
        return (tuple(sentence[a0[i] : a1[i]].tolist()) for i in idx)

    val_keys = list(keys(val_idx))
    wanted = set(val_keys)
    trained = {k for k in keys(train_idx) if k in wanted}
    return sum(k in trained for k in val_keys)


class NSPPairs(torch.utils.data.Dataset):
    """``[CLS] A [SEP] B [SEP]`` examples (A and B: ranges of consecutive sentences) with per-token groups
    (``IGNORE`` on specials); longest-first truncation to ``max_length``."""

    def __init__(self, input_ids, pos, a0, a1, b0, b1, label, cls_id: int, sep_id: int, max_length: int):
        self.input_ids, self.pos = input_ids, pos
        self.a0, self.a1, self.b0, self.b1, self.label = a0, a1, b0, b1, label
        self.cls_id, self.sep_id, self.max_length = cls_id, sep_id, max_length

    def __len__(self) -> int:
        return len(self.a0)

    def _segment(self, start: int, end: int) -> tuple[list[int], list[int]]:
        ids, pos = [], []
        for k in range(int(start), int(end)):
            ids.extend(self.input_ids[k])
            pos.extend(self.pos[k])
        return ids, pos

    def __getitem__(self, i: int) -> dict[str, Any]:
        ta, pa = self._segment(self.a0[i], self.a1[i])
        tb, pb = self._segment(self.b0[i], self.b1[i])
        budget = self.max_length - 3
        if len(ta) + len(tb) > budget:  # longest first
            while len(ta) + len(tb) > budget:
                if len(ta) >= len(tb):
                    ta.pop(), pa.pop()
                else:
                    tb.pop(), pb.pop()
        ids = [self.cls_id, *ta, self.sep_id, *tb, self.sep_id]
        pos = [IGNORE, *pa, IGNORE, *pb, IGNORE]
        types = [0] * (len(ta) + 2) + [1] * (len(tb) + 1)
        return {
            "input_ids": ids,
            "token_type_ids": types,
            "pos": pos,
            "nsp_label": int(self.label[i]),
            "index": i,
        }


# ---------------------------------------------------------------------------------------------------------
# Masking collator
# ---------------------------------------------------------------------------------------------------------
class PosMaskingCollator:
    """Pad, mask word-pieces and carry the POS group of exactly the masked positions.

    Output batch: ``input_ids``, ``attention_mask``, ``token_type_ids``, ``pos`` (B, L); ``masked_positions``
    (M,) flat indices into B*L; ``mlm_labels`` (M,) the original ids; ``mlm_task`` (M,) their group ids;
    ``nsp_labels`` (B,).

    Args:
        mlm_probability: fraction of maskable tokens (not special, not padding) selected (BERT: 0.15).
        mask_replace_prob / random_replace_prob: of the selected, fraction replaced by [MASK] / a random
            word-piece; the rest stays unchanged (BERT: 0.8 / 0.1).
        stratify: pick the selected positions so that every group present in the batch gets an equal share
            of the budget (water-filling: a group with fewer tokens gives its unused share to the others).
        seed: when set, masking is a deterministic function of ``seed`` and the examples' ``index`` values in
            batch order (dynamic masking: the same sentence gets other masks in another epoch, whose shuffled
            batches hold other companions). The masks then do not depend on any global RNG, on DataLoader
            workers or on how many batches were prefetched, so a run resumed mid-epoch re-creates exactly the
            masks of the run left alone. ``None``: draw from torch's global RNG.
    """

    def __init__(
        self,
        pad_id: int,
        mask_id: int,
        vocab_size: int,
        num_special: int = len(SPECIAL_TOKENS),
        mlm_probability: float = 0.15,
        mask_replace_prob: float = 0.8,
        random_replace_prob: float = 0.1,
        stratify: bool = False,
        seed: int | None = None,
    ):
        if not 0.0 < mlm_probability <= 1.0:
            raise ConfigError(f"data.mlm_probability={mlm_probability} must be in (0, 1].")
        if mask_replace_prob < 0 or random_replace_prob < 0 or mask_replace_prob + random_replace_prob > 1:
            raise ConfigError(
                "data.mask_replace_prob + data.random_replace_prob must be non-negative and sum to at most 1."
            )
        self.pad_id, self.mask_id, self.vocab_size, self.num_special = (
            pad_id,
            mask_id,
            vocab_size,
            num_special,
        )
        self.mlm_probability = mlm_probability
        self.mask_replace_prob, self.random_replace_prob = mask_replace_prob, random_replace_prob
        self.stratify, self.seed = stratify, seed

    def _generator(self, examples) -> torch.Generator | None:
        if self.seed is None:
            return None
        if any("index" not in e for e in examples):
            raise ValueError("PosMaskingCollator(seed=...) needs an 'index' in every example.")
        key = zlib.crc32(np.asarray([int(e["index"]) for e in examples], dtype=np.int64).tobytes())
        g = torch.Generator()
        g.manual_seed((self.seed * 1_000_003 + key) % 2**63)
        return g

    def _select(self, pos: torch.Tensor, maskable: torch.Tensor, gen) -> torch.Tensor:
        u = torch.rand(pos.shape, generator=gen)
        if not self.stratify:
            return maskable & (u < self.mlm_probability)
        flat_pos, flat_ok, flat_u = pos.reshape(-1), maskable.reshape(-1), u.reshape(-1)
        idx = torch.nonzero(flat_ok).squeeze(1)
        groups = flat_pos[idx]
        counts = torch.bincount(groups, minlength=len(ALL_GROUPS))
        budget = int(round(self.mlm_probability * len(idx)))
        quota = torch.zeros_like(counts)
        present = sorted((int(c), g) for g, c in enumerate(counts.tolist()) if c > 0)
        left = budget
        for k, (c, g) in enumerate(present):  # water-filling, smallest groups first
            share = left // (len(present) - k)
            quota[g] = min(c, share)
            left -= int(quota[g])
        # rank of each candidate within its group by random key
        order = torch.argsort(groups.double() * 2 + flat_u[idx].double())
        sorted_groups = groups[order]
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(len(order)) - starts[sorted_groups]
        chosen = idx[order[rank < quota[sorted_groups]]]
        sel = torch.zeros_like(flat_ok)
        sel[chosen] = True
        return sel.view_as(maskable)

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        gen = self._generator(examples)
        bsz, length = len(examples), max(len(e["input_ids"]) for e in examples)
        input_ids = torch.full((bsz, length), self.pad_id, dtype=torch.long)
        types = torch.zeros((bsz, length), dtype=torch.long)
        pos = torch.full((bsz, length), IGNORE, dtype=torch.long)
        attn = torch.zeros((bsz, length), dtype=torch.long)
        for i, e in enumerate(examples):
            n = len(e["input_ids"])
            input_ids[i, :n] = torch.as_tensor(e["input_ids"])
            types[i, :n] = torch.as_tensor(e["token_type_ids"])
            pos[i, :n] = torch.as_tensor(e["pos"])
            attn[i, :n] = 1
        maskable = pos != IGNORE
        selected = self._select(pos, maskable, gen)
        flat = torch.nonzero(selected.reshape(-1)).squeeze(1)
        labels = input_ids.reshape(-1)[flat].clone()
        task = pos.reshape(-1)[flat].clone()
        r = torch.rand(len(flat), generator=gen)
        to_mask = r < self.mask_replace_prob
        to_random = (r >= self.mask_replace_prob) & (r < self.mask_replace_prob + self.random_replace_prob)
        corrupted = input_ids.reshape(-1).clone()
        corrupted[flat[to_mask]] = self.mask_id
        rand_ids = torch.randint(self.num_special, self.vocab_size, (int(to_random.sum()),), generator=gen)
        corrupted[flat[to_random]] = rand_ids
        return {
            "input_ids": corrupted.view(bsz, length),
            "attention_mask": attn,
            "token_type_ids": types,
            "pos": pos,
            "masked_positions": flat,
            "mlm_labels": labels,
            "mlm_task": task,
            "nsp_labels": torch.as_tensor([int(e["nsp_label"]) for e in examples], dtype=torch.long),
        }


# ---------------------------------------------------------------------------------------------------------
# Corpus sources
# ---------------------------------------------------------------------------------------------------------
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


def split_documents(lines, where: str) -> tuple[list[str], list[int]]:
    """Sentences and their document index from lines of text: a blank line or a WikiText heading
    (``= Title =``) ends a document; a line holding several sentences is split after ``.``/``!``/``?``.
    Raises ``DataError`` naming ``where`` when there is no sentence."""
    texts, docs, doc = [], [], 0
    for line in lines:
        line = line.strip()
        if not line or (line.startswith("=") and line.endswith("=")):
            if texts and docs[-1] == doc:
                doc += 1
            continue
        for sent in _SENTENCE_END.split(line):
            texts.append(sent)
            docs.append(doc)
    if not texts:
        raise DataError(f"{where} contains no sentence (empty corpus).")
    return texts, docs


_SNIFF_BYTES = 8192  # bytes read to tell a binary file from a text file
_BINARY_UNDECODABLE = 0.3  # share of undecodable characters in those bytes above which a file is binary


def check_encoding(encoding: str) -> str:
    """The codec's canonical name (``utf-8``, ``iso8859-1``, ...); ``ConfigError`` naming ``data.encoding``."""
    try:
        return codecs.lookup(encoding).name
    except (LookupError, TypeError):
        raise ConfigError(
            f"data.encoding={encoding!r} is not a text encoding Python knows (e.g. utf-8, latin-1, cp1252)."
        ) from None


def decode_error(path: Path, encoding: str, key: str) -> DataError | None:
    """The one sentence for a file that does not decode as ``encoding`` (where: byte offset and line; what to
    set), or ``None`` when the whole file decodes. Reads the bytes in 1 MiB chunks (no text is kept)."""
    decoder = codecs.getincrementaldecoder(encoding)()
    fed, lines = 0, 1
    with path.open("rb") as f:
        while True:
            chunk = f.read(1 << 20)
            final = not chunk  # the end of the file: a cut-off character is an error too
            state = decoder.getstate()
            pending = state[0] if isinstance(state[0], bytes) else b""
            try:
                decoder.decode(chunk, final=final)
            except UnicodeDecodeError as e:
                data = pending + chunk
                offset = fed - len(pending) + e.start
                lines += data[len(pending) : max(len(pending), e.start)].count(b"\n")
                bad = " ".join(f"0x{byte:02x}" for byte in data[e.start : e.end])
                return DataError(
                    f"{key}: {path} is not valid {encoding} (byte {bad} at byte offset {offset}, line {lines}); "
                    f"set data.encoding=latin-1 (or the file's encoding, e.g. cp1252)."
                )
            if final:
                return None
            fed += len(chunk)
            lines += chunk.count(b"\n")


def _decode_failure(path: Path, encoding: str, key: str) -> DataError:
    return decode_error(path, encoding, key) or DataError(
        f"{key}: {path} does not decode as {encoding}; set data.encoding=latin-1 (or its encoding)."
    )


def _binary_reason(path: Path, encoding: str) -> str | None:
    """Why a file looks binary (NUL bytes, or mostly undecodable as ``encoding``), or ``None`` if it is text."""
    with path.open("rb") as f:
        head = f.read(_SNIFF_BYTES)
    if b"\0" in head and b"\0" not in "\n".encode(encoding):  # UTF-16/32 text holds NULs
        return "NUL bytes"
    text = codecs.getincrementaldecoder(encoding)(errors="replace").decode(head, final=False)
    if text and text.count("\ufffd") / len(text) > _BINARY_UNDECODABLE:
        return f"{text.count(chr(0xFFFD)) / len(text):.0%} of its first bytes are not {encoding}"
    return None


def check_text_file(path: Path, encoding: str = "utf-8") -> None:
    """``data.text_file`` at start-up, before any pre-training (bytes only: no sentence splitting, no tagging):
    a missing file, a binary one (NUL bytes, or mostly undecodable) or one that does not decode as
    ``encoding`` (naming the byte offset) fails with one sentence."""
    if not path.is_file():
        raise DataError(f"data.text_file: {path} does not exist.")
    encoding = check_encoding(encoding)
    reason = _binary_reason(path, encoding)
    if reason is not None:
        raise DataError(
            f"data.text_file: {path} looks binary, not {encoding} text ({reason}): point data.text_file at a "
            f"text file (or set data.encoding if it is text in another encoding, e.g. utf-16)."
        )
    err = decode_error(path, encoding, "data.text_file")
    if err is not None:
        raise err


def read_text_file(path: Path, encoding: str = "utf-8") -> tuple[list[str], list[int]]:
    """Sentences and their document index from a text file in ``encoding`` (see :func:`split_documents`).
    Raises ``DataError`` naming the file when it is missing, does not decode (with the byte offset) or has
    no sentence."""
    if not path.is_file():
        raise DataError(f"data.text_file: {path} does not exist.")
    encoding = check_encoding(encoding)
    try:
        with path.open(encoding=encoding) as f:
            return split_documents(f, f"data.text_file: {path}")
    except UnicodeDecodeError:
        raise _decode_failure(path, encoding, "data.text_file") from None


def text_dir_files(path: Path, encoding: str = "utf-8") -> list[Path]:
    """The text files of a ``data.text_dir`` (``*.txt``, searched recursively, sorted). A binary file (NUL bytes,
    or mostly undecodable as ``encoding``) is skipped with a warning naming it; ``DataError`` naming the folder
    when it is missing or no text file is left."""
    if not path.is_dir():
        raise DataError(f"data.text_dir: {path} is not a folder.")
    encoding = check_encoding(encoding)
    files = sorted(p for p in path.rglob("*.txt") if p.is_file())
    if not files:
        raise DataError(f"data.text_dir: {path} holds no .txt file.")
    texts = []
    for f in files:
        reason = _binary_reason(f, encoding)
        if reason is None:
            texts.append(f)
        else:
            log.warning("data.text_dir: skipping %s: it looks binary, not %s text (%s).", f, encoding, reason)
    if not texts:
        raise DataError(
            f"data.text_dir: {path} holds no text file: its {len(files)} .txt file(s) all look binary "
            f"(NUL bytes or mostly undecodable as {encoding}); if they are text, set data.encoding."
        )
    return texts


def read_text_dir(
    path: Path, encoding: str = "utf-8", files: list[Path] | None = None
) -> tuple[list[str], list[int]]:
    """Sentences and document index from a folder of ``.txt`` files in ``encoding`` (``files``: those of
    :func:`text_dir_files`, which skips binary files with a warning). Each file is one document, or several
    separated by blank lines (or ``= Title =`` headings). A text file that does not decode fails naming it and
    the byte offset."""
    encoding = check_encoding(encoding)
    texts = text_dir_files(path, encoding) if files is None else files

    def lines():
        for f in texts:
            try:
                with f.open(encoding=encoding) as fh:
                    yield from fh
            except UnicodeDecodeError:
                raise _decode_failure(f, encoding, "data.text_dir") from None
            yield ""  # a file ends its last document

    return split_documents(lines(), f"data.text_dir: {path}")


def _text_column(ds, column: str, where: str) -> None:
    names = ds.column_names or []
    if names and column not in names:
        raise ConfigError(f"data.text_column={column!r} is not a column of {where} ({', '.join(names)}).")


def read_hub_dataset(
    name: str,
    config: str | None,
    split: str,
    column: str,
    streaming: bool = False,
    max_rows: int | None = None,
) -> tuple[list[str], list[int]]:
    """Sentences and document index from a ``datasets`` hub dataset's text column (e.g. WikiText).

    With ``streaming`` the rows are read lazily (corpora larger than the disk) and only the first
    ``max_rows`` are kept; each row is a document when the rows are whole documents (Wikipedia,
    BookCorpus-style), or a line of one (WikiText, whose blank rows and headings separate documents)."""
    import itertools

    import datasets

    where = f"data.hf_dataset={name!r}"
    try:
        ds = datasets.load_dataset(name, config, split=split, streaming=streaming)
    except Exception as e:  # offline, missing, renamed: one sentence for all
        raise DataError(
            f"data.hf_dataset={name!r} (config {config!r}, split {split!r}) could not be loaded from the hub or "
            f"its cache ({type(e).__name__}); offline, use data.text_file=<local text file> or data.text_dir."
        ) from None
    _text_column(ds, column, name)
    if streaming:
        rows = (row[column] for row in itertools.islice(ds, max_rows))
        return split_documents(_rows_as_lines(rows), where)
    texts = ds[column] if max_rows is None else ds[column][:max_rows]
    return split_documents(_rows_as_lines(texts), where)


def read_disk_dataset(path: Path, split: str, column: str, max_rows: int | None = None):
    """Sentences and document index from a dataset saved with ``save_to_disk`` (a Dataset or a
    DatasetDict, whose ``split`` is used)."""
    import datasets

    if not path.exists():
        raise DataError(f"data.disk_dataset: {path} does not exist.")
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # noqa: BLE001 - not a saved dataset
        raise DataError(
            f"data.disk_dataset: {path} is not a dataset saved with save_to_disk ({type(e).__name__})."
        ) from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise ConfigError(f"data.hf_split={split!r} is not a split of {path} ({', '.join(ds)}).")
        ds = ds[split]
    _text_column(ds, column, str(path))
    texts = ds[column] if max_rows is None else ds[column][:max_rows]
    return split_documents(_rows_as_lines(texts), f"data.disk_dataset: {path}")


def _rows_as_lines(rows):
    """Rows of text as lines; a row holding several lines (a whole document) is followed by a blank
    line, so it stays one document."""
    for row in rows:
        row = row or ""
        if "\n" in row.strip():
            yield from row.splitlines()
            yield ""
        else:
            yield row


class PosBertDataModule(LightningDataModule):
    """NSP pairs with POS-grouped masked word-pieces for PoS-BERT pre-training. See the module docstring.

    The tokenizer, the tagged Arrow dataset and their fingerprints live under ``cache_dir``.
    """

    def __init__(
        self,
        cache_dir: str = ".cache",
        seed: int = 0,
        smoke: bool = False,
        text_file: str | None = None,
        hf_dataset: str | None = None,
        hf_config: str | None = None,
        hf_split: str = "train",
        text_column: str = "text",
        text_dir: str | None = None,
        encoding: str = "utf-8",
        disk_dataset: str | None = None,
        streaming: bool = False,
        max_rows: int | None = None,
        n_docs: int = 2000,
        min_sentences: int = 4,
        max_sentences: int = 10,
        topic_bias: float = 0.75,
        present_prob: float = 0.0,
        zipf_s: float = 1.0,
        tokenizer: str | None = None,
        vocab_size: int = 4096,
        lowercase: bool = True,
        max_length: int = 64,
        batch_size: int = 32,
        val_fraction: float = 0.05,
        mlm_probability: float = 0.15,
        mask_replace_prob: float = 0.8,
        random_replace_prob: float = 0.1,
        stratify: bool = False,
        nsp_random_prob: float = 0.5,
        segment_tokens: int | None = None,
        num_proc: int = 1,
        num_workers: int = 0,
        placeholders: list[str] | tuple[str, ...] = (),
    ):
        super().__init__()
        if smoke:
            n_docs, batch_size = min(n_docs, 40), min(batch_size, 8)
        sources = [
            k
            for k, v in (
                ("text_file", text_file),
                ("text_dir", text_dir),
                ("hf_dataset", hf_dataset),
                ("disk_dataset", disk_dataset),
            )
            if v
        ]
        if len(sources) > 1:
            raise ConfigError(f"data: choose one text source, got {', '.join('data.' + k for k in sources)}.")
        self.text_dir = Path(text_dir) if text_dir else None
        self.disk_dataset = Path(disk_dataset) if disk_dataset else None
        self.streaming, self.max_rows = bool(streaming), (int(max_rows) if max_rows else None)
        if self.streaming and not hf_dataset:
            raise ConfigError("data.streaming=true reads a hub dataset: set data.hf_dataset too.")
        if self.text_dir is not None and not self.text_dir.is_dir():
            raise DataError(f"data.text_dir: {self.text_dir} is not a folder.")
        if self.disk_dataset is not None and not self.disk_dataset.exists():
            raise DataError(f"data.disk_dataset: {self.disk_dataset} does not exist.")
        if text_file and not Path(text_file).is_file():
            raise DataError(f"data.text_file: {text_file} does not exist.")
        if n_docs <= 0 and not sources:
            raise DataError(f"data.n_docs={n_docs}: the generated corpus is empty; set it to at least 2.")
        if max_length < 8:
            raise ConfigError(f"data.max_length={max_length} is too short for a sentence pair (need >= 8).")
        self.cache_dir = Path(cache_dir)
        self.seed, self.smoke = seed, smoke
        self.text_file = Path(text_file) if text_file else None
        self.encoding = check_encoding(encoding)  # of text_file / text_dir
        self.hf_dataset, self.hf_config, self.hf_split, self.text_column = (
            hf_dataset,
            hf_config,
            hf_split,
            text_column,
        )
        self.n_docs, self.min_sentences, self.max_sentences = n_docs, min_sentences, max_sentences
        self.topic_bias, self.zipf_s = topic_bias, zipf_s
        if not 0.0 <= float(present_prob) <= 1.0:
            raise ConfigError(f"data.present_prob={present_prob} must be a probability in [0, 1].")
        self.present_prob = float(present_prob)
        self.tokenizer_name, self.vocab_size, self.lowercase = tokenizer, vocab_size, lowercase
        self.max_length, self.batch_size, self.val_fraction = max_length, batch_size, val_fraction
        self.mlm_probability, self.stratify = mlm_probability, stratify
        self.mask_replace_prob, self.random_replace_prob = mask_replace_prob, random_replace_prob
        self.nsp_random_prob = nsp_random_prob
        if segment_tokens is not None and int(segment_tokens) < 0:
            raise ConfigError(
                f"data.segment_tokens={segment_tokens} must be >= 0 (0: one sentence per segment)."
            )
        # null: A and B share the pair's budget, as BERT fills its sequences
        self.segment_tokens = (max_length - 3) // 2 if segment_tokens is None else int(segment_tokens)
        self.num_proc, self.num_workers = max(1, num_proc), num_workers
        if isinstance(placeholders, str) or not all(isinstance(p, str) and p.strip() for p in placeholders):
            raise ConfigError(f"data.placeholders must be a list of non-empty strings, got {placeholders!r}.")
        self.placeholders = tuple(placeholders)
        self.tokenizer = None
        self.tagged = None
        self.group_counts: dict[str, int] = {}
        self.n_documents = 0  # documents of the corpus (setup); NSP needs at least 2
        self.cache_hits: dict[str, bool] = {}
        # data.text_dir's text files, once validate() has listed them (and warned about binary ones)
        self._dir_files: list[Path] | None = None
        self.unigram_log_probs: torch.Tensor | None = None  # (V,) context-free log-frequencies (setup)
        self.context_free_reference: dict[str, float] = {}  # per group: their cross-entropy (setup)

    # -- sources --------------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Start-up check of a local corpus, before any pre-training (bytes only, seconds even for gigabytes: no
        sentence splitting, no tagging): ``data.text_file`` must be text that decodes as ``data.encoding``;
        ``data.text_dir`` must hold a text file (binary ones are skipped with a warning, here, once) and each
        must decode. A hub or saved dataset is read in ``setup`` (when no cache holds it), before the first
        step."""
        if self.text_file is not None:
            check_text_file(self.text_file, self.encoding)
        elif self.text_dir is not None:
            self._dir_files = text_dir_files(self.text_dir, self.encoding)
            for f in self._dir_files:
                err = decode_error(f, self.encoding, "data.text_dir")
                if err is not None:
                    raise err

    @property
    def corpus_name(self) -> str:
        """The pre-training corpus as its config key says it, for messages."""
        for key, value in (
            ("text_file", self.text_file),
            ("text_dir", self.text_dir),
            ("hf_dataset", self.hf_dataset),
            ("disk_dataset", self.disk_dataset),
        ):
            if value is not None:
                return f"data.{key}={value}"
        return f"the generated corpus (data.n_docs={self.n_docs})"

    @property
    def real_text(self) -> bool:
        return any(x is not None for x in (self.text_file, self.hf_dataset, self.text_dir, self.disk_dataset))

    def _source_key(self) -> dict[str, Any]:
        key = self._corpus_key()
        if self.real_text and self.placeholders:  # they change the tokenizer and the tags
            key["placeholders"] = list(self.placeholders)
        return key

    def _corpus_key(self) -> dict[str, Any]:
        if self.hf_dataset is not None:
            return {
                "hf": [self.hf_dataset, self.hf_config, self.hf_split, self.text_column],
                "streaming": [self.streaming, self.max_rows],
                "smoke": self.smoke,
                "v": CACHE_FORMAT,
            }
        # another encoding is another corpus; utf-8 (the default) keeps the keys of caches built before it
        enc = {} if self.encoding == "utf-8" else {"encoding": self.encoding}
        for key, path in (("text_dir", self.text_dir), ("disk_dataset", self.disk_dataset)):
            if path is not None:
                files = sorted(p for p in path.rglob("*") if p.is_file())
                stamp = [(str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
                return {
                    key: str(path.resolve()),
                    "files": stamp,
                    "rows": self.max_rows,
                    "smoke": self.smoke,
                    "column": self.text_column,
                    "split": self.hf_split,
                    "v": CACHE_FORMAT,
                    **(enc if key == "text_dir" else {}),
                }
        if self.text_file is not None:
            st = self.text_file.stat() if self.text_file.is_file() else None
            return {
                "text_file": str(self.text_file.resolve()),
                "size": st and st.st_size,
                "mtime": st and st.st_mtime_ns,
                "smoke": self.smoke,
                **enc,
            }
        return {
            "generated": CACHE_FORMAT,
            "seed": self.seed,
            "n_docs": self.n_docs,
            "sentences": [self.min_sentences, self.max_sentences],
            "topic_bias": self.topic_bias,
            "zipf_s": self.zipf_s,
            **({"present_prob": self.present_prob} if self.present_prob else {}),
        }

    def _raw(self) -> dict[str, list]:
        if getattr(self, "_raw_cache", None) is None:
            self._raw_cache = self._read_raw()
        return self._raw_cache

    def _read_raw(self) -> dict[str, list]:
        if self.real_text:
            if self.text_file is not None:
                texts, docs = read_text_file(self.text_file, self.encoding)
            elif self.text_dir is not None:
                texts, docs = read_text_dir(self.text_dir, self.encoding, self._dir_files)
            elif self.disk_dataset is not None:
                texts, docs = read_disk_dataset(
                    self.disk_dataset, self.hf_split, self.text_column, self.max_rows
                )
            else:
                texts, docs = read_hub_dataset(
                    self.hf_dataset,
                    self.hf_config,
                    self.hf_split,
                    self.text_column,
                    self.streaming,
                    self.max_rows,
                )
            if self.smoke:  # a few hundred sentences are enough for a smoke run
                texts, docs = texts[:400], docs[:400]
            return {"text": texts, "doc": docs}
        corpus = generate_corpus(
            self.n_docs,
            self.seed,
            self.min_sentences,
            self.max_sentences,
            topic_bias=self.topic_bias,
            zipf_s=self.zipf_s,
            present_prob=self.present_prob,
        )
        words, groups, docs = [], [], []
        for d, (_topic, sents) in enumerate(corpus):
            for s in sents:
                words.append(list(s.words))
                groups.append([GROUP_ID[g] for g in s.groups])
                docs.append(d)
        return {"words": words, "groups": groups, "doc": docs}

    # -- tokenizer --------------------------------------------------------------------------------------------
    def build_tokenizer(self):
        """The named tokenizer, or the cached / freshly trained WordPiece tokenizer of this corpus."""
        if self.tokenizer_name:
            return load_tokenizer(self.tokenizer_name)
        from transformers import PreTrainedTokenizerFast

        fp = _fingerprint({"source": self._source_key(), "vocab": self.vocab_size, "lower": self.lowercase})
        path = self.cache_dir / "pos_bert" / f"tokenizer-{fp}"
        if (path / "tokenizer.json").is_file():
            self.cache_hits["tokenizer"] = True
            log.info("tokenizer cache hit: %s", path)
            return PreTrainedTokenizerFast.from_pretrained(str(path))
        self.cache_hits["tokenizer"] = False
        raw = self._raw()
        texts = raw["text"] if "text" in raw else [" ".join(w) for w in raw["words"]]
        marks = self.placeholders if self.real_text else ()
        tok = train_wordpiece(texts, self.vocab_size, self.lowercase, marks)
        remove_stale_temps(path.parent)  # left by killed runs; never read as a cache
        atomic_write(path, lambda tmp: tok.save_pretrained(str(tmp)), what="tokenizer cache")
        log.info("tokenizer cache built: %s (a trained WordPiece tokenizer, %d pieces)", path, len(tok))
        return tok

    # -- tagged dataset ----------------------------------------------------------------------------------------
    def build_tagged(self, tokenizer):
        """Word-pieces with group ids per sentence (``input_ids``, ``pos``, ``doc``), cached as Arrow."""
        import datasets

        fp = _fingerprint(
            {"source": self._source_key(), "tokenizer": tokenizer_fingerprint(tokenizer), "v": CACHE_FORMAT}
        )
        path = self.cache_dir / "pos_bert" / f"tagged-{fp}"
        if (path / "dataset_info.json").is_file():
            self.cache_hits["tagged"] = True
            log.info("tagged corpus cache hit: %s", path)
            return datasets.load_from_disk(str(path))
        self.cache_hits["tagged"] = False
        raw = self._raw()
        if self.real_text:
            require_nltk_tagger()
            load_nltk_tagger()  # here, once: the num_proc worker processes forked by map inherit it
        ds = datasets.Dataset.from_dict(raw)
        remove = [c for c in ("text", "words", "groups") if c in ds.column_names]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = ds.map(
                tag_and_tokenize,
                batched=True,
                batch_size=256,
                # num_proc=1 in this process (datasets would start a pool of one worker)
                num_proc=self.num_proc if self.num_proc > 1 and len(ds) >= 2 * self.num_proc else None,
                remove_columns=remove,
                fn_kwargs={
                    "tokenizer": tokenizer,
                    "placeholders": self.placeholders if self.real_text else (),
                },
                desc="POS tagging + tokenizing",
                new_fingerprint=fp,
            )
        ds = ds.filter(lambda n: len(n) > 0, input_columns="input_ids")
        remove_stale_temps(path.parent)  # left by killed runs; never read as a cache
        atomic_write(path, lambda tmp: ds.save_to_disk(str(tmp)), what="tagged dataset cache")
        log.info("tagged corpus cache built: %s (%d sentences)", path, len(ds))
        return datasets.load_from_disk(str(path))

    def setup(self, stage: str | None = None) -> None:
        if self.tagged is not None:
            return
        self.tokenizer = self.build_tokenizer()
        self.tagged = self.build_tagged(self.tokenizer)
        self._raw_cache = None
        if len(self.tagged) == 0:
            raise DataError(f"{self.corpus_name}: the corpus has no token after tokenization (empty corpus).")
        table = self.tagged.data
        docs = np.asarray(table.column("doc").to_pylist(), dtype=np.int64)
        input_ids = table.column("input_ids").to_pylist()
        pos = table.column("pos").to_pylist()
        chunk = max(1, (self.max_length - 3) // 2)  # two chunks fill a pair: none is truncated
        input_ids, pos, docs, n_long, longest = split_long_sentences(
            input_ids, pos, docs, self.max_length, chunk
        )
        if n_long:
            log.warning(
                "%s: %d sentence(s) longer than data.max_length=%d word-pieces (the longest %d) were split into "
                "chunks of at most %d; a line without a sentence end (. ! ?) is read as one sentence.",
                self.corpus_name,
                n_long,
                self.max_length,
                longest,
                chunk,
            )
        flat = np.concatenate([np.asarray(p, dtype=np.int64) for p in pos]) if len(pos) else np.zeros(0, int)
        counts = np.bincount(flat[flat >= 0], minlength=len(ALL_GROUPS))
        self.group_counts = {g: int(c) for g, c in zip(ALL_GROUPS, counts)}
        self.unigram_log_probs, self.context_free_reference = unigram_reference(
            input_ids, pos, len(self.tokenizer)
        )
        missing = [g for g in GROUPS if self.group_counts[g] == 0]
        if missing:
            where = self.text_file or "the generated corpus"
            warnings.warn(
                f"{where} has no token of POS group(s) {', '.join(missing)}: their losses are skipped "
                f"(count 0) and the other groups still train.",
                stacklevel=2,
            )
        self.n_documents = int(len(np.unique(docs)))
        lengths = np.asarray([len(x) for x in input_ids], dtype=np.int64)
        a0, a1, b0, b1, label = build_nsp_pairs(
            docs, self.seed, self.nsp_random_prob, lengths, self.segment_tokens
        )
        if len(a0) == 0:
            raise DataError(
                f"{self.corpus_name}: no document has two sentences, so no NSP pair can be built."
            )
        tok = self.tokenizer
        n_val = max(1, int(round(self.val_fraction * len(a0))))
        if len(a0) - n_val < 2:
            raise DataError(
                f"{self.corpus_name}: the corpus yields {len(a0)} NSP pair(s) ({len(input_ids)} sentences in "
                f"{self.n_documents} document(s)), {n_val} of them for validation (data.val_fraction="
                f"{self.val_fraction}); pre-training needs at least 2 training pairs and 1 validation pair: "
                "give it more text."
            )
        perm = np.random.default_rng(self.seed + 1).permutation(len(a0))
        val_idx, train_idx = perm[:n_val], perm[n_val:]
        seen = repeated_segments(input_ids, a0, a1, train_idx, val_idx)
        if 2 * seen >= n_val:
            raise DataError(
                f"{self.corpus_name}: {seen} of the {n_val} validation pairs open with a segment that is also "
                "a training pair's (the text repeats itself), so validation would measure memorisation: "
                "give it text that does not repeat."
            )

        def subset(idx):
            return NSPPairs(
                input_ids,
                pos,
                a0[idx],
                a1[idx],
                b0[idx],
                b1[idx],
                label[idx],
                tok.cls_token_id,
                tok.sep_token_id,
                self.max_length,
            )

        self.train_set, self.val_set = subset(train_idx), subset(val_idx)
        kw = dict(
            pad_id=tok.pad_token_id,
            mask_id=tok.mask_token_id,
            vocab_size=len(tok),
            num_special=len(SPECIAL_TOKENS) if not self.tokenizer_name else 0,
            mlm_probability=self.mlm_probability,
            mask_replace_prob=self.mask_replace_prob,
            random_replace_prob=self.random_replace_prob,
            stratify=self.stratify,
        )
        # both deterministic: training masks from (seed, the batch's example indices), see PosMaskingCollator
        self.train_collator = PosMaskingCollator(**kw, seed=self.seed + 7_919)
        self.val_collator = PosMaskingCollator(**kw, seed=self.seed)
        log.info(
            "PoS-BERT data: %d sentences, %d train / %d val pairs, vocab %d, group tokens %s",
            len(self.tagged),
            len(self.train_set),
            len(self.val_set),
            len(tok),
            self.group_counts,
        )

    def train_dataloader(self):
        # resumable: the epoch-seeded order and the position within the epoch ride in the checkpoint
        return resumable_loader(
            self.train_set,
            batch_size=self.batch_size,
            shuffle=True,
            seed=self.seed,
            drop_last=len(self.train_set) > self.batch_size,
            collate_fn=self.train_collator,
            num_workers=self.num_workers,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            self.val_set,
            batch_size=self.batch_size,
            shuffle=False,
            collate_fn=self.val_collator,
            num_workers=self.num_workers,
        )
