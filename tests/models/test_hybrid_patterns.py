"""Hybrid layer patterns (moe/models/pattern.py): which mixer each block gets, Jamba's and BlackMamba's
shipped configs, and bad patterns named in one line."""

from __future__ import annotations

import pytest
from conftest import compose

from moe.models.attention import Attention
from moe.models.build import build_model
from moe.models.mamba import MambaMixer
from moe.models.pattern import mixer_names


def test_jamba_period_and_offset():
    # Jamba's default: attention at i % 8 == 4
    assert mixer_names(n_layers=16, attention="gqa", ssm="mamba", every=8, offset=4) == (
        ["mamba"] * 4 + ["gqa"] + ["mamba"] * 7 + ["gqa"] + ["mamba"] * 3)
    assert mixer_names(n_layers=3, attention="mla", ssm="mamba") == ["mla"] * 3  # every=1: attention only
    assert mixer_names(n_layers=3, attention="gqa", ssm="mamba", layers=["mamba", "gqa", "mamba"]) == [
        "mamba", "gqa", "mamba"]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"every": 0}, "model.attention_every=0 must be >= 1"),
    ({"every": 4, "offset": 4}, r"model.attention_offset=4 must lie in \[0, attention_every=4\)"),
    ({"layers": ["gqa"]}, "model.mixer_layers has 1 entries for n_layers=4"),
])
def test_bad_patterns(kwargs, message):
    with pytest.raises(ValueError, match=message):
        mixer_names(n_layers=4, attention="gqa", ssm="mamba", **kwargs)


def test_jamba_tiny_interleaves_attention_mamba_dense_and_moe():
    model = build_model(compose("model=jamba_tiny"))
    assert [type(b.mixer) for b in model.blocks] == [MambaMixer, MambaMixer, Attention, MambaMixer]
    assert model.moe_indices == [1, 3]  # Jamba's expert period 2, offset 1
    attention = model.blocks[2].mixer
    assert not attention.rope and model.pos_embed is None  # no positional encoding: Mamba carries order
    assert model.blocks[0].mixer.inner_norms is not None  # Jamba's RMSNorms on dt, B, C


def test_blackmamba_tiny_pairs_every_mamba_mixer_with_an_moe():
    model = build_model(compose("model=blackmamba_tiny"))
    assert all(isinstance(b.mixer, MambaMixer) and b.is_moe for b in model.blocks)


def test_an_unknown_mixer_in_the_explicit_list_is_named():
    with pytest.raises(ValueError, match=r"model.mixer_layers names \['rwkv'\], not among \('gqa', 'mla', 'mamba', "
                                         r"'mamba2', 'moa'\)"):
        build_model(compose("model=jamba_tiny", "model.mixer_layers=[mamba,rwkv,gqa,mamba]"))
