"""data=hf on small local files (text, JSON lines, parquet, csv), offline, with exact expected sizes."""

from __future__ import annotations

import json
import re

import pytest
import torch

from moe.data import build_hf
from moe.data.split import assign_validation

DOCS = [f"document {i}: " + "lorem ipsum dolor sit amet " * (5 + i % 7) for i in range(60)]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def expected_sequences(rows, *, seq_len, val_fraction=0.05):
    """(train, val) sequence counts for non-empty (row index, text) rows of one domain: the rows split by
    index hash, each side a stream of bytes + one eos per row, cut into seq_len + 1, the tail dropped."""
    flags = assign_validation([f"row:{i}" for i, _ in rows], val_fraction)
    streams = [sum(len(text.encode()) + 1 for (_, text), in_val in zip(rows, flags) if in_val == side)
               for side in (False, True)]
    return tuple(n // (seq_len + 1) for n in streams)


def count(split, domain_id=0):
    return int((split.domain_ids == domain_id).sum())


def test_text_file_one_document_per_line(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(DOCS) + "\n")
    bundle = build_hf(seq_len=32, path="text", data_files=str(path), val_fraction=0.2, cache_dir=str(tmp_path / "hf"))
    assert bundle.domains == ("corpus",) and bundle.vocab_size == 257
    expected = expected_sequences(list(enumerate(DOCS)), seq_len=32, val_fraction=0.2)
    assert (len(bundle.train), len(bundle.val)) == expected
    assert bundle.train.input_ids.shape[1] == 33 and bundle.train.input_ids.dtype == torch.long
    assert set(bundle.val.domain_ids.tolist()) == {0}
    assert "lorem ipsum" in bundle.tokenizer.decode(bundle.train.input_ids[0].tolist())
    assert 0 < bundle.unigram_entropy < 3.5  # a few dozen distinct bytes


def test_jsonl_with_domain_field(tmp_path):
    rows = [{"body": d, "source": "odd" if i % 2 else "even"} for i, d in enumerate(DOCS)]
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    bundle = build_hf(seq_len=16, path="json", data_files=path, text_field="body", domain_field="source",
                      cache_dir=str(tmp_path / "hf"))
    assert bundle.domains == ("even", "odd")  # sorted by name, whatever the row order
    for split in (bundle.train, bundle.val):
        assert set(split.domain_ids.tolist()) == {0, 1}
    for d, parity in enumerate((0, 1)):  # each domain packed on its own, from its own rows only
        rows = [(i, doc) for i, doc in enumerate(DOCS) if i % 2 == parity]
        assert (count(bundle.train, d), count(bundle.val, d)) == expected_sequences(rows, seq_len=16)
    odd = bundle.tokenizer.decode(bundle.train.input_ids[bundle.train.domain_ids == 1].flatten().tolist())
    numbers = [int(n) for n in re.findall(r"document (\d+):", odd)]
    assert numbers and all(n % 2 == 1 for n in numbers)


def test_parquet_and_max_documents(tmp_path):
    import datasets

    path = str(tmp_path / "shard.parquet")
    datasets.Dataset.from_dict({"text": DOCS}).to_parquet(path)
    bundle = build_hf(seq_len=32, path="parquet", data_files=path, max_documents=30, cache_dir=str(tmp_path / "hf"))
    assert bundle.domains == ("shard",)
    assert (len(bundle.train), len(bundle.val)) == expected_sequences(list(enumerate(DOCS[:30])), seq_len=32)


def test_csv_list_of_files_and_empty_rows(tmp_path):
    import datasets

    paths = [str(tmp_path / "a.csv"), str(tmp_path / "b.csv")]
    datasets.Dataset.from_dict({"text": DOCS[:30], "n": list(range(30))}).to_csv(paths[0], index=False)
    datasets.Dataset.from_dict({"text": [""] + DOCS[31:], "n": list(range(30, 60))}).to_csv(paths[1], index=False)
    bundle = build_hf(seq_len=32, path="csv", data_files=paths, cache_dir=str(tmp_path / "hf"))
    rows = [(i, doc) for i, doc in enumerate(DOCS) if i != 30]  # the empty row is skipped: not even an eos
    assert bundle.domains == ("a",)
    assert (len(bundle.train), len(bundle.val)) == expected_sequences(rows, seq_len=32)


def test_seed_reorders_training_rows_only(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [{"text": d} for d in DOCS])
    a = build_hf(seq_len=16, path="json", data_files=path, cache_dir=str(tmp_path / "hf"))
    b = build_hf(seq_len=16, path="json", data_files=path, cache_dir=str(tmp_path / "hf"), seed=1)
    again = build_hf(seq_len=16, path="json", data_files=path, cache_dir=str(tmp_path / "hf"))
    assert torch.equal(a.train.input_ids, again.train.input_ids)
    assert torch.equal(a.val.input_ids, b.val.input_ids) and not torch.equal(a.train.input_ids, b.train.input_ids)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.jsonl matches no file"):
        build_hf(seq_len=16, path="json", data_files=str(tmp_path / "missing.jsonl"))


def test_missing_text_field_lists_the_columns(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [{"body": d} for d in DOCS])
    with pytest.raises(ValueError, match=r"data.text_field='text' is not a column .* columns: \['body'\]"):
        build_hf(seq_len=16, path="json", data_files=path, cache_dir=str(tmp_path / "hf"))
    with pytest.raises(ValueError, match=r"data.domain_field='lang' is not a column"):
        build_hf(seq_len=16, path="json", data_files=path, text_field="body", domain_field="lang",
                 cache_dir=str(tmp_path / "hf"))


def test_non_text_field_names_the_row(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [{"text": "ok", "n": i} for i in range(5)])
    with pytest.raises(TypeError, match=r"data.text_field='n': row 0 holds a int"):
        build_hf(seq_len=16, path="json", data_files=path, text_field="n", cache_dir=str(tmp_path / "hf"))


def test_empty_inputs(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty.jsonl holds no data"):
        build_hf(seq_len=16, path="json", data_files=str(empty))
    blank = write_jsonl(tmp_path / "blank.jsonl", [{"text": ""}, {"text": ""}])
    with pytest.raises(ValueError, match="every row of json has an empty 'text'"):
        build_hf(seq_len=16, path="json", data_files=blank, cache_dir=str(tmp_path / "hf"))


def test_local_builder_without_files():
    with pytest.raises(ValueError, match="set data.data_files"):
        build_hf(seq_len=16, path="json")


def test_too_little_text_for_one_sequence(tmp_path):
    path = write_jsonl(tmp_path / "tiny.jsonl", [{"text": "hi"}, {"text": "yo"}])
    with pytest.raises(ValueError, match="no train sequence of seq_len\\+1=65 tokens"):
        build_hf(seq_len=64, path="json", data_files=path, cache_dir=str(tmp_path / "hf"))


def test_a_tokenizer_json_packs_the_rows_in_its_ids(tmp_path):
    from bpe_tokenizer import VOCAB, save_bpe_tokenizer

    from moe.data.packing import pack

    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(DOCS) + "\n")
    tok_dir = save_bpe_tokenizer(tmp_path / "tok")
    bundle = build_hf(seq_len=32, path="text", data_files=str(path), val_fraction=0.2, cache_dir=str(tmp_path / "hf"),
                      tokenizer=str(tok_dir))
    tok = bundle.tokenizer
    assert bundle.vocab_size == VOCAB
    flags = assign_validation([f"row:{i}" for i in range(len(DOCS))], 0.2)
    val_docs = [tok.encode(text) for text, in_val in zip(DOCS, flags) if in_val]
    assert torch.equal(bundle.val.input_ids, pack(val_docs, seq_len=32, eos_id=tok.eos_id))
