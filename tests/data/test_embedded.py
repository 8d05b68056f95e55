"""The embedded corpus: deterministic, both domains on both sides of a document-level split, cached."""

from __future__ import annotations

import pytest
import torch

import moe.data.embedded as embedded
from moe.data import build_embedded
from moe.data.split import is_validation

SMALL = dict(seq_len=64, max_bytes_per_domain=150_000, val_fraction=0.1)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return build_embedded(cache_dir=str(tmp_path_factory.mktemp("cache")), **SMALL)


def test_deterministic_and_both_domains_in_both_splits(bundle, tmp_path):
    again = build_embedded(cache_dir=str(tmp_path), **SMALL)  # a fresh build, not the cache
    assert torch.equal(again.train.input_ids, bundle.train.input_ids)
    assert torch.equal(again.val.domain_ids, bundle.val.domain_ids)
    assert bundle.domains == ("code", "prose")
    for split in (bundle.train, bundle.val):
        assert set(split.domain_ids.tolist()) == {0, 1}
    assert bundle.train.input_ids.shape[1] == 65 and bundle.vocab_size == 257


def test_each_domain_is_capped_and_near_the_cap(bundle):
    tokens_per_domain = [int((bundle.train.domain_ids == d).sum() + (bundle.val.domain_ids == d).sum()) * 65
                         for d in range(2)]
    for tokens in tokens_per_domain:  # bytes + one eos per document, minus packing tails
        assert 0.9 * SMALL["max_bytes_per_domain"] < tokens < 1.1 * SMALL["max_bytes_per_domain"]


def test_split_is_stable_as_the_corpus_grows():
    documents = embedded.collect_documents()
    chosen = embedded._select(documents["code"], 300_000)
    val_ids = {d for d, _ in chosen if is_validation(d, 0.1)}
    assert val_ids and len(val_ids) < len(chosen)
    # the decision depends on the id alone, so growing the corpus never moves a document
    bigger = embedded._select(documents["code"], 600_000)
    assert {d for d, _ in bigger if is_validation(d, 0.1)} >= val_ids


def test_prose_is_prose_and_code_is_code(bundle):
    decode = bundle.tokenizer.decode
    code = decode(bundle.train.input_ids[bundle.train.domain_ids == 0].flatten().tolist())
    prose = decode(bundle.train.input_ids[bundle.train.domain_ids == 1].flatten().tolist())
    assert code.count("def ") > 5 * max(1, prose.count("def "))
    assert prose.count(" the ") > 2 * code.count(" the ")


def test_second_build_reads_the_cache(bundle, tmp_path, monkeypatch):
    build_embedded(cache_dir=str(tmp_path), **SMALL)

    def fail(**kwargs):
        raise AssertionError("rebuilt although the cache was there")

    monkeypatch.setattr(embedded, "_build", fail)
    cached = build_embedded(cache_dir=str(tmp_path), **SMALL)
    assert torch.equal(cached.train.input_ids, bundle.train.input_ids)
    assert cached.unigram_entropy == pytest.approx(bundle.unigram_entropy)


def test_corrupt_cache_is_rebuilt(bundle, tmp_path):
    build_embedded(cache_dir=str(tmp_path), **SMALL)
    (cache_file,) = tmp_path.glob("embedded-*.pt")
    cache_file.write_bytes(b"not a torch file")
    rebuilt = build_embedded(cache_dir=str(tmp_path), **SMALL)
    assert torch.equal(rebuilt.train.input_ids, bundle.train.input_ids)
    assert torch.load(cache_file, weights_only=True)["train_input_ids"].shape == bundle.train.input_ids.shape


def test_unigram_entropy_is_below_uniform(bundle):
    assert 2.0 < bundle.unigram_entropy < torch.log(torch.tensor(257.0)).item()


@pytest.mark.parametrize(("kwargs", "message"), [({"val_fraction": 0.0}, "val_fraction=0.0"),
                                                 ({"max_bytes_per_domain": 0}, "max_bytes_per_domain=0")])
def test_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_embedded(**{**SMALL, **kwargs})
