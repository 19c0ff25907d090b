"""PoS-BERT examples and batches: NSP segment pairs, the :class:`NSPPairs` dataset and the masking collator.

- :func:`build_nsp_pairs` builds BERT's next-sentence-prediction segment pairs from the sentences of
  documents; :func:`repeated_segments` counts validation pairs whose segment A a training pair also opens with.
- :class:`NSPPairs`: ``[CLS] A [SEP] B [SEP]`` examples with per-token POS groups.
- :class:`PosMaskingCollator` masks word-pieces (BERT 15%, 80/10/10, optionally stratified over the groups)
  and carries the group of exactly the masked positions.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import torch

from data.pos_arrays import range_keys
from data.pos_grammar import ALL_GROUPS
from data.pos_tagging import IGNORE, SPECIAL_TOKENS
from utils.errors import ConfigError

# ---------------------------------------------------------------------------------------------------------
# NSP pairs
# ---------------------------------------------------------------------------------------------------------
NSP_RANDOM_B = ("fill", "sentences", "segment")


def build_nsp_pairs(
    docs: np.ndarray,
    seed: int,
    random_prob: float = 0.5,
    lengths: np.ndarray | None = None,
    segment_tokens: int = 0,
    random_b: str = "fill",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Segment pairs for next-sentence prediction, as BERT builds them.

    ``docs``: document index of each sentence (sentences of a document are consecutive); ``lengths``: their
    word-piece counts. Walking through each document, segment A takes consecutive sentences while they fit in
    ``segment_tokens`` word-pieces (at least one sentence, and one sentence of the document is left after it);
    B is the segment that follows A in the document (label 0, "is next") or, with ``random_prob``, a segment
    of as many word-pieces starting at a random sentence of another document (label 1). The next pair starts
    where A ended, so every sentence but a document's last opens a segment A once. ``segment_tokens=0``: one
    sentence per segment (A = a sentence, B = the next one). ``random_b`` says how a random B is drawn:

    - ``fill`` (BERT): from a random sentence of another document, filled to ``segment_tokens``; a true B is
      often the short rest of its document, so B's length tells them apart.
    - ``sentences``: as many whole sentences as its pair's true B (drawn, up to 20 times, where the other
      document has that many left); B's word-piece count and truncation still differ (a random B of long
      sentences overflows the pair and is cut mid-sentence).
    - ``segment``: the true B of a random pair slot of another document, so random and true Bs are the same
      segments, with the same lengths and ends: only whether A and B come from one document tells them apart.
      Its segments are packed blind: a segment takes consecutive sentences until it holds at least
      ``segment_tokens // 2`` word-pieces, whatever the next sentence's length (packing up to ``segment_tokens``
      makes a true B open with a sentence that did not fit in A, a length cue that a random B lacks), and a
      pair whose A or B the document's end leaves shorter than that is dropped.

    Returns ``(a_start, a_end, b_start, b_end, label)``, segments as half-open sentence ranges.
    """
    if random_b not in NSP_RANDOM_B:
        raise ValueError(f"random_b must be one of {', '.join(NSP_RANDOM_B)}, got {random_b!r}.")
    rng = np.random.default_rng(seed)
    docs = np.asarray(docs)
    lengths = np.ones(len(docs), dtype=np.int64) if lengths is None else np.asarray(lengths, dtype=np.int64)
    target = max(0, int(segment_tokens))
    bounds = np.flatnonzero(np.r_[True, docs[1:] != docs[:-1], True])  # document starts + n
    starts, ends = bounds[:-1], bounds[1:]
    if random_b == "segment":
        half = target // 2
        return _segment_pairs(starts, ends, _blind_grower(lengths, half), rng, random_prob, lengths, half)
    pairs = _walk_pairs(starts, ends, _grower(lengths, target), rng, random_prob, random_b == "sentences")
    if not pairs:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, empty, empty
    a0, a1, b0, b1, label = (np.asarray(c, dtype=np.int64) for c in zip(*pairs))
    return a0, a1, b0, b1, label


def _grower(lengths: np.ndarray, target: int):
    """``grow(i, stop)``: the end of the segment opening at sentence ``i``, before sentence ``stop``, that takes
    consecutive sentences while they fit in ``target`` word-pieces (at least sentence ``i``)."""

    def grow(i: int, stop: int) -> int:
        j, tokens = i + 1, lengths[i]
        while j < stop and tokens + lengths[j] <= target:
            tokens += lengths[j]
            j += 1
        return j

    return grow


def _blind_grower(lengths: np.ndarray, half: int):
    """``grow(i, stop)`` for ``random_b="segment"``: adds sentences while the segment holds fewer than ``half``
    word-pieces, never looking at the next one's length."""

    def grow_blind(i: int, stop: int) -> int:
        j, tokens = i + 1, lengths[i]
        while j < stop and tokens < half:
            tokens += lengths[j]
            j += 1
        return j

    return grow_blind


def _walk_pairs(starts, ends, grow, rng, random_prob: float, match_sentences: bool) -> list[tuple]:
    """``random_b="fill"|"sentences"``: walk each document into pairs, A = ``grow(i)`` leaving one sentence for
    its true B; with ``random_prob`` (and another document to draw from) B is a random one. Returns the pairs
    ``(a_start, a_end, b_start, b_end, label)`` in document order."""
    n = int(ends[-1])  # sentences in all (bounds end with n)
    doc_of = np.repeat(np.arange(len(starts)), ends - starts)  # document number of each sentence
    several = len(starts) > 1
    out = []
    for s, e in zip(starts, ends):
        i = s
        while i < e - 1:
            j = grow(i, e - 1)  # A = [i, j), leaving >= 1 sentence for its true B
            if several and rng.random() < random_prob:
                count = grow(j, e) - j if match_sentences else 0  # sentences of the true B
                out.append((i, j, *_random_b(rng, grow, s, e, n, count, ends, doc_of, match_sentences), 1))
            else:
                out.append((i, j, j, grow(j, e), 0))
            i = j
    return out


