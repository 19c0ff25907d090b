"""The tagged corpus as flat arrays plus offsets (CSR), read zero-copy from its memory-mapped Arrow cache.

:class:`SentenceArrays` holds every word-piece id and POS group of the corpus in the Arrow file's own buffers
(numpy views of each record batch: no Python object per word-piece, and the pages of the memory-mapped file are
shared by every process that maps it, e.g. the DDP ranks); per sentence it keeps only an ``int64`` start offset
and document index. Splitting over-long sentences refines the offsets; the word-pieces are never copied.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_B = np.uint64(0x9E3779B97F4A7C15)  # odd: invertible modulo 2**64
_B_INV = np.uint64(pow(int(_B), -1, 2**64))


@dataclass
class SentenceArrays:
    """Sentence ``i`` is the word-pieces ``[offsets[i], offsets[i + 1])`` of the corpus, of document ``docs[i]``.

    ``values`` / ``pos``: per Arrow record batch (chunk), its word-piece ids and their groups as numpy views of
    the Arrow buffers; chunk ``c`` holds the corpus positions ``[chunk_starts[c], chunk_starts[c + 1])``. A
    sentence never straddles two chunks.
    """

    values: list[np.ndarray]
    pos: list[np.ndarray]
    offsets: np.ndarray  # int64 (n + 1,)
    docs: np.ndarray  # int64 (n,)
    chunk_starts: np.ndarray  # int64 (chunks + 1,)

    def __len__(self) -> int:
        return len(self.docs)

    @property
    def lengths(self) -> np.ndarray:
        """Word-pieces per sentence."""
        return np.diff(self.offsets)

    @property
    def n_pieces(self) -> int:
        return int(self.offsets[-1])

    @classmethod
    def from_table(cls, table) -> SentenceArrays:
        """Views of a ``pyarrow`` table's ``input_ids`` / ``pos`` list columns and its ``doc`` column (no copy of
        a word-piece; ``doc`` is copied, 8 bytes a sentence, when it spans several chunks)."""
        ids, pos = table.column("input_ids"), table.column("pos")
        values, groups, offsets, starts = [], [], [np.zeros(1, np.int64)], [0]
        for ci, cp in zip(ids.chunks, pos.chunks, strict=True):
            off = ci.offsets.to_numpy()
            if not np.array_equal(off, cp.offsets.to_numpy()):
                raise ValueError("the tagged corpus has a sentence whose input_ids and pos differ in length.")
            values.append(ci.flatten().to_numpy(zero_copy_only=True))  # flatten honours a sliced chunk
            groups.append(cp.flatten().to_numpy(zero_copy_only=True))
            offsets.append(starts[-1] + (off[1:] - off[0]).astype(np.int64))
            starts.append(starts[-1] + len(values[-1]))
        docs = [c.to_numpy(zero_copy_only=True) for c in table.column("doc").chunks]
        return cls(
            values,
            groups,
            np.concatenate(offsets),
            docs[0] if len(docs) == 1 else np.concatenate(docs or [np.zeros(0, np.int64)]),
            np.asarray(starts, dtype=np.int64),
        )

    def split_long(self, max_length: int, chunk: int) -> tuple[SentenceArrays, int, int]:
        """Every sentence longer than ``max_length`` word-pieces split into consecutive pieces of at most ``chunk``,
        in its document (new offsets and docs; the word-pieces stay where they are). Returns ``(arrays,
        n_split, longest)``: ``n_split`` sentences were split, the longest had ``longest`` pieces."""
        lengths = self.lengths
        long = lengths > max_length
        if not long.any():
            return self, 0, 0
        parts = np.where(long, -(-lengths // chunk), 1)  # pieces of each sentence
        sentence = np.repeat(np.arange(len(lengths)), parts)
        first = np.repeat(np.cumsum(parts) - parts, parts)
        k = np.arange(len(sentence)) - first  # the piece's number in its sentence
        starts = self.offsets[:-1][sentence] + k * chunk
        offsets = np.concatenate([starts, self.offsets[-1:]])
        out = SentenceArrays(self.values, self.pos, offsets, self.docs[sentence], self.chunk_starts)
        return out, int(long.sum()), int(lengths[long].max())

    def span(self, start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, groups)`` of the corpus positions ``[start, end)`` (sentences ``i..j`` are
        ``span(offsets[i], offsets[j])``): views when they lie in one chunk."""
        if start >= end:
            return self.values[0][:0], self.pos[0][:0]
        c = int(self.chunk_starts.searchsorted(start, side="right")) - 1
        base = int(self.chunk_starts[c])
        if end <= self.chunk_starts[c + 1]:
            return self.values[c][start - base : end - base], self.pos[c][start - base : end - base]
        ids, groups = [], []
        while start < end:
            base, stop = int(self.chunk_starts[c]), min(end, int(self.chunk_starts[c + 1]))
            ids.append(self.values[c][start - base : stop - base])
            groups.append(self.pos[c][start - base : stop - base])
            start, c = stop, c + 1
        return np.concatenate(ids), np.concatenate(groups)

    def sentence_keys(self) -> np.ndarray:
        """A 64-bit hash of each sentence's word-pieces (``uint64``, equal for equal sentences), vectorised."""
        keys = np.empty(len(self), dtype=np.uint64)
        for c, ids in enumerate(self.values):
            lo, hi = np.searchsorted(self.offsets, self.chunk_starts[c : c + 2])
            local = self.offsets[lo : hi + 1] - self.chunk_starts[c]
            keys[lo:hi] = range_keys(_mix(ids.astype(np.uint64)), local[:-1], local[1:])
        return keys

    def group_counts(self, n_groups: int) -> np.ndarray:
        """Word-pieces of each group id ``0..n_groups-1`` (negative ids, the ignored pieces, are not counted)."""
        counts = np.zeros(n_groups, dtype=np.int64)
        for groups in self.pos:
            counts += np.bincount(groups[groups >= 0], minlength=n_groups)[:n_groups]
        return counts


def tagged_features():
    """The tagged cache's columns: ``pos`` as ``int8`` (group ids 0..9 and ``IGNORE``, -100), ``input_ids`` as
    ``int32``, so the arrays read in place are 5 bytes a word-piece. A cache written before (``pos`` as
    ``int64``) is read as it is."""
    from datasets import Features, List, Value

    return Features({"doc": Value("int64"), "input_ids": List(Value("int32")), "pos": List(Value("int8"))})


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on ``uint64`` values (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def range_keys(x: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """A hash of each range ``x[starts[i]:ends[i]]`` of the ``uint64`` values ``x``: the polynomial
    ``sum_k x[k] * B**(k - start)`` modulo 2**64 (from prefix sums, so every range costs O(1)), mixed with the
    range's length. Equal ranges get equal keys; others collide with probability about 2**-64."""
    n = len(x)
    with np.errstate(over="ignore"):
        powers = np.cumprod(np.r_[np.uint64(1), np.full(n, _B, dtype=np.uint64)], dtype=np.uint64)
        inverse = np.cumprod(np.r_[np.uint64(1), np.full(n, _B_INV, dtype=np.uint64)], dtype=np.uint64)
        prefix = np.r_[np.uint64(0), np.cumsum(x * powers[:n], dtype=np.uint64)]
        poly = (prefix[ends] - prefix[starts]) * inverse[starts]
        return poly ^ _mix((ends - starts).astype(np.uint64))
