"""Incremental decoding for every architecture the HF import and export cover (tests/interop/hf_cases.py):
a prompt then one token at a time gives the full forward's logits within 1e-5 (float32)."""

from __future__ import annotations

import pytest
import torch
from hf_cases import CASES, S, V, random_model, run_config


@pytest.mark.parametrize("case", list(CASES))
def test_cached_decoding_equals_the_full_forward(case):
    options, _ = CASES[case]
    model = random_model(run_config(**options))
    ids = torch.randint(0, V, (2, S), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(ids).logits
        state = model.decode_state()
        pieces = [model(ids[:, :9], state=state).logits]
        pieces += [model(ids[:, t:t + 1], state=state).logits for t in range(9, S)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5 * float(full.abs().max()))
