"""data=hf on small local files (text, JSON lines, parquet), offline."""

from __future__ import annotations

import json

import pytest

from moe.data import build_hf

DOCS = [f"document {i}: " + "lorem ipsum dolor sit amet " * (5 + i % 7) for i in range(60)]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def total_tokens(bundle) -> int:
    return bundle.train.input_ids.numel() + bundle.val.input_ids.numel()


def test_text_file_one_document_per_line(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(DOCS) + "\n")
    bundle = build_hf(seq_len=32, path="text", data_files=str(path), val_fraction=0.2,
                      cache_dir=str(tmp_path / "hf"))
    assert bundle.domains == ("corpus",)
    stream = sum(len(d.encode()) + 1 for d in DOCS)  # bytes + one eos per document
    assert stream - 2 * 33 < total_tokens(bundle) <= stream
    assert len(bundle.val) > 0 and len(bundle.train) > 3 * len(bundle.val) // 2
    assert bundle.tokenizer.decode(bundle.train.input_ids[0].tolist()).startswith("document")


def test_jsonl_with_domain_field(tmp_path):
    rows = [{"body": d, "source": "odd" if i % 2 else "even"} for i, d in enumerate(DOCS)]
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    bundle = build_hf(seq_len=16, path="json", data_files=path, text_field="body", domain_field="source",
                      cache_dir=str(tmp_path / "hf"))
    assert sorted(bundle.domains) == ["even", "odd"]
    for split in (bundle.train, bundle.val):
        assert set(split.domain_ids.tolist()) == {0, 1}


def test_parquet(tmp_path):
    import datasets

    path = str(tmp_path / "shard.parquet")
    datasets.Dataset.from_dict({"text": DOCS}).to_parquet(path)
    bundle = build_hf(seq_len=32, path="parquet", data_files=path, max_documents=30,
                      cache_dir=str(tmp_path / "hf"))
    stream = sum(len(d.encode()) + 1 for d in DOCS[:30])
    assert stream - 2 * 33 < total_tokens(bundle) <= stream


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.jsonl matches no file"):
        build_hf(seq_len=16, path="json", data_files=str(tmp_path / "missing.jsonl"))


def test_missing_text_field_lists_the_columns(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [{"body": d} for d in DOCS])
    with pytest.raises(ValueError, match=r"data.text_field='text' is not a column .* columns: \['body'\]"):
        build_hf(seq_len=16, path="json", data_files=path, cache_dir=str(tmp_path / "hf"))


def test_local_builder_without_files():
    with pytest.raises(ValueError, match="set data.data_files"):
        build_hf(seq_len=16, path="json")


def test_too_little_text_for_one_sequence(tmp_path):
    path = write_jsonl(tmp_path / "tiny.jsonl", [{"text": "hi"}, {"text": "yo"}])
    with pytest.raises(ValueError, match="no train sequence"):
        build_hf(seq_len=64, path="json", data_files=path, cache_dir=str(tmp_path / "hf"))
