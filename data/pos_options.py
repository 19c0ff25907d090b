"""Options of :class:`data.pos_bert.PosBertDataModule`, one frozen dataclass per section of
``conf/data/pos_corpus.yaml``: ``data.corpus``, ``data.tokenizer``, ``data.nsp``, ``data.masking``, ``data.loader``.

Hydra hands each section over as a mapping; :func:`section` builds its dataclass from it, and a key the
dataclass lacks stops with one sentence naming ``data.<section>.<key>``. Each ``__post_init__`` checks the
values it can check alone (the paths are checked by the data module, which reads them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from types import UnionType
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

from data.pos_grammar import CONJUNCTION_SHARE
from data.pos_masking import NSP_RANDOM_B
from utils.errors import ConfigError, DataError

#: the real-text sources of ``data.corpus``, at most one of which is set
SOURCES = ("text_file", "text_dir", "hf_dataset", "disk_dataset", "hf_sources")


def _set(obj: Any, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)  # a frozen dataclass normalising its own field


@dataclass(frozen=True)
class CorpusOptions:
    """``data.corpus``: where the sentences come from (real text, or the generated grammar corpus)."""

    text_file: str | None = None
    text_dir: str | None = None
    hf_dataset: str | None = None
    disk_dataset: str | None = None
    hf_sources: tuple[dict, ...] = ()  # several hub datasets read one after the other (data/text_sources.py)
    hf_config: str | None = None
    hf_split: str = "train"
    text_column: str = "text"
    encoding: str = "utf-8"
    streaming: bool = False
    max_rows: int | None = None
    max_text_sentences: int | None = None
    placeholders: tuple[str, ...] = ()
    n_docs: int = 2000
    min_sentences: int = 4
    max_sentences: int = 10
    topic_bias: float = 0.75
    present_prob: float = 0.0
    doc_nouns: int = 0
    zipf_s: float = 1.0
    conjunction_share: float | None = None
    num_proc: int = 1

    def __post_init__(self) -> None:
        chosen = self.sources
        if len(chosen) > 1:
            raise ConfigError(
                f"data: choose one text source, got {', '.join('data.corpus.' + k for k in chosen)}."
            )
        if self.streaming and not (self.hf_dataset or self.hf_sources):
            raise ConfigError(
                "data.corpus.streaming=true reads a hub dataset: set data.corpus.hf_dataset too."
            )
        if self.n_docs <= 0 and not chosen:
            raise DataError(
                f"data.corpus.n_docs={self.n_docs}: the generated corpus is empty; set it to at least 2."
            )
        if self.max_text_sentences is not None and int(self.max_text_sentences) < 1:
            raise ConfigError(
                f"data.corpus.max_text_sentences={self.max_text_sentences} must be >= 1 (or null: all)."
            )
        if not 0.0 <= float(self.present_prob) <= 1.0:
            raise ConfigError(
                f"data.corpus.present_prob={self.present_prob} must be a probability in [0, 1]."
            )
        if int(self.doc_nouns) < 0:
            raise ConfigError(
                f"data.corpus.doc_nouns={self.doc_nouns} must be >= 0 (0: no per-document cast of nouns)."
            )
        share = self.conjunction_share
        if share is not None and not 0.0 < float(share) <= CONJUNCTION_SHARE:
            raise ConfigError(
                f"data.corpus.conjunction_share={share} must be in (0, {CONJUNCTION_SHARE:.4f}] (the generated "
                "grammar's own share of conjunction words; null: the grammar as written)."
            )
        if share is not None and chosen:
            raise ConfigError(
                f"data.corpus.conjunction_share dials the generated corpus; unset it or data.corpus.{chosen[0]}."
            )
        marks = self.placeholders
        if isinstance(marks, str) or not all(isinstance(p, str) and p.strip() for p in marks):
            raise ConfigError(f"data.corpus.placeholders must be a list of non-empty strings, got {marks!r}.")
        _set(self, "placeholders", tuple(marks))
        _set(self, "hf_sources", tuple(self.hf_sources))
        _set(self, "streaming", bool(self.streaming))
        _set(self, "max_rows", int(self.max_rows) if self.max_rows else None)
        if self.max_text_sentences is not None:
            _set(self, "max_text_sentences", int(self.max_text_sentences))
        _set(self, "present_prob", float(self.present_prob))
        _set(self, "doc_nouns", int(self.doc_nouns))
        _set(self, "num_proc", max(1, int(self.num_proc)))

    @property
    def sources(self) -> list[str]:
        """The real-text source keys that are set (none: the generated corpus)."""
        return [k for k in SOURCES if getattr(self, k)]


@dataclass(frozen=True)
class TokenizerOptions:
    """``data.tokenizer``: a named tokenizer, or the WordPiece tokenizer trained on the corpus."""

    name: str | None = None
    vocab_size: int = 4096
    lowercase: bool = True


@dataclass(frozen=True)
class NSPOptions:
    """``data.nsp``: how sentence pairs are cut and drawn, and the share held out for validation."""

    random_prob: float = 0.5
    random_b: str = "fill"
    segment_tokens: int | None = None
    val_fraction: float = 0.05

    def __post_init__(self) -> None:
        if self.random_b not in NSP_RANDOM_B:
            raise ConfigError(
                f"data.nsp.random_b must be one of {', '.join(NSP_RANDOM_B)}, got {self.random_b!r}."
            )
        if self.segment_tokens is not None and int(self.segment_tokens) < 0:
            raise ConfigError(
                f"data.nsp.segment_tokens={self.segment_tokens} must be >= 0 (0: one sentence per segment)."
            )


@dataclass(frozen=True)
class MaskingOptions:
    """``data.masking``: the BERT masking of word-pieces (the collator checks the probabilities)."""

    mlm_probability: float = 0.15
    mask_replace_prob: float = 0.8
    random_replace_prob: float = 0.1
    stratify: bool = False


@dataclass(frozen=True)
class LoaderOptions:
    """``data.loader``: the DataLoaders."""

    batch_size: int = 32
    num_workers: int = 0


T = TypeVar("T")


def section(cls: type[T], value: Any, name: str) -> T:
    """``cls`` built from ``value`` (an instance, a mapping such as Hydra's DictConfig, or None: the defaults);
    ``name`` is the section's config key (``corpus``) for the error of a key ``cls`` lacks."""
    if isinstance(value, cls):
        return value
    if value is None:
        return cls()
    if not isinstance(value, Mapping):
        raise ConfigError(f"data.{name} must be a mapping of its options, got {value!r}.")
    # a plain dict of plain values: Hydra's DictConfig / ListConfig read as the mapping and sequences they are
    value = {k: _plain(v) for k, v in value.items()}
    known = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    unknown = [k for k in value if k not in known]
    if unknown:
        raise ConfigError(f"data.{name}.{unknown[0]} is not an option of data.{name} ({', '.join(known)}).")
    hints = get_type_hints(cls)
    for key, item in value.items():
        allowed = _types(hints[key])
        if not isinstance(item, allowed) or (isinstance(item, bool) and bool not in allowed):
            kinds = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
            raise ConfigError(f"data.{name}.{key}={item!r} must be {kinds}.")
    return cls(**value)


def _plain(item: Any) -> Any:
    """``item`` with every mapping a dict and every sequence but a string a list (recursively)."""
    if isinstance(item, Mapping):
        return {k: _plain(v) for k, v in item.items()}
    if isinstance(item, Sequence) and not isinstance(item, (str, bytes)):
        return [_plain(v) for v in item]
    return item


def _types(hint: Any) -> tuple[type, ...]:
    """The Python types a config value of a field typed ``hint`` may have (a YAML list for a tuple)."""
    if get_origin(hint) in (Union, UnionType):
        return tuple(t for arg in get_args(hint) for t in _types(arg))
    if get_origin(hint) is tuple:
        return (list, tuple)
    return (int, float) if hint is float else (hint,)


#: the keys of the flat layout (before the sections) -> where each lives now
MOVED = {
    **{f.name: f"corpus.{f.name}" for f in fields(CorpusOptions)},
    "tokenizer": "tokenizer.name",
    "vocab_size": "tokenizer.vocab_size",
    "lowercase": "tokenizer.lowercase",
    "nsp_random_prob": "nsp.random_prob",
    "nsp_random_b": "nsp.random_b",
    "segment_tokens": "nsp.segment_tokens",
    "val_fraction": "nsp.val_fraction",
    **{f.name: f"masking.{f.name}" for f in fields(MaskingOptions)},
    **{f.name: f"loader.{f.name}" for f in fields(LoaderOptions)},
}


def moved_key_error(keys: Mapping[str, Any]) -> ConfigError:
    """The error for keys the data module does not take: a key of the flat layout names its new place."""
    key = next(iter(keys))
    if key in MOVED:
        return ConfigError(f"data.{key} is now data.{MOVED[key]} (the PoS-BERT data options are grouped).")
    return ConfigError(
        f"data.{key} is not an option of the PoS-BERT data (cache_dir, seed, max_length, corpus, tokenizer, "
        "nsp, masking, loader)."
    )


def nest_flat_options(data: Any) -> None:
    """Move the keys of a flat-layout ``data`` config (a run directory's config.yaml written before the
    sections) into their sections, in place; a config already in sections is left as it is."""
    for key in sorted((k for k in list(data) if k in MOVED), key=lambda k: k != "tokenizer"):  # it first
        if key == "tokenizer" and not (data[key] is None or isinstance(data[key], str)):
            continue  # already the tokenizer section
        sec, _, name = MOVED[key].partition(".")
        value = data.pop(key)
        if sec not in data or data[sec] is None:
            data[sec] = {}
        data[sec][name] = value
