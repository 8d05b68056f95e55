"""The embedded corpus: deterministic, both domains on both sides of a document-level split, cached."""

from __future__ import annotations

import json
import math
from collections import Counter

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
    for split, other in ((bundle.train, again.train), (bundle.val, again.val)):
        assert torch.equal(split.input_ids, other.input_ids) and torch.equal(split.domain_ids, other.domain_ids)
        assert split.input_ids.dtype == torch.long and split.domain_ids.dtype == torch.long
        assert set(split.domain_ids.tolist()) == {0, 1}
    assert bundle.domains == ("code", "prose")
    assert bundle.train.input_ids.shape[1] == 65 and bundle.vocab_size == 257
    item = bundle.val[0]
    assert item["input_ids"].shape == (65,) and item["domain_id"].dim() == 0


def test_no_document_is_on_both_sides():
    sides = embedded.split_documents(max_bytes_per_domain=SMALL["max_bytes_per_domain"],
                                     val_fraction=SMALL["val_fraction"])
    for domain in ("code", "prose"):
        train, val = sides["train"][domain], sides["val"][domain]
        assert train and val
        assert not {d.id for d, _ in train} & {d.id for d, _ in val}
        assert not {data for _, data in train} & {data for _, data in val}  # not even as a copy
    # a file's code and its docstrings are split together, so validation prose is never training code
    train_keys = {d.split_key for items in sides["train"].values() for d, _ in items}
    val_keys = {d.split_key for items in sides["val"].values() for d, _ in items}
    assert not train_keys & val_keys


def test_each_domain_is_capped_and_near_the_cap(bundle):
    for domain in ("code", "prose"):
        assert sum(bundle.stats["bytes"][side][domain] for side in ("train", "val")) == SMALL["max_bytes_per_domain"]
        for side in ("train", "val"):  # a stream of bytes + one eos per document, cut into rows of 65
            stream = bundle.stats["bytes"][side][domain] + bundle.stats["documents"][side][domain]
            assert bundle.stats[side][domain]["tokens"] == stream // 65 * 65


def test_selection_and_split_are_stable_as_the_corpus_grows():
    code = embedded.collect_documents()["code"]
    small, big = embedded.select(code, 300_000), embedded.select(code, 600_000)
    assert [d.id for d, _ in big[: len(small) - 1]] == [d.id for d, _ in small[:-1]]  # only the cut one differs
    val = {d.id for d, _ in small if is_validation(d.split_key, 0.1)}
    assert val and {d.id for d, _ in big if is_validation(d.split_key, 0.1)} >= val


def test_prose_is_prose_and_code_is_code(bundle):
    decode = bundle.tokenizer.decode
    code = decode(bundle.train.input_ids[bundle.train.domain_ids == 0].flatten().tolist())
    prose = decode(bundle.train.input_ids[bundle.train.domain_ids == 1].flatten().tolist())
    assert code.count("def ") > 5 * max(1, prose.count("def "))
    assert prose.count(" the ") > 2 * code.count(" the ")
    assert "gencodec.py" not in code  # generated codec tables are not code


def test_seed_reorders_training_documents_only(bundle, tmp_path):
    other = build_embedded(cache_dir=str(tmp_path), **SMALL, seed=1)
    assert torch.equal(other.val.input_ids, bundle.val.input_ids)
    assert not torch.equal(other.train.input_ids, bundle.train.input_ids)
    assert Counter(other.train.domain_ids.tolist()) == Counter(bundle.train.domain_ids.tolist())


def test_second_build_reads_the_cache_and_writes_a_manifest(bundle, tmp_path, monkeypatch):
    build_embedded(cache_dir=str(tmp_path), **SMALL)

    def fail(**kwargs):
        raise AssertionError("rebuilt although the cache was there")

    monkeypatch.setattr(embedded, "_build", fail)
    cached = build_embedded(cache_dir=str(tmp_path), **SMALL)
    assert torch.equal(cached.train.input_ids, bundle.train.input_ids)
    assert cached.train.input_ids.dtype == torch.long
    assert cached.unigram_entropy == bundle.unigram_entropy and cached.stats == bundle.stats
    (manifest_file,) = tmp_path.glob("embedded-*.json")
    manifest = json.loads(manifest_file.read_text())
    assert manifest["seq_len"] == 64 and manifest["unigram_entropy"] == bundle.unigram_entropy
    assert manifest["train"]["code"]["sequences"] == int((bundle.train.domain_ids == 0).sum())
    assert not list(tmp_path.glob("*.tmp"))  # temp files were renamed into place


def test_corrupt_or_mismatched_cache_is_rebuilt(bundle, tmp_path):
    build_embedded(cache_dir=str(tmp_path), **SMALL)
    (cache_file,) = tmp_path.glob("embedded-*.pt")
    cache_file.write_bytes(b"not a torch file")
    rebuilt = build_embedded(cache_dir=str(tmp_path), **SMALL)
    assert torch.equal(rebuilt.train.input_ids, bundle.train.input_ids)
    payload = torch.load(cache_file, weights_only=True)
    assert payload["train_input_ids"].shape == bundle.train.input_ids.shape
    payload["params"] = {**payload["params"], "seq_len": 32}  # a file that loads but was made for other options
    torch.save(payload, cache_file)
    assert torch.equal(build_embedded(cache_dir=str(tmp_path), **SMALL).val.input_ids, bundle.val.input_ids)
    assert torch.load(cache_file, weights_only=True)["params"]["seq_len"] == 64


