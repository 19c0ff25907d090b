"""Text corpora for PoS-BERT: sentences and their document index from local files, folders and datasets.

- :func:`split_documents` splits lines into sentences and documents (a blank line or a ``= Title =``
  heading ends a document).
- :func:`check_encoding`, :func:`decode_error`, :func:`check_text_file`, :func:`text_dir_files`: start-up
  checks of local text (encodings, binary files, the byte offset of a decoding error).
- :func:`read_text_file`, :func:`read_text_dir`, :func:`read_hub_dataset` (optionally streamed),
  :func:`read_disk_dataset` (``save_to_disk``), :func:`read_hub_sources` (several hub datasets in a row, e.g.
  Wikipedia + BookCorpus): the readers of ``data.corpus.text_file`` / ``text_dir`` / ``hf_dataset`` /
  ``disk_dataset`` / ``hf_sources``.
"""

from __future__ import annotations

import codecs
import logging
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

from utils.errors import ConfigError, DataError

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------
# Corpus sources
# ---------------------------------------------------------------------------------------------------------
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


def iter_sentences(lines, where: str) -> Iterator[tuple[str, int]]:
    """``(sentence, document index)`` from lines of text, lazily: a blank line or a WikiText heading
    (``= Title =``) ends a document; a line holding several sentences is split after ``.``/``!``/``?``.
    Raises ``DataError`` naming ``where`` at the end when there was no sentence."""
    doc, open_doc, any_sentence = 0, False, False
    for line in lines:
        line = line.strip()
        if not line or (line.startswith("=") and line.endswith("=")):
            if open_doc:
                doc, open_doc = doc + 1, False
            continue
        for sent in _SENTENCE_END.split(line):
            open_doc = any_sentence = True
            yield sent, doc
    if not any_sentence:
        raise DataError(f"{where} contains no sentence (empty corpus).")


def split_documents(lines, where: str) -> tuple[list[str], list[int]]:
    """Sentences and their document index from lines of text, as lists (see :func:`iter_sentences`)."""
    texts, docs = [], []
    for text, doc in iter_sentences(lines, where):
        texts.append(text)
        docs.append(doc)
    return texts, docs


def _sentences(lines, where: str, lazy: bool):
    """The readers' result: the lazy ``(sentence, doc)`` iterator, or the two lists."""
    return iter_sentences(lines, where) if lazy else split_documents(lines, where)


#: sentences a record batch of :func:`write_sentences` holds (the most it keeps in memory at once)
ROWS_PER_BATCH = 10_000


def write_sentences(rows: Iterator[tuple[str, int]], path: Path, batch_rows: int | None = None) -> int:
    """Write ``(sentence, doc)`` rows to ``path`` as an Arrow stream file (columns ``text``, ``doc``; what
    ``datasets.Dataset.from_file`` memory-maps), a record batch of ``batch_rows`` at a time, so that a corpus is
    never held in memory whole. Returns the rows written."""
    import itertools

    import pyarrow as pa

    schema = pa.schema([("text", pa.string()), ("doc", pa.int64())])
    size, written = int(batch_rows or ROWS_PER_BATCH), 0
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        while chunk := list(itertools.islice(rows, size)):
            texts, docs = zip(*chunk)
            writer.write_batch(pa.record_batch([pa.array(texts, pa.string()), pa.array(docs, pa.int64())], schema=schema))
            written += len(chunk)
    return written


_SNIFF_BYTES = 8192  # bytes read to tell a binary file from a text file
_BINARY_UNDECODABLE = 0.3  # share of undecodable characters in those bytes above which a file is binary


def check_encoding(encoding: str) -> str:
    """The codec's canonical name (``utf-8``, ``iso8859-1``, ...); ``ConfigError`` naming ``data.corpus.encoding``."""
    try:
        return codecs.lookup(encoding).name
    except (LookupError, TypeError):
        raise ConfigError(
            f"data.corpus.encoding={encoding!r} is not a text encoding Python knows (e.g. utf-8, latin-1, cp1252)."
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
                    f"set data.corpus.encoding=latin-1 (or the file's encoding, e.g. cp1252)."
                )
            if final:
                return None
            fed += len(chunk)
            lines += chunk.count(b"\n")


