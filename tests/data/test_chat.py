"""data=chat: both row formats, the exact response-only loss mask, truncation, malformed rows, tokenizers."""

from __future__ import annotations

import json

import pytest
import torch

from moe.data.chat import build_chat, parse_row, render
from moe.data.hf_tokenizer import HFTokenizer
from moe.data.packing import PackedDataset, masked_targets
from moe.data.tokenizer import ByteTokenizer


def write_jsonl(path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_prompt_response_renders_the_template_with_the_response_and_eos_as_the_only_targets():
    tok = ByteTokenizer()
    ids, mask = render(parse_row({"prompt": "hi", "response": "ok"}, "x:1"), tok)
    prompt = list(b"<|user|>\nhi\n<|assistant|>\n")
    assert ids == prompt + list(b"ok") + [256]
    assert mask == [False] * len(prompt) + [True, True, True]


def test_messages_mask_every_assistant_turn_and_nothing_else():
    tok = ByteTokenizer()
    row = {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "a"},
                        {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"},
                        {"role": "assistant", "content": "d"}]}
    ids, mask = render(parse_row(row, "x:1"), tok)
    text = b"<|system|>\nS\n<|user|>\na\n<|assistant|>\n"
    second = b"<|user|>\nc\n<|assistant|>\n"
    assert ids == list(text) + [ord("b"), 256] + list(second) + [ord("d"), 256]
    assert mask == [False] * len(text) + [True, True] + [False] * len(second) + [True, True]


def test_build_chat_pads_with_untargeted_eos_splits_and_counts(tmp_path):
    rows = [{"prompt": f"q{i}", "response": f"answer {i}"} for i in range(30)]
    rows += [{"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "v"}]}] * 10
    data = build_chat(seq_len=40, data_files=write_jsonl(tmp_path / "c.jsonl", rows), tokenizer="byte",
                      val_fraction=0.2)
    assert data.domains == ("chat",) and len(data.train) + len(data.val) == 40 and len(data.val) > 0
    ids, mask = render(parse_row(rows[0], "x"), ByteTokenizer())
    first = next(i for i in range(len(data.train)) if data.train.input_ids[i, :len(ids)].tolist() == ids)
    row_ids, row_mask = data.train.input_ids[first], data.train.loss_mask[first]
    assert row_ids[len(ids):].eq(256).all() and not row_mask[len(ids):].any()  # eos padding, never a target
    assert row_mask[:len(ids)].tolist() == mask
    targets = masked_targets(data.train.input_ids[first:first + 1], data.train.loss_mask[first:first + 1])
    assert targets[0].ne(-100).sum() == sum(mask[1:])
    assert data.stats["truncated"] == {"train": 0, "val": 0} and data.stats["dropped"] == {"train": 0, "val": 0}
    assert data.stats["train"]["chat"]["target_tokens"] == int(data.train.loss_mask[:, 1:].sum())


def test_long_conversations_are_truncated_and_those_without_a_target_left_dropped(tmp_path):
    rows = [{"prompt": "p", "response": "r" * 50}] * 6 + [{"prompt": "x" * 100, "response": "y"}] * 6
    rows += [{"prompt": f"{i}", "response": "ok"} for i in range(20)]
    data = build_chat(seq_len=32, data_files=write_jsonl(tmp_path / "c.jsonl", rows), tokenizer="byte",
                      val_fraction=0.3)
    stats = data.stats
    assert sum(stats["dropped"].values()) == 6 and sum(stats["truncated"].values()) == 6
    assert len(data.train) + len(data.val) == len(rows) - 6
    assert data.train.input_ids.shape[1] == 33


def test_domain_field_gives_one_domain_per_value(tmp_path):
    rows = [{"prompt": f"q{i}", "response": "a", "task": "math" if i % 2 else "code"} for i in range(40)]
    data = build_chat(seq_len=32, data_files=write_jsonl(tmp_path / "c.jsonl", rows), tokenizer="byte",
                      domain_field="task", val_fraction=0.2)
    assert data.domains == ("code", "math") and set(data.val.domain_ids.tolist()) == {0, 1}


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ('{"prompt": "a", "response": ', "not valid JSON"),
        ({"prompt": "a"}, "needs 'messages', or 'prompt' and 'response'"),
        ({"messages": [{"role": "bot", "content": "x"}]}, "role 'bot'; allowed: \\['system', 'user', 'assistant'\\]"),
        ({"messages": [{"role": "user", "content": "x"}]}, "no assistant turn"),
        ({"prompt": "a", "response": ""}, "empty assistant turn"),
        ({"messages": [{"role": "user"}]}, "needs the keys 'role' and 'content'"),
        ({"prompt": "a", "response": 3}, "must be a string"),
    ],
)
def test_malformed_rows_name_file_and_line(tmp_path, bad, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "response": "b"}, "", bad])
    with pytest.raises(ValueError, match=f"bad.jsonl:3: .*{message}"):
        build_chat(seq_len=32, data_files=path, tokenizer="byte")


def test_missing_files_and_unresolved_auto_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl matches no file"):
        build_chat(seq_len=32, data_files=str(tmp_path / "nope.jsonl"), tokenizer="byte")
    path = write_jsonl(tmp_path / "c.jsonl", [{"prompt": "a", "response": "b"}] * 4)
    with pytest.raises(ValueError, match="tokenizer='auto' is resolved by moe.training.run"):
        build_chat(seq_len=32, data_files=path, tokenizer="auto")


def test_packed_dataset_without_a_mask_is_unchanged_and_a_mask_needs_a_target():
    ids = torch.arange(12).view(2, 6)
    plain = PackedDataset(ids, torch.zeros(2))
    assert plain.loss_mask is None and set(plain[0]) == {"input_ids", "domain_id"}
    assert torch.equal(masked_targets(ids, None), ids[:, 1:])
    with pytest.raises(ValueError, match="at least one target"):
        PackedDataset(ids, torch.zeros(2), torch.tensor([[1, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0]]).bool())


def save_word_tokenizer(directory, texts, eos="</s>", config=True):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=["[UNK]", eos]))
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    if config:
        (directory / "tokenizer_config.json").write_text(json.dumps({"eos_token": eos}))
    return tok


def test_hf_tokenizer_reads_eos_from_tokenizer_config_or_asks_for_it(tmp_path):
    save_word_tokenizer(tmp_path / "tok", ["hello world", "good day"])
    tok = HFTokenizer(tmp_path / "tok")
    assert tok.eos_id == 1 and tok.vocab_size == 6 and tok.decode(tok.encode("hello day")) == "hello day"
    rows = [{"prompt": "hello", "response": "good day"}] * 8
    data = build_chat(seq_len=16, data_files=write_jsonl(tmp_path / "c.jsonl", rows), tokenizer=str(tmp_path / "tok"))
    assert data.vocab_size == 6 and int(data.train.input_ids.max()) < 6
    save_word_tokenizer(tmp_path / "bare", ["hello"], config=False)
    with pytest.raises(ValueError, match="data.eos_token=TOKEN"):
        HFTokenizer(tmp_path / "bare")
    assert HFTokenizer(tmp_path / "bare" / "tokenizer.json", eos_token="</s>").eos_id == 1
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        HFTokenizer(tmp_path)
