"""The PoS-BERT data options in sections (data/pos_options.py): what the config mirrors, the error of a wrong or
moved key, old flat run configs read into the sections, and cache keys that kept their meaning."""

import pytest
from helpers import compose_config
from omegaconf import OmegaConf

from data.pos_bert import PosBertDataModule, _fingerprint
from data.pos_options import CorpusOptions, nest_flat_options
from utils.errors import ConfigError


def test_sections_take_mappings_and_keep_their_values(tmp_path):
    dm = PosBertDataModule(
        cache_dir=str(tmp_path),
        max_length=40,
        corpus={"n_docs": 7, "placeholders": ["<unk>"]},
        tokenizer={"vocab_size": 300},
        nsp={"random_b": "sentences"},
        masking=OmegaConf.create({"stratify": True}),
        loader={"batch_size": 3},
    )
    assert dm.corpus == CorpusOptions(n_docs=7, placeholders=("<unk>",))
    assert (dm.tokenizer_options.vocab_size, dm.nsp.random_b, dm.masking.stratify) == (300, "sentences", True)
    assert (dm.loader.batch_size, dm.loader.num_workers, dm.segment_tokens) == (3, 0, 18)  # (40 - 3) // 2
    with pytest.raises(AttributeError):
        dm.corpus.n_docs = 8  # frozen


def test_a_wrong_or_moved_key_names_the_config_key(tmp_path):
    with pytest.raises(ConfigError) as err:
        PosBertDataModule(cache_dir=str(tmp_path), corpus={"n_doc": 5})
    assert str(err.value).startswith("data.corpus.n_doc is not an option of data.corpus (text_file, ")
    with pytest.raises(ConfigError, match=r"^data.n_docs is now data.corpus.n_docs \("):
        PosBertDataModule(cache_dir=str(tmp_path), n_docs=5)
    with pytest.raises(ConfigError, match=r"^data.nsp_random_b is now data.nsp.random_b \("):
        PosBertDataModule(cache_dir=str(tmp_path), nsp_random_b="fill")
    with pytest.raises(ConfigError, match=r"^data.nsp.random_b must be one of fill, sentences, segment"):
        PosBertDataModule(cache_dir=str(tmp_path), nsp={"random_b": "any"})
    from runner.factories import build_pretraining

    cfg = compose_config(["experiment=pos_bert", "+data.masking.mlm_prob=0.2"], tmp_path)
    with pytest.raises(ConfigError, match=r"^data.masking.mlm_prob is not an option of data.masking"):
        build_pretraining(cfg)


def test_a_flat_run_config_is_read_into_the_sections(tmp_path):
    """runner.nsp_cues reads run directories written before the sections: their flat data keys move."""
    flat = OmegaConf.create(
        {"_target_": "data.pos_bert.PosBertDataModule", "cache_dir": str(tmp_path), "seed": 3, "max_length": 32,
         "n_docs": 50, "vocab_size": 512, "tokenizer": "bert-base-uncased", "nsp_random_b": "sentences",
         "val_fraction": 0.1, "stratify": True, "batch_size": 4, "placeholders": ["<unk>"]}
    )  # fmt: skip
    nest_flat_options(flat)
    assert OmegaConf.to_container(flat) == {
        "_target_": "data.pos_bert.PosBertDataModule", "cache_dir": str(tmp_path), "seed": 3, "max_length": 32,
        "corpus": {"n_docs": 50, "placeholders": ["<unk>"]},
        "tokenizer": {"name": "bert-base-uncased", "vocab_size": 512},
        "nsp": {"random_b": "sentences", "val_fraction": 0.1},
        "masking": {"stratify": True},
        "loader": {"batch_size": 4},
    }  # fmt: skip
    before = OmegaConf.to_container(flat)
    nest_flat_options(flat)  # already in sections: unchanged
    assert OmegaConf.to_container(flat) == before


def test_cache_keys_kept_their_meaning(tmp_path):
    """The fingerprints of the tokenizer and tagged caches are those the flat options gave (measured before the
    sections): a cache written before is still found."""
    dm = PosBertDataModule(
        cache_dir=str(tmp_path), corpus={"n_docs": 40, "present_prob": 0.5, "topic_bias": 0.9}
    )
    key = {"source": dm._source_key(), "vocab": 4096, "lower": True, "ids": "canonical"}
    assert _fingerprint(key) == "b354d96f08d11892"
    hub = {"hf_dataset": "a/b", "hf_config": "c", "max_text_sentences": 400, "placeholders": ["<unk>"],
           "streaming": True, "max_rows": 10}  # fmt: skip
    dm = PosBertDataModule(cache_dir=str(tmp_path), corpus=hub)
    assert _fingerprint(dm._source_key()) == "5278ba8ebddbf0e7"


def test_a_value_of_the_wrong_type_names_the_key_and_the_type(tmp_path):
    with pytest.raises(ConfigError, match=r"^data.corpus.n_docs='many' must be int\.$"):
        PosBertDataModule(cache_dir=str(tmp_path), corpus={"n_docs": "many"})
    with pytest.raises(ConfigError, match=r"^data.corpus.max_rows=True must be int or null\.$"):
        PosBertDataModule(cache_dir=str(tmp_path), corpus={"max_rows": True})
    with pytest.raises(ConfigError, match=r"^data.masking.stratify=1 must be bool\.$"):
        PosBertDataModule(cache_dir=str(tmp_path), masking={"stratify": 1})
    dm = PosBertDataModule(cache_dir=str(tmp_path), nsp={"random_prob": 1}, corpus={"placeholders": ("x",)})
    assert dm.nsp.random_prob == 1 and dm.corpus.placeholders == ("x",)  # an int is a float; a tuple a list