def _decode_failure(path: Path, encoding: str, key: str) -> DataError:
    return decode_error(path, encoding, key) or DataError(
        f"{key}: {path} does not decode as {encoding}; set data.corpus.encoding=latin-1 (or its encoding)."
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
    """``data.corpus.text_file`` at start-up, before any pre-training (bytes only: no sentence splitting, no tagging):
    a missing file, a binary one (NUL bytes, or mostly undecodable) or one that does not decode as
    ``encoding`` (naming the byte offset) fails with one sentence."""
    if not path.is_file():
        raise DataError(f"data.corpus.text_file: {path} does not exist.")
    encoding = check_encoding(encoding)
    reason = _binary_reason(path, encoding)
    if reason is not None:
        raise DataError(
            f"data.corpus.text_file: {path} looks binary, not {encoding} text ({reason}): point data.corpus.text_file at a "
            f"text file (or set data.corpus.encoding if it is text in another encoding, e.g. utf-16)."
        )
    err = decode_error(path, encoding, "data.corpus.text_file")
    if err is not None:
        raise err


def read_text_file(path: Path, encoding: str = "utf-8", lazy: bool = False):
    """Sentences and their document index from a text file in ``encoding`` (see :func:`split_documents`; with
    ``lazy``, the ``(sentence, doc)`` iterator of :func:`iter_sentences`, as every reader here). Raises
    ``DataError`` naming the file when it is missing, does not decode (with the byte offset) or has no sentence."""
    if not path.is_file():
        raise DataError(f"data.corpus.text_file: {path} does not exist.")
    encoding = check_encoding(encoding)

    def lines():
        try:
            with path.open(encoding=encoding) as f:
                yield from f
        except UnicodeDecodeError:
            raise _decode_failure(path, encoding, "data.corpus.text_file") from None

    return _sentences(lines(), f"data.corpus.text_file: {path}", lazy)


def text_dir_files(path: Path, encoding: str = "utf-8") -> list[Path]:
    """The text files of a ``data.corpus.text_dir`` (``*.txt``, searched recursively, sorted). A binary file (NUL bytes,
    or mostly undecodable as ``encoding``) is skipped with a warning naming it; ``DataError`` naming the folder
    when it is missing or no text file is left."""
    if not path.is_dir():
        raise DataError(f"data.corpus.text_dir: {path} is not a folder.")
    encoding = check_encoding(encoding)
    files = sorted(p for p in path.rglob("*.txt") if p.is_file())
    if not files:
        raise DataError(f"data.corpus.text_dir: {path} holds no .txt file.")
    texts = []
    for f in files:
        reason = _binary_reason(f, encoding)
        if reason is None:
            texts.append(f)
        else:
            log.warning(
                "data.corpus.text_dir: skipping %s: it looks binary, not %s text (%s).", f, encoding, reason
            )
    if not texts:
        raise DataError(
            f"data.corpus.text_dir: {path} holds no text file: its {len(files)} .txt file(s) all look binary "
            f"(NUL bytes or mostly undecodable as {encoding}); if they are text, set data.corpus.encoding."
        )
    return texts


def read_text_dir(path: Path, encoding: str = "utf-8", files: list[Path] | None = None, lazy: bool = False):
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
                raise _decode_failure(f, encoding, "data.corpus.text_dir") from None
            yield ""  # a file ends its last document

    return _sentences(lines(), f"data.corpus.text_dir: {path}", lazy)


def _text_column(ds, column: str, where: str) -> None:
    names = ds.column_names or []
    if names and column not in names:
        raise ConfigError(
            f"data.corpus.text_column={column!r} is not a column of {where} ({', '.join(names)})."
        )


def read_hub_dataset(
    name: str,
    config: str | None,
    split: str,
    column: str,
    streaming: bool = False,
    max_rows: int | None = None,
    lazy: bool = False,
):
    """Sentences and document index from a ``datasets`` hub dataset's text column (e.g. WikiText).

    With ``streaming`` the rows are read lazily (corpora larger than the disk) and only the first
    ``max_rows`` are kept; each row is a document when the rows are whole documents (Wikipedia,
    BookCorpus-style), or a line of one (WikiText, whose blank rows and headings separate documents)."""
    import itertools

    where = f"data.corpus.hf_dataset={name!r}"
    ds = _load_hub(name, config, split, streaming, "data.corpus.hf_dataset")
    _text_column(ds, column, name)
    rows = (row[column] for row in itertools.islice(ds, max_rows))  # no further than max_rows, row by row
    return _sentences(_rows_as_lines(rows), where, lazy)


def _load_hub(name: str, config: str | None, split: str, streaming: bool, key: str):
    """``datasets.load_dataset`` of a hub dataset's split; one sentence naming ``key`` when it cannot be loaded."""
    import datasets

    try:
        return datasets.load_dataset(name, config, split=split, streaming=streaming)
    except Exception as e:  # offline, missing, renamed: one sentence for all
        raise DataError(
            f"{key}={name!r} (config {config!r}, split {split!r}) could not be loaded from the hub or its cache "
            f"({type(e).__name__}); offline, use data.corpus.text_file=<local text file> or data.corpus.text_dir."
        ) from None


#: the keys of one entry of ``data.corpus.hf_sources`` and their defaults (``hf_dataset`` has none)
HUB_SOURCE_DEFAULTS = {
    "hf_config": None,
    "hf_split": "train",
    "text_column": "text",
    "max_rows": None,
    "document_rows": None,
}


def hub_source(source, streaming: bool, index: int):
    """Entry ``index`` of ``data.corpus.hf_sources`` as a lazy ``datasets.IterableDataset`` with one column
    ``text``, one whole document a row: its first ``max_rows`` rows, each a document, or with ``document_rows``
    every ``document_rows`` consecutive rows joined into one (a corpus of one sentence a row, e.g. BookCorpus)."""
    key = f"data.corpus.hf_sources[{index}]"
    unknown = sorted(set(source) - {"hf_dataset", *HUB_SOURCE_DEFAULTS})
    if unknown or not source.get("hf_dataset"):
        raise ConfigError(
            f"{key} needs hf_dataset and takes {', '.join(HUB_SOURCE_DEFAULTS)}"
            + (f"; {unknown[0]!r} is not one of them." if unknown else ".")
        )
    opts = {**HUB_SOURCE_DEFAULTS, **source}
    name, column, rows = opts["hf_dataset"], opts["text_column"], opts["document_rows"]
    ds = _load_hub(name, opts["hf_config"], opts["hf_split"], streaming, f"{key}.hf_dataset")
    if not streaming:
        ds = ds.to_iterable_dataset()
    _text_column(ds, column, name)
    ds = ds.select_columns([column])
    if column != "text":
        ds = ds.rename_column(column, "text")
    if opts["max_rows"]:
        ds = ds.take(int(opts["max_rows"]))
    if rows:
        ds = ds.map(lambda b: {"text": ["\n".join(t or "" for t in b["text"])]}, batched=True, batch_size=int(rows))
    return ds


def read_hub_sources(sources, streaming: bool = False, lazy: bool = False):
    """Sentences and document index of ``data.corpus.hf_sources``: each entry read as :func:`hub_source` says,
    the entries one after the other in the configured order (``datasets.concatenate_datasets``), each row of the
    result one document (its lines split into sentences by :func:`split_documents`)."""
    import datasets

    if isinstance(sources, Mapping) or not sources:
        raise ConfigError("data.corpus.hf_sources must be a list of hub datasets (each with hf_dataset).")
    combined = datasets.concatenate_datasets([hub_source(s, streaming, i) for i, s in enumerate(sources)])

    def lines():
        for row in combined:
            yield from (row["text"] or "").splitlines()
            yield ""  # a row ends its document

    return _sentences(lines(), "data.corpus.hf_sources", lazy)


def read_disk_dataset(path: Path, split: str, column: str, max_rows: int | None = None, lazy: bool = False):
    """Sentences and document index from a dataset saved with ``save_to_disk`` (a Dataset or a
    DatasetDict, whose ``split`` is used)."""
    import itertools

    import datasets

    if not path.exists():
        raise DataError(f"data.corpus.disk_dataset: {path} does not exist.")
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # noqa: BLE001 - not a saved dataset
        raise DataError(
            f"data.corpus.disk_dataset: {path} is not a dataset saved with save_to_disk ({type(e).__name__})."
        ) from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise ConfigError(f"data.corpus.hf_split={split!r} is not a split of {path} ({', '.join(ds)}).")
        ds = ds[split]
    _text_column(ds, column, str(path))
    rows = (row[column] for row in itertools.islice(ds, max_rows))
    return _sentences(_rows_as_lines(rows), f"data.corpus.disk_dataset: {path}", lazy)


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

