"""Byte tokenizer, packing, the unigram entropy and the split on hand-made inputs with exact expected values."""

from __future__ import annotations

import math

import pytest
import torch

from moe.data import ByteTokenizer, PackedDataset
from moe.data.packing import pack, pack_domains, split_stats, unigram_entropy
from moe.data.split import assign_validation, is_validation, seeded_order


def test_byte_tokenizer_round_trip_and_eos():
    tok = ByteTokenizer()
    text = "naïve café — λx. x² 🙂"
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8")) and max(ids) < 256
    assert tok.encode_array(text).tolist() == ids
    assert tok.decode(ids + [tok.eos_id]) == text  # eos is skipped
    assert tok.decode([*tok.encode("a"), tok.eos_id, *tok.encode("b")]) == "ab"
    assert tok.vocab_size == 257 and tok.eos_id == 256


def test_decode_of_a_character_cut_in_half_does_not_raise():
    tok = ByteTokenizer()
    ids = tok.encode("é")  # two bytes
    assert tok.decode(ids[:1]) == "\ufffd"
    assert tok.decode(torch.tensor(ids).tolist()) == "é"


def test_pack_separates_documents_with_eos_and_drops_the_tail():
    packed = pack([[1, 2, 3], [4, 5], [6]], seq_len=2, eos_id=9)
    # stream 1 2 3 9 4 5 9 6 9 -> rows of 3, nothing left over
    assert packed.dtype == torch.long
    assert packed.tolist() == [[1, 2, 3], [9, 4, 5], [9, 6, 9]]
    # stream 1 2 3 9 4 5 9 -> one row of 4, the tail [4 5 9] is dropped
    assert pack([[1, 2, 3], [4, 5]], seq_len=3, eos_id=9).tolist() == [[1, 2, 3, 9]]
    assert pack([[1]], seq_len=4, eos_id=9).shape == (0, 5)
    assert pack([], seq_len=4, eos_id=9).shape == (0, 5)


def test_pack_accepts_bytes_and_arrays_like_lists():
    docs = ["héllo", "wörld", "x"]
    tok = ByteTokenizer()
    as_lists = pack([tok.encode(d) for d in docs], seq_len=4, eos_id=tok.eos_id)
    assert torch.equal(pack([d.encode() for d in docs], seq_len=4, eos_id=tok.eos_id), as_lists)
    assert torch.equal(pack([tok.encode_array(d) for d in docs], seq_len=4, eos_id=tok.eos_id), as_lists)
    assert as_lists[0].tolist() == [104, 195, 169, 108, 108]


def test_pack_domains_gives_each_sequence_one_domain():
    data = pack_domains({"b": [[7, 7, 7, 7]], "a": [[1, 2], [3]]}, seq_len=2, eos_id=0, domains=("a", "b"))
    # domain a: stream 1 2 0 3 0 -> [1 2 0], tail [3 0] dropped; domain b: 7 7 7 7 0 -> [7 7 7], tail [7 0]
    assert data.input_ids.tolist() == [[1, 2, 0], [7, 7, 7]]
    assert data.domain_ids.tolist() == [0, 1]
    assert len(data) == 2 and data.seq_len == 2
    assert data[1]["input_ids"].tolist() == [7, 7, 7] and data[1]["domain_id"].dtype == torch.long
    assert int(data[1]["domain_id"]) == 1 and data[1]["domain_id"].dim() == 0
    assert split_stats(data, ("a", "b")) == {"a": {"sequences": 1, "tokens": 3}, "b": {"sequences": 1, "tokens": 3}}
    # a domain without a single full sequence is simply absent
    empty = pack_domains({"a": [[1]]}, seq_len=3, eos_id=0, domains=("a", "b"))
    assert empty.input_ids.shape == (0, 4) and empty.domain_ids.shape == (0,)


def test_packed_dataset_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="bad packed shapes"):
        PackedDataset(torch.zeros(3, 5, dtype=torch.long), torch.zeros(2, dtype=torch.long))


def test_unigram_entropy_exact():
    ids = torch.tensor([[0, 0, 1, 2]])
    expected = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert unigram_entropy(ids, vocab_size=5) == pytest.approx(expected, rel=1e-12)
    assert unigram_entropy(torch.full((2, 3), 4), vocab_size=5) == 0.0
    assert unigram_entropy(torch.arange(8).view(2, 4), vocab_size=8) == pytest.approx(math.log(8))


def test_split_is_a_pure_function_of_the_key():
    ids = [f"doc{i}" for i in range(2000)]
    val = [d for d in ids if is_validation(d, 0.1)]
    assert val == [d for d in reversed(ids) if is_validation(d, 0.1)][::-1]
    assert 150 < len(val) < 250
    assert set(val) <= {d for d in ids if is_validation(d, 0.2)}  # a larger fraction only adds documents


def test_small_domains_still_get_a_validation_key_with_all_its_documents():
    keys = ["a.py", "a.py", "b.py"]  # two documents of one file, one of another; 1e-9: no key passes
    flags = assign_validation(keys, 1e-9)
    assert sum(flags) in (1, 2) and flags[0] == flags[1]
    assert assign_validation(["only"], 1e-9) == [False]  # a single key stays in train


def test_seeded_order_depends_on_ids_and_seed_only():
    ids = [f"row:{i}" for i in range(50)]
    order = seeded_order(ids, 0)
    assert sorted(order) == list(range(50)) and order != list(range(50))
    reversed_ids = ids[::-1]
    assert [reversed_ids[i] for i in seeded_order(reversed_ids, 0)] == [ids[i] for i in order]
    assert seeded_order(ids, 1) != order
    assert seeded_order(ids, 0) == order
