"""The tagged corpus as flat arrays (data.pos_arrays): views of the Arrow buffers, chunking, spans, keys, memory."""

import tracemalloc

import numpy as np
import pyarrow as pa

from data.pos_arrays import SentenceArrays
from data.pos_bert import PosBertDataModule
from data.pos_masking import repeated_segments

IDS = [[1, 2, 3], list(range(100, 170)), [4, 5], [1, 2, 3], [6]]  # the second "sentence" has 70 pieces
POS = [[0, 0, 0], [k % 10 for k in range(70)], [1, -100], [2, 2, 2], [3]]
DOCS = [0, 0, 1, 1, 2]


def _table(ids=IDS, pos=POS, docs=DOCS, cut=2, pos_type="int8"):
    """A table of two record batches, ``[0, cut)`` and ``[cut, n)``; the first a slice of a longer array (its
    offsets do not start at 0), as a slice of a memory-mapped table can be."""

    def column(rows, kind):
        head = pa.array([[9, 9], *rows[:cut]], type=pa.list_(kind)).slice(1)
        return pa.chunked_array([head, pa.array(rows[cut:], type=pa.list_(kind))])

    doc = pa.chunked_array([pa.array(docs[:cut], pa.int64()), pa.array(docs[cut:], pa.int64())])
    return pa.table(
        {"doc": doc, "input_ids": column(ids, pa.int32()), "pos": column(pos, pa.type_for_alias(pos_type))}
    )


def _sentences(arrays):
    o = arrays.offsets
    return [[x.tolist() for x in arrays.span(int(o[i]), int(o[i + 1]))] for i in range(len(arrays))]


def test_the_arrays_are_views_of_the_arrow_buffers_and_give_back_every_sentence():
    table = _table()
    arrays = SentenceArrays.from_table(table)
    assert [s for s, _ in _sentences(arrays)] == IDS and [p for _, p in _sentences(arrays)] == POS
    assert arrays.docs.tolist() == DOCS and arrays.lengths.tolist() == [3, 70, 2, 3, 1]
    assert arrays.chunk_starts.tolist() == [0, 73, 79] and arrays.n_pieces == 79
    assert arrays.values[0].dtype == np.int32 and arrays.pos[0].dtype == np.int8
    for c, chunk in enumerate(table.column("input_ids").chunks):  # no copy of a word-piece
        assert np.shares_memory(arrays.values[c], np.frombuffer(chunk.values.buffers()[1], dtype=np.int32))
    # sentences 1..3 straddle the two chunks
    ids, groups = arrays.span(int(arrays.offsets[1]), int(arrays.offsets[4]))
    assert ids.tolist() == IDS[1] + IDS[2] + IDS[3] and groups.tolist() == POS[1] + POS[2] + POS[3]
    assert [len(x) for x in arrays.span(79, 79)] == [0, 0]
    assert arrays.group_counts(10).tolist() == [10, 8, 10, 8, 7, 7, 7, 7, 7, 7]  # -100 is not counted
    old = SentenceArrays.from_table(_table(pos_type="int64"))  # a cache written before pos was int8
    assert old.pos[1].dtype == np.int64 and _sentences(old) == _sentences(arrays)


def test_sentences_longer_than_max_length_are_split_into_chunks_without_copying():
    arrays = SentenceArrays.from_table(_table())
    split, n_split, longest = arrays.split_long(64, 30)
    assert (n_split, longest) == (1, 70)
    assert split.lengths.tolist() == [3, 30, 30, 10, 2, 3, 1] and split.docs.tolist() == [0, 0, 0, 0, 1, 1, 2]
    got = _sentences(split)
    assert sum((s for s, _ in got[1:4]), []) == IDS[1] and sum((p for _, p in got[1:4]), []) == POS[1]
    assert split.values is arrays.values  # the word-pieces stay where they are
    assert arrays.split_long(70, 30)[0] is arrays


def test_sentence_keys_tell_equal_sentences_and_segments_from_others():
    ids = [[1, 2, 3], [3, 2, 1], [1, 2, 3], [1, 2], [7, 8], [1, 2, 3], [3, 2, 1]]
    arrays = SentenceArrays.from_table(_table(ids, [[0] * len(x) for x in ids], list(range(7)), cut=3))
    keys = arrays.sentence_keys()
    assert keys[0] == keys[2] == keys[5] and keys[1] == keys[6]  # across the two chunks too
    assert len({int(keys[i]) for i in (0, 1, 3, 4)}) == 4
    # segments A: [0, 2) = [5, 7) and [2, 3) = [0, 1) are the same text; [3, 5) is new, and [0, 1) is not [0, 2)
    a0, a1 = np.array([0, 5, 2, 3, 0]), np.array([2, 7, 3, 5, 1])
    assert repeated_segments(keys, a0, a1, train_idx=[0, 4], val_idx=[1, 2, 3]) == 2
    assert repeated_segments(keys, a0, a1, train_idx=[4], val_idx=[0, 1, 2, 3]) == 1
    assert repeated_segments(keys, a0, a1, train_idx=[3], val_idx=[0, 1, 2]) == 0


def test_setup_holds_a_few_bytes_of_python_heap_per_word_piece(tmp_path):
    """tracemalloc over ``setup()`` with warm caches, 400 generated documents (2,809 sentences, 29,064
    word-pieces): the sentences as Python lists (before data.pos_arrays) kept 43.4 bytes a word-piece after
    setup (peak 85.9); the flat arrays keep 4.0 (peak 19.8), per-sentence offsets and pairs, as the word-pieces
    stay in the memory-mapped Arrow cache, and the module's arrays are views of its buffers."""
    kw = dict(cache_dir=str(tmp_path), corpus={"n_docs": 400})
    PosBertDataModule(**kw).setup()  # builds the caches
    dm = PosBertDataModule(**kw)
    tracemalloc.start()
    try:
        dm.setup()
        kept, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    sentences = dm.train_set.sentences
    pieces = sentences.n_pieces
    assert pieces == 29_064
    assert kept / pieces < 8 and peak / pieces < 32  # lists: 43.4 and 85.9
    table = dm.tagged.data
    assert type(table).__name__ == "MemoryMappedTable"
    assert sentences.values[0].dtype == np.int32 and sentences.pos[0].dtype == np.int8  # 5 bytes a word-piece
    for c, chunk in enumerate(table.column("input_ids").chunks):
        assert np.shares_memory(sentences.values[c], np.frombuffer(chunk.values.buffers()[1], dtype=np.int32))
