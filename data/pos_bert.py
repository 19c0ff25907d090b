"""PoS-BERT data: the :class:`PosBertDataModule` (NSP pairs with POS-grouped masked word-pieces).

Pipeline (run once, cached under ``cache_dir``; never in the training loop):

1. Sentences with word-level POS groups: the embedded grammar (``data.pos_grammar``, gold groups) or real
   text (a local file or folder, a hub or saved dataset: ``data.text_sources``; documents end at blank lines
   or ``= Title =`` headings) tagged by NLTK ``pos_tag_sents`` on the words of the tokenizer's pre-tokenizer,
   Penn tags mapped by ``data.pos_tagging.penn_to_group``. Real text is read lazily (a stream no further than
   ``max_rows``) into an Arrow file a batch at a time, which the tagging ``map`` reads memory-mapped.
2. A tokenizer: the one the user names (hub name or local path), or a WordPiece tokenizer trained on the
   corpus with ``tokenizers`` (``data.pos_tagging.train_wordpiece``) and cached.
3. ``datasets.Dataset.map(num_proc=...)`` tags (text files) and tokenizes with ``is_split_into_words``
   (``data.pos_tagging.tag_and_tokenize``); each word-piece gets its word's group through the fast
   tokenizer's ``word_ids``. The result is saved as Arrow under a fingerprint of (source, seed, size,
   tokenizer), written to a temporary name and renamed.
4. NSP pairs (segment A and the segment that follows it, or a segment of another document drawn as
   ``data.nsp.random_b`` says: by default another document's own true B, so only coherence separates the two;
   ``data.pos_masking.build_nsp_pairs``) and the masking collator
   (``data.pos_masking``), which masks word-pieces (BERT 15%, 80/10/10, optionally stratified over the
   groups) and carries the group of exactly the masked positions.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import shutil
import warnings
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning import LightningDataModule
from torch.utils.data import DataLoader

from data.loading import resumable_loader
from data.pos_arrays import SentenceArrays, tagged_features
from data.pos_grammar import ALL_GROUPS, GROUP_ID, GROUPS, conjunction_scale, document_labels, generate_corpus
from data.pos_masking import (
    NSPPairs,
    PosMaskingCollator,
    build_nsp_pairs,
    repeated_segments,
)
from data.pos_options import (
    CorpusOptions,
    LoaderOptions,
    MaskingOptions,
    NSPOptions,
    TokenizerOptions,
    moved_key_error,
    section,
)
from data.pos_tagging import (
    SPECIAL_TOKENS,
    load_nltk_tagger,
    load_tokenizer,
    require_nltk_tagger,
    tag_and_tokenize,
    tokenizer_fingerprint,
    train_wordpiece,
    unigram_reference,
)
from data.text_sources import (
    check_encoding,
    check_text_file,
    decode_error,
    read_disk_dataset,
    read_hub_dataset,
    read_hub_sources,
    read_text_dir,
    read_text_file,
    text_dir_files,
    write_sentences,
)
from utils.atomic import atomic_write, remove_stale_temps, temp_path
from utils.errors import ConfigError, DataError

log = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when the cached layout changes


def _fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class PosBertDataModule(LightningDataModule):
    """NSP pairs with POS-grouped masked word-pieces for PoS-BERT pre-training. See the module docstring.

    Options: ``cache_dir``, ``seed``, ``max_length`` (of a pair) and the sections ``corpus``, ``tokenizer``,
    ``nsp``, ``masking`` and ``loader`` (:mod:`data.pos_options`), each its dataclass or a mapping of its keys
    (what Hydra passes from conf/data/pos_corpus.yaml). The tokenizer, the tagged Arrow dataset and their
    fingerprints live under ``cache_dir``.
    """

    def __init__(
        self,
        cache_dir: str = ".cache",
        seed: int = 0,
        max_length: int = 64,
        corpus: CorpusOptions | Mapping[str, Any] | None = None,
        tokenizer: TokenizerOptions | Mapping[str, Any] | None = None,
        nsp: NSPOptions | Mapping[str, Any] | None = None,
        masking: MaskingOptions | Mapping[str, Any] | None = None,
        loader: LoaderOptions | Mapping[str, Any] | None = None,
        **unknown: Any,
    ):
        super().__init__()
        if unknown:
            raise moved_key_error(unknown)
        if max_length < 8:
            raise ConfigError(f"data.max_length={max_length} is too short for a sentence pair (need >= 8).")
        self.cache_dir, self.seed, self.max_length = Path(cache_dir), seed, max_length
        self.corpus = section(CorpusOptions, corpus, "corpus")
        self.tokenizer_options = section(TokenizerOptions, tokenizer, "tokenizer")
        self.nsp = section(NSPOptions, nsp, "nsp")
        self.masking = section(MaskingOptions, masking, "masking")
        self.loader = section(LoaderOptions, loader, "loader")
        c = self.corpus
        self.text_file = Path(c.text_file) if c.text_file else None
        self.text_dir = Path(c.text_dir) if c.text_dir else None
        self.disk_dataset = Path(c.disk_dataset) if c.disk_dataset else None
        self.hf_dataset = c.hf_dataset or None
        if self.text_dir is not None and not self.text_dir.is_dir():
            raise DataError(f"data.corpus.text_dir: {self.text_dir} is not a folder.")
        if self.disk_dataset is not None and not self.disk_dataset.exists():
            raise DataError(f"data.corpus.disk_dataset: {self.disk_dataset} does not exist.")
        if self.text_file is not None and not self.text_file.is_file():
            raise DataError(f"data.corpus.text_file: {self.text_file} does not exist.")
        self.encoding = check_encoding(c.encoding)  # of text_file / text_dir
        # null: A and B share the pair's budget, as BERT fills its sequences
        seg = self.nsp.segment_tokens
        self.segment_tokens = (max_length - 3) // 2 if seg is None else int(seg)
        self.tokenizer = None
        self.tagged = None
        self.group_counts: dict[str, int] = {}
        self.n_documents = 0  # documents of the corpus (setup); NSP needs at least 2
        self.cache_hits: dict[str, bool] = {}
        # data.corpus.text_dir's text files, once validate() has listed them (and warned about binary ones)
        self._dir_files: list[Path] | None = None
        self.unigram_log_probs: torch.Tensor | None = None  # (V,) context-free log-frequencies (setup)
        self.context_free_reference: dict[str, float] = {}  # per group: their cross-entropy (setup)
        self.sentence_docs: np.ndarray | None = None  # document index of each sentence of the pairs (setup)

    # -- sources --------------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Start-up check of a local corpus, before any pre-training (bytes only, seconds even for gigabytes: no
        sentence splitting, no tagging): ``data.corpus.text_file`` must be text that decodes as
        ``data.corpus.encoding``; ``data.corpus.text_dir`` must hold a text file (binary ones are skipped with a warning, here, once) and each
        must decode. A hub or saved dataset is read in ``setup`` (when no cache holds it), before the first
        step."""
        if self.text_file is not None:
            check_text_file(self.text_file, self.encoding)
        elif self.text_dir is not None:
            self._dir_files = text_dir_files(self.text_dir, self.encoding)
            for f in self._dir_files:
                err = decode_error(f, self.encoding, "data.corpus.text_dir")
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
            ("hf_sources", [dict(x) for x in self.corpus.hf_sources] or None),
        ):
            if value is not None:
                return f"data.corpus.{key}={value}"
        return f"the generated corpus (data.corpus.n_docs={self.corpus.n_docs})"

    @property
    def real_text(self) -> bool:
        return bool(self.corpus.sources)

    def _source_key(self) -> dict[str, Any]:
        key = self._corpus_key()
        if self.real_text and self.corpus.placeholders:  # they change the tokenizer and the tags
            key["placeholders"] = list(self.corpus.placeholders)
        return key

    def _limit_key(self) -> dict[str, Any]:
        # without a limit, the key caches of real text had before max_text_sentences existed (still valid)
        limit = self.corpus.max_text_sentences
        return {"smoke": False} if limit is None else {"sentences": limit}

    def _corpus_key(self) -> dict[str, Any]:
        if self.corpus.hf_sources:
            hub = [{k: x[k] for k in sorted(x)} for x in self.corpus.hf_sources]
            return {"hf_sources": hub, "streaming": self.corpus.streaming, **self._limit_key(), "v": CACHE_FORMAT}
        if self.hf_dataset is not None:
            return {
                "hf": [self.hf_dataset, self.corpus.hf_config, self.corpus.hf_split, self.corpus.text_column],
                "streaming": [self.corpus.streaming, self.corpus.max_rows],
                **self._limit_key(),
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
                    "rows": self.corpus.max_rows,
                    **self._limit_key(),
                    "column": self.corpus.text_column,
                    "split": self.corpus.hf_split,
                    "v": CACHE_FORMAT,
                    **(enc if key == "text_dir" else {}),
                }
        if self.text_file is not None:
            st = self.text_file.stat() if self.text_file.is_file() else None
            return {
                "text_file": str(self.text_file.resolve()),
                "size": st and st.st_size,
                "mtime": st and st.st_mtime_ns,
                **self._limit_key(),
                **enc,
            }
        return {
            "generated": CACHE_FORMAT,
            "seed": self.seed,
            "n_docs": self.corpus.n_docs,
            "sentences": [self.corpus.min_sentences, self.corpus.max_sentences],
            "topic_bias": self.corpus.topic_bias,
            "zipf_s": self.corpus.zipf_s,
            **({"present_prob": self.corpus.present_prob} if self.corpus.present_prob else {}),
            **({"doc_nouns": self.corpus.doc_nouns} if self.corpus.doc_nouns else {}),
            **(
                {}
                if self.corpus.conjunction_share is None
                else {"conjunction_share": self.corpus.conjunction_share}
            ),
        }

    def _raw(self):
        if getattr(self, "_raw_cache", None) is None:
            self._raw_cache = self._read_raw()
        return self._raw_cache

    def _drop_raw(self) -> None:
        """Forget the raw corpus and delete its Arrow file (real text), once the tagged cache holds it."""
        self._raw_cache = None
        if getattr(self, "_raw_dir", None) is not None:
            shutil.rmtree(self._raw_dir, ignore_errors=True)
            self._raw_dir = None

    def _sentences_of_source(self):
        """The real text's ``(sentence, doc)`` pairs, read lazily (a stream no further than max_rows)."""
        c = self.corpus
        if self.text_file is not None:
            return read_text_file(self.text_file, self.encoding, lazy=True)
        if self.text_dir is not None:
            return read_text_dir(self.text_dir, self.encoding, self._dir_files, lazy=True)
        if c.hf_sources:
            return read_hub_sources(c.hf_sources, c.streaming, lazy=True)
        if self.disk_dataset is not None:
            return read_disk_dataset(self.disk_dataset, c.hf_split, c.text_column, c.max_rows, lazy=True)
        return read_hub_dataset(
            self.hf_dataset, c.hf_config, c.hf_split, c.text_column, c.streaming, c.max_rows, lazy=True
        )

    def _read_raw(self):
        """Real text: a ``datasets.Dataset`` (``text``, ``doc``) memory-mapped from an Arrow file written a batch
        at a time under ``cache_dir`` (the corpus is never held in memory whole); the generated corpus: lists."""
        if self.real_text:
            import datasets

            rows = itertools.islice(self._sentences_of_source(), self.corpus.max_text_sentences)
            self._raw_dir = temp_path(self.cache_dir / "pos_bert" / "raw")
            self._raw_dir.mkdir(parents=True)
            try:
                write_sentences(rows, self._raw_dir / "raw.arrow")
            except BaseException:
                self._drop_raw()
                raise
            return datasets.Dataset.from_file(str(self._raw_dir / "raw.arrow"))
        corpus = generate_corpus(**self._generator_args())
        words, groups, docs = [], [], []
        for d, (_topic, sents) in enumerate(corpus):
            for s in sents:
                words.append(list(s.words))
                groups.append([GROUP_ID[g] for g in s.groups])
                docs.append(d)
        return {"words": words, "groups": groups, "doc": docs}

    def _generator_args(self) -> dict[str, Any]:
        return dict(
            n_docs=self.corpus.n_docs,
            seed=self.seed,
            min_sentences=self.corpus.min_sentences,
            max_sentences=self.corpus.max_sentences,
            topic_bias=self.corpus.topic_bias,
            zipf_s=self.corpus.zipf_s,
            present_prob=self.corpus.present_prob,
            doc_nouns=self.corpus.doc_nouns,
            category_scale=self._category_scale(),
        )

    def _category_scale(self) -> dict[str, float] | None:
        """The grammar's heterogeneity dial: ``data.corpus.conjunction_share`` as the factor on the conjoined
        sentence's production that gives that expected share of conjunction words (None: the grammar as written)."""
        share = self.corpus.conjunction_share
        return None if share is None else {"CC": conjunction_scale(float(share))}

    def document_labels(self) -> list[tuple[str, str]] | None:
        """The generated corpus's ``(topic, tense)`` per document (the ``doc`` index of its sentences); None for
        real text."""
        return None if self.real_text else document_labels(**self._generator_args())

    # -- tokenizer --------------------------------------------------------------------------------------------
    def build_tokenizer(self):
        """The named tokenizer, or the cached / freshly trained WordPiece tokenizer of this corpus."""
        if self.tokenizer_options.name:
            return load_tokenizer(self.tokenizer_options.name)
        from transformers import PreTrainedTokenizerFast

        fp = _fingerprint(
            {
                "source": self._source_key(),
                "vocab": self.tokenizer_options.vocab_size,
                "lower": self.tokenizer_options.lowercase,
                "ids": "canonical",
            }
        )
        path = self.cache_dir / "pos_bert" / f"tokenizer-{fp}"
        if (path / "tokenizer.json").is_file():
            self.cache_hits["tokenizer"] = True
            log.info("tokenizer cache hit: %s", path)
            return PreTrainedTokenizerFast.from_pretrained(str(path))
        self.cache_hits["tokenizer"] = False
        raw = self._raw()
        texts = raw["text"] if self.real_text else [" ".join(w) for w in raw["words"]]
        marks = self.corpus.placeholders if self.real_text else ()
        tok = train_wordpiece(
            texts, self.tokenizer_options.vocab_size, self.tokenizer_options.lowercase, marks
        )
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
        ds = raw if isinstance(raw, datasets.Dataset) else datasets.Dataset.from_dict(raw)
        remove = [c for c in ("text", "words", "groups") if c in ds.column_names]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = ds.map(
                tag_and_tokenize,
                batched=True,
                batch_size=256,
                # num_proc=1 in this process (datasets would start a pool of one worker)
                num_proc=self.corpus.num_proc
                if self.corpus.num_proc > 1 and len(ds) >= 2 * self.corpus.num_proc
                else None,
                remove_columns=remove,
                fn_kwargs={
                    "tokenizer": tokenizer,
                    "placeholders": self.corpus.placeholders if self.real_text else (),
                },
                desc="POS tagging + tokenizing",
                features=tagged_features(),
                new_fingerprint=fp,
            )
        ds = ds.filter(lambda n: len(n) > 0, input_columns="input_ids")
        remove_stale_temps(path.parent)  # left by killed runs; never read as a cache
        atomic_write(path, lambda tmp: ds.save_to_disk(str(tmp)), what="tagged dataset cache")
        log.info("tagged corpus cache built: %s (%d sentences)", path, len(ds))
        return datasets.load_from_disk(str(path))

    def setup(self, stage: str | None = None) -> None:
        """Tokenizer, tagged corpus, NSP pairs split into train / val, masking collators (once)."""
        if self.tagged is not None:
            return
        self.tokenizer = self.build_tokenizer()
        self.tagged = self.build_tagged(self.tokenizer)
        self._drop_raw()
        sentences = self._sentence_arrays()
        self._count_groups(sentences)
        docs = sentences.docs
        self.sentence_docs = docs  # the document of each sentence the NSP pairs index
        self.n_documents = int(len(np.unique(docs)))
        a0, a1, b0, b1, label = self._pairs(sentences.lengths, docs)
        train_idx, val_idx = self._split(sentences, a0, a1)
        tok = self.tokenizer

        def subset(idx):
            return NSPPairs(
                sentences, a0[idx], a1[idx], b0[idx], b1[idx], label[idx],
                tok.cls_token_id, tok.sep_token_id, self.max_length,
            )  # fmt: skip

        self.train_set, self.val_set = subset(train_idx), subset(val_idx)
        self._make_collators()
        log.info(
            "PoS-BERT data: %d sentences, %d train / %d val pairs, vocab %d, group tokens %s",
            len(self.tagged),
            len(self.train_set),
            len(self.val_set),
            len(tok),
            self.group_counts,
        )

    def _sentence_arrays(self) -> SentenceArrays:
        """The tagged corpus's sentences as flat arrays (views of its memory-mapped Arrow cache), a sentence
        longer than a pair's half split into chunks (with one warning)."""
        if len(self.tagged) == 0:
            raise DataError(f"{self.corpus_name}: the corpus has no token after tokenization (empty corpus).")
        sentences = SentenceArrays.from_table(self.tagged.data)
        chunk = max(1, (self.max_length - 3) // 2)  # two chunks fill a pair: none is truncated
        sentences, n_long, longest = sentences.split_long(self.max_length, chunk)
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
        return sentences

    def _count_groups(self, sentences: SentenceArrays) -> None:
        """Tokens per POS group and the context-free reference; a warning for a group without a token."""
        counts = sentences.group_counts(len(ALL_GROUPS))
        self.group_counts = {g: int(c) for g, c in zip(ALL_GROUPS, counts)}
        self.unigram_log_probs, self.context_free_reference = unigram_reference(
            zip(sentences.values, sentences.pos), len(self.tokenizer)
        )
        missing = [g for g in GROUPS if self.group_counts[g] == 0]
        if missing:
            where = self.text_file or "the generated corpus"
            warnings.warn(
                f"{where} has no token of POS group(s) {', '.join(missing)}: their losses are skipped "
                f"(count 0) and the other groups still train.",
                stacklevel=3,
            )

    def _pairs(self, lengths: np.ndarray, docs: np.ndarray) -> tuple[np.ndarray, ...]:
        """The NSP pairs ``(a0, a1, b0, b1, label)`` of ``data.nsp`` over sentences of ``lengths`` word-pieces;
        none at all stops."""
        pairs = build_nsp_pairs(
            docs, self.seed, self.nsp.random_prob, lengths, self.segment_tokens, self.nsp.random_b
        )
        if len(pairs[0]) == 0:
            raise DataError(
                f"{self.corpus_name}: no document has two sentences"
                + (
                    f" whose segments reach {self.segment_tokens // 2} word-pieces each (data.nsp.random_b="
                    "segment drops shorter ones; set data.nsp.random_b=sentences or a smaller "
                    "data.nsp.segment_tokens)"
                    if self.nsp.random_b == "segment"
                    else ""
                )
                + ", so no NSP pair can be built."
            )
        return pairs

    def _split(self, sentences: SentenceArrays, a0: np.ndarray, a1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(train, val)`` pair indices: ``data.nsp.val_fraction`` held out by a seeded permutation; too few
        training pairs, or validation pairs that mostly repeat training ones, stop."""
        n_val = max(1, int(round(self.nsp.val_fraction * len(a0))))
        if len(a0) - n_val < 2:
            raise DataError(
                f"{self.corpus_name}: the corpus yields {len(a0)} NSP pair(s) ({len(sentences)} sentences in "
                f"{self.n_documents} document(s)), {n_val} of them for validation (data.nsp.val_fraction="
                f"{self.nsp.val_fraction}); pre-training needs at least 2 training pairs and 1 validation pair: "
                "give it more text."
            )
        perm = np.random.default_rng(self.seed + 1).permutation(len(a0))
        val_idx, train_idx = perm[:n_val], perm[n_val:]
        seen = repeated_segments(sentences.sentence_keys(), a0, a1, train_idx, val_idx)
        if 2 * seen >= n_val:
            raise DataError(
                f"{self.corpus_name}: {seen} of the {n_val} validation pairs open with a segment that is also "
                "a training pair's (the text repeats itself), so validation would measure memorisation: "
                "give it text that does not repeat."
            )
        return train_idx, val_idx

    def _make_collators(self) -> None:
        tok = self.tokenizer
        kw = dict(
            pad_id=tok.pad_token_id,
            mask_id=tok.mask_token_id,
            vocab_size=len(tok),
            num_special=len(SPECIAL_TOKENS) if not self.tokenizer_options.name else 0,
            **asdict(self.masking),
        )
        # both deterministic: training masks from (seed, the batch's example indices), see PosMaskingCollator
        self.train_collator = PosMaskingCollator(**kw, seed=self.seed + 7_919)
        self.val_collator = PosMaskingCollator(**kw, seed=self.seed)

    def train_dataloader(self):
        # resumable: the epoch-seeded order and the position within the epoch ride in the checkpoint
        return resumable_loader(
            self.train_set,
            batch_size=self.loader.batch_size,
            shuffle=True,
            seed=self.seed,
            drop_last=len(self.train_set) > self.loader.batch_size,
            collate_fn=self.train_collator,
            num_workers=self.loader.num_workers,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            self.val_set,
            batch_size=self.loader.batch_size,
            shuffle=False,
            collate_fn=self.val_collator,
            num_workers=self.loader.num_workers,
        )