def _random_b(rng, grow, s: int, e: int, n: int, count: int, ends, doc_of, match_sentences: bool):
    """``(b_start, b_end)`` of a random B for a pair of the document ``[s, e)``: from a random sentence of
    another document, filled by ``grow``, or (``match_sentences``) ``count`` whole sentences, drawn up to 20
    times where the other document has that many left."""
    for _ in range(20 if match_sentences else 1):
        k = int(rng.integers(0, n - (e - s)))  # a sentence outside document d
        k = k if k < s else k + (e - s)
        if ends[doc_of[k]] - k >= count:
            break
    end = min(k + count, ends[doc_of[k]]) if match_sentences else grow(k, ends[doc_of[k]])
    return k, end


def _segment_pairs(starts, ends, grow, rng, random_prob: float, lengths, half: int):
    """``random_b="segment"``: walk every document into (A, true B) slots first, keeping those whose A and B
    both reach ``half`` word-pieces (where the document's end cuts one short, a short A comes with a short
    B: a cue of true pairs); then each slot keeps its true B or, with ``random_prob``, takes the true B of a
    uniformly drawn slot of another document."""
    cum = np.concatenate([[0], np.cumsum(lengths)])
    slots = []  # (a_start, a_end, b_start, b_end, document)
    for d, (s, e) in enumerate(zip(starts, ends)):
        i = s
        while i < e - 1:
            j = grow(i, e - 1)
            k = grow(j, e)
            if min(cum[j] - cum[i], cum[k] - cum[j]) >= half:
                slots.append((i, j, j, k, d))
            i = j
    if not slots:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, empty, empty
    table = np.asarray(slots, dtype=np.int64)
    slot_doc = table[:, 4]
    first = np.searchsorted(slot_doc, np.arange(len(starts)))  # first slot of each document
    count = np.bincount(slot_doc, minlength=len(starts))
    b0, b1, label = table[:, 2].copy(), table[:, 3].copy(), np.zeros(len(table), dtype=np.int64)
    for t, d in enumerate(slot_doc):
        others = len(table) - count[d]
        if others and rng.random() < random_prob:
            r = int(rng.integers(0, others))
            r = r if r < first[d] else r + count[d]
            b0[t], b1[t], label[t] = table[r, 2], table[r, 3], 1
    return table[:, 0].copy(), table[:, 1].copy(), b0, b1, label


def repeated_segments(sentence_keys: np.ndarray, a0, a1, train_idx, val_idx) -> int:
    """How many validation pairs open with a segment A whose text is also a training pair's segment A (text
    compared through ``sentence_keys``, a 64-bit hash of each sentence's word-pieces, and a hash of each
    segment's sentence keys; vectorised)."""
    segment = range_keys(np.asarray(sentence_keys, dtype=np.uint64), np.asarray(a0), np.asarray(a1))
    val_keys = segment[np.asarray(val_idx, dtype=np.int64)]
    return int(np.isin(val_keys, segment[np.asarray(train_idx, dtype=np.int64)]).sum())


class NSPPairs(torch.utils.data.Dataset):
    """``[CLS] A [SEP] B [SEP]`` examples (A and B: ranges of consecutive sentences of ``sentences``, a
    :class:`data.pos_arrays.SentenceArrays`) with per-token groups (``IGNORE`` on specials); longest-first
    truncation to ``max_length``."""

    def __init__(self, sentences, a0, a1, b0, b1, label, cls_id: int, sep_id: int, max_length: int):
        self.sentences = sentences
        self.a0, self.a1, self.b0, self.b1, self.label = a0, a1, b0, b1, label
        self.cls_id, self.sep_id, self.max_length = cls_id, sep_id, max_length

    def __len__(self) -> int:
        return len(self.a0)

    def _segment(self, start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        offsets = self.sentences.offsets
        return self.sentences.span(int(offsets[start]), int(offsets[end]))

    def __getitem__(self, i: int) -> dict[str, Any]:
        ta, pa = self._segment(self.a0[i], self.a1[i])
        tb, pb = self._segment(self.b0[i], self.b1[i])
        na, nb, budget = len(ta), len(tb), self.max_length - 3
        while na + nb > budget:  # longest first
            if na >= nb:
                na -= 1
            else:
                nb -= 1
        ta, pa, tb, pb = ta[:na].tolist(), pa[:na].tolist(), tb[:nb].tolist(), pb[:nb].tolist()
        ids = [self.cls_id, *ta, self.sep_id, *tb, self.sep_id]
        pos = [IGNORE, *pa, IGNORE, *pb, IGNORE]
        types = [0] * (na + 2) + [1] * (nb + 1)
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
            raise ConfigError(f"data.masking.mlm_probability={mlm_probability} must be in (0, 1].")
        if mask_replace_prob < 0 or random_replace_prob < 0 or mask_replace_prob + random_replace_prob > 1:
            raise ConfigError(
                "data.masking.mask_replace_prob + data.masking.random_replace_prob must be non-negative and sum to at most 1."
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