def test_unwritable_cache_dir_warns_and_still_builds(bundle, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.warns(UserWarning, match="could not write the corpus cache"):
        data = build_embedded(cache_dir=str(blocker), **SMALL)
    assert torch.equal(data.train.input_ids, bundle.train.input_ids)


def test_unigram_entropy_matches_a_direct_count(bundle):
    counts = Counter(bundle.train.input_ids.flatten().tolist())
    total = sum(counts.values())
    direct = -sum(c / total * math.log(c / total) for c in counts.values())
    assert bundle.unigram_entropy == pytest.approx(direct, rel=1e-9)
    assert 0.0 < bundle.unigram_entropy < math.log(257)


@pytest.mark.parametrize(("kwargs", "message"), [({"val_fraction": 0.0}, "val_fraction=0.0"),
                                                 ({"val_fraction": 1.0}, "val_fraction=1.0"),
                                                 ({"seq_len": 0}, "seq_len=0"),
                                                 ({"max_bytes_per_domain": 0}, "max_bytes_per_domain=0")])
def test_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_embedded(**{**SMALL, **kwargs})


@pytest.fixture(scope="module")
def four(tmp_path_factory):
    return build_embedded(cache_dir=str(tmp_path_factory.mktemp("cache4")), domains=list(embedded.ALL_DOMAINS),
                          **SMALL)


def test_four_domains_are_each_capped_and_validated(four):
    assert four.domains == ("code", "prose", "arithmetic", "markup")
    for split in (four.train, four.val):
        assert set(split.domain_ids.tolist()) == {0, 1, 2, 3}
    for domain in four.domains:
        assert sum(four.stats["bytes"][side][domain] for side in ("train", "val")) == SMALL["max_bytes_per_domain"]


def test_arithmetic_lines_are_correct_equations(four):
    from moe.data.extra_domains import arithmetic_documents

    text = four.tokenizer.decode(four.train.input_ids[four.train.domain_ids == 2].flatten().tolist())
    assert set(text) <= set("0123456789+-*= \n")  # the packed domain holds equations only
    lines = [line for _, doc in arithmetic_documents(20_000) for line in doc.splitlines()]
    assert len(lines) > 1000
    for line in lines:
        left, right = line.split(" = ")
        a, op, b = left.split(" ")
        assert {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op] == int(right), line


def test_markup_is_well_formed_xml_outline_of_the_module():
    import ast
    import xml.etree.ElementTree as ET

    from moe.data.extra_domains import markup_document

    source = ("'''Module.\n\nMore.'''\nclass A(B):\n    def f(self, x=1):\n        '''Do <f>.'''\n"
              "if X:\n    def g(): pass\n")
    root = ET.fromstring(markup_document("pkg/m.py", ast.parse(source)))
    assert root.tag == "module" and root.get("path") == "pkg/m.py" and root.find("summary").text == "Module."
    cls = root.find("class")
    assert (cls.get("name"), cls.get("bases"), cls.get("line")) == ("A", "B", "4")
    method = cls.find("function")
    assert (method.get("name"), method.get("args"), method.find("summary").text) == ("f", "self, x=1", "Do <f>.")
    assert root.find("function").get("name") == "g"  # defined inside an if block
    for doc in embedded.collect_documents()["markup"][:200]:
        ET.fromstring(doc.text)  # every outline parses


def test_unknown_domain_is_named():
    with pytest.raises(ValueError, match=r"data.domains=\['code', 'poetry'\] must be distinct names from"):
        build_embedded(**SMALL, domains=["code", "poetry"])


def test_a_tokenizer_json_packs_the_same_documents_in_its_own_ids(tmp_path):
    from bpe_tokenizer import VOCAB, save_bpe_tokenizer

    from moe.data.packing import pack

    tok_dir = save_bpe_tokenizer(tmp_path / "tok")
    bundle = build_embedded(cache_dir=str(tmp_path / "cache"), tokenizer=str(tok_dir), **SMALL)
    tok = bundle.tokenizer
    assert bundle.vocab_size == VOCAB and tok.eos_id == tok._tokenizer.token_to_id("<|endoftext|>")
    # the byte-capped selection, tokenised by the tokenizer.json and packed in the same order
    sides = embedded.split_documents(max_bytes_per_domain=SMALL["max_bytes_per_domain"],
                                     val_fraction=SMALL["val_fraction"])
    for side, split in (("train", bundle.train), ("val", bundle.val)):
        for d, domain in enumerate(bundle.domains):
            docs = [tok.encode(data.decode("utf-8", errors="ignore")) for _, data in sides[side][domain]]
            assert torch.equal(split.input_ids[split.domain_ids == d], pack(docs, seq_len=64, eos_id=tok.eos_id))
    first_doc = sides["val"]["prose"][0][1].decode("utf-8", errors="ignore")
    assert first_doc.startswith(tok.decode(bundle.val.input_ids[bundle.val.domain_ids == 1][0].tolist()))
    assert int(bundle.train.input_ids.max()) > 256  # merges are used: not byte ids
    # cached under its own key: the byte corpus beside it is another file; a second build reads the cache
    byte_bundle = build_embedded(cache_dir=str(tmp_path / "cache"), **SMALL)
    assert byte_bundle.vocab_size == 257 and len(list((tmp_path / "cache").glob("embedded-*.pt"))) == 2
    again = build_embedded(cache_dir=str(tmp_path / "cache"), tokenizer=str(tok_dir), **SMALL)
    assert torch.equal(again.train.input_ids, bundle.train.input_ids)
