"""An export carries the tokenizer the model was trained with: the byte tokenizer as a tokenizer.json
whose ids are moe-lab's exactly, or a run's Hugging Face tokenizer files copied unchanged."""

from __future__ import annotations

import json

import pytest
import torch
from test_save_hf_roundtrip import random_model, run_config, write_checkpoint

from moe.data.tokenizer import ByteTokenizer
from moe.interop import save_hf
from moe.interop.tokenizer_export import byte_to_unicode, tokenizer_files, write_tokenizer_files

transformers = pytest.importorskip("transformers")

MIXED = "hi é — 日本語 🙂 def f(x):\n\treturn x\r\n\x00\x7f ¡®ÿ"


def test_byte_table_is_a_bijection_onto_printable_characters():
    table = byte_to_unicode()
    assert sorted(table) == list(range(256)) and len(set(table.values())) == 256
    assert table[ord("a")] == "a" and table[ord(" ")] == chr(256 + 32)  # bytes 0..32 come first among the moved
    assert all(char.isprintable() for char in table.values())


def test_byte_tokenizer_json_encodes_and_decodes_like_moe_lab(tmp_path):
    write_tokenizer_files(tmp_path, tokenizer_files(None, max_seq_len=256))
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path)
    ours = ByteTokenizer()
    ids = tokenizer(MIXED)["input_ids"]
    assert ids == ours.encode(MIXED)
    assert tokenizer.decode(ids) == MIXED == ours.decode(ids)
    assert tokenizer.eos_token_id == ours.eos_id == 256 and len(tokenizer) == ours.vocab_size
    assert tokenizer.decode([*ours.encode("ab"), 256], skip_special_tokens=True) == "ab"
    assert tokenizer.model_max_length == 256


def test_a_run_export_loads_with_auto_tokenizer_and_generates(tmp_path):
    config = {**run_config(vocab_size=257), "data": {"_target_": "moe.data.build_embedded"}}  # trained on bytes
    write_checkpoint(tmp_path / "run", config, random_model(config))
    out = save_hf(tmp_path / "run", tmp_path / "hf")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json",
                                                     "tokenizer_config.json"]
    assert json.loads((out / "config.json").read_text())["eos_token_id"] == 256
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    prompt = tokenizer("é x", return_tensors="pt")
    assert prompt["input_ids"].tolist() == [ByteTokenizer().encode("é x")]
    with torch.no_grad():
        generated = model.generate(**prompt, max_new_tokens=3, do_sample=False)
    assert generated.shape == (1, len("é x".encode()) + 3)


def test_a_hugging_face_tokenizer_is_copied_unchanged(tmp_path):
    source = tmp_path / "tok"
    source.mkdir()
    write_tokenizer_files(source, tokenizer_files(None, max_seq_len=64))
    (source / "special_tokens_map.json").write_text('{"eos_token": "<|endoftext|>"}\n')
    files = tokenizer_files({"tokenizer": str(source)}, max_seq_len=999)
    assert sorted(files) == ["special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    out = tmp_path / "out"
    out.mkdir()
    write_tokenizer_files(out, files)
    for name in files:
        assert (out / name).read_bytes() == (source / name).read_bytes()


def test_a_missing_tokenizer_path_fails_before_anything_is_written(tmp_path):
    config = {**run_config(vocab_size=257), "data": {"tokenizer": str(tmp_path / "gone")}}
    write_checkpoint(tmp_path / "run", config, random_model(config))
    with pytest.raises(FileNotFoundError, match=r"data.tokenizer=.*gone: no tokenizer.json there"):
        save_hf(tmp_path / "run", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
