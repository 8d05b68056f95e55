"""Byte tokenizer, packing and the unigram entropy on hand-made inputs with exact expected values."""

from __future__ import annotations

import math

import pytest
import torch

from moe.data import ByteTokenizer
from moe.data.packing import pack, pack_domains, unigram_entropy
from moe.data.split import is_validation


def test_byte_tokenizer_round_trip_and_eos():
    tok = ByteTokenizer()
    text = "naïve café — λx. x²"
    ids = tok.encode(text)
    assert max(ids) < 256 and len(ids) == len(text.encode("utf-8"))
    assert tok.decode(ids + [tok.eos_id]) == text
    assert tok.vocab_size == 257 and tok.eos_id == 256


def test_pack_separates_documents_with_eos_and_drops_the_tail():
    packed = pack([[1, 2, 3], [4, 5], [6]], seq_len=2, eos_id=9)
    # stream 1 2 3 9 4 5 9 6 9 -> rows of 3, tail dropped
    assert packed.tolist() == [[1, 2, 3], [9, 4, 5], [9, 6, 9]]
    assert pack([[1]], seq_len=4, eos_id=9).shape == (0, 5)


def test_pack_domains_gives_each_sequence_one_domain():
    data = pack_domains({"b": [[7, 7, 7, 7]], "a": [[1, 2], [3]]}, seq_len=2, eos_id=0, domains=("a", "b"))
    # domain a: stream 1 2 0 3 0 -> [1 2 0], tail [3 0] dropped; domain b: 7 7 7 7 0 -> [7 7 7]
    assert data.input_ids.tolist() == [[1, 2, 0], [7, 7, 7]]
    assert data.domain_ids.tolist() == [0, 1]
    assert data[1]["input_ids"].tolist() == [7, 7, 7] and int(data[1]["domain_id"]) == 1


def test_unigram_entropy_exact():
    ids = torch.tensor([[0, 0, 1, 2]])
    expected = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert unigram_entropy(ids, vocab_size=5) == pytest.approx(expected)


def test_split_is_a_pure_function_of_the_id():
    ids = [f"doc{i}" for i in range(2000)]
    val = [d for d in ids if is_validation(d, 0.1)]
    assert val == [d for d in reversed(ids) if is_validation(d, 0.1)][::-1]
    assert 150 < len(val) < 250
