"""The Hugging Face adapters' tensor rules (moe/interop/adapters/): for every architecture, every parameter
of a model is covered by exactly one rule, every HF name is written once, and each rule's conversions are
exact inverses, so export → import gives back every weight bit for bit (no transformers needed; the one
documented exception: an ungated shared expert comes back gated, its down-projection doubled)."""

from __future__ import annotations

import pytest
import torch
from hf_cases import CASES, random_model, run_config

from moe import load_model
from moe.interop import save_hf
from moe.interop.adapters import ARCHITECTURES, BY_MODEL_TYPE, SUPPORTED, adapter_for
from moe.interop.adapters.rules import TensorRule


def rules_of(case: str, config_json: dict | None = None) -> tuple[torch.nn.Module, str, list[TensorRule]]:
    options, arch = CASES[case]
    model = random_model(run_config(**options))
    return model, arch, BY_MODEL_TYPE[arch].tensor_rules(model, arch, config_json or {"rope_interleave": False})


@pytest.mark.parametrize("case", list(CASES))
def test_rules_cover_every_parameter_once_and_name_every_hf_tensor_once(case):
    model, _, rules = rules_of(case)
    ours = [name for rule in rules for name in rule.ours]
    hf = [name for rule in rules for name in rule.hf]
    assert sorted(ours) == sorted(set(ours)) and sorted(hf) == sorted(set(hf))
    parameters = {name for name, _ in model.named_parameters()}
    buffers = {name for name, _ in model.named_buffers()}
    assert parameters <= set(ours) <= parameters | buffers


@pytest.mark.parametrize("rope_interleave", [False, True])
@pytest.mark.parametrize("case", list(CASES))
def test_to_ours_inverts_to_hf_exactly(case, rope_interleave):
    model, _, rules = rules_of(case, {"rope_interleave": rope_interleave})
    state = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    for rule in rules:
        values = tuple(state[name].detach() for name in rule.ours)
        back = rule.to_ours(*rule.to_hf(*values))
        assert len(back) == len(values)
        assert all(torch.equal(a, b) for a, b in zip(back, values, strict=True)), rule.hf[0]


def test_interleaved_rope_rows_are_permuted_and_put_back():
    model, _, plain = rules_of("deepseek_v3")
    _, _, interleaved = rules_of("deepseek_v3", {"rope_interleave": True})
    weight = model.blocks[0].mixer.kv_a_proj.weight.detach()  # rows: 16 latent, then 4 rope
    by_name = {rule.ours[0]: rule for rule in interleaved if rule.ours}
    (hf_weight,) = by_name["blocks.0.mixer.kv_a_proj.weight"].to_hf(weight)
    assert torch.equal(hf_weight[:16], weight[:16])  # the latent rows stay
    assert torch.equal(hf_weight[16:], weight[[16, 18, 17, 19]])  # rope (0, 2 | 1, 3) back to pairs (0, 1), (2, 3)
    plain_rule = next(rule for rule in plain if rule.ours == ("blocks.0.mixer.kv_a_proj.weight",))
    assert torch.equal(plain_rule.to_hf(weight)[0], weight)  # rope_interleave: false writes the rows as they are


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors is a no-op")  # n_shared_experts=0
def test_export_then_import_gives_back_every_weight(tmp_path, case):
    options, arch = CASES[case]
    config = run_config(**options)
    model = random_model(config)
    back = load_model(save_hf(model, tmp_path / "hf", config=config))
    got = {**dict(back.named_parameters()), **dict(back.named_buffers())}
    for name, value in [*model.named_parameters(), *model.named_buffers()]:
        if "rope" in name:  # the RoPE tables are rebuilt from θ, not stored
            continue
        if case == "qwen2_moe_ungated_shared" and name.endswith("shared_expert.ffn.down.weight"):
            value = 2.0 * value  # Qwen2-MoE's shared expert is gated: it reads back with gate σ(0) = ½
        assert torch.equal(got[name], value), name


def test_every_supported_model_type_has_one_adapter_and_every_export_target_imports():
    assert {t for t in SUPPORTED} == set(BY_MODEL_TYPE) and set(ARCHITECTURES) <= set(SUPPORTED)
    assert adapter_for("qwen3_moe") is adapter_for("olmoe") is adapter_for("qwen2_moe")
    with pytest.raises(ValueError, match="model_type='bert' is not supported; supported: llama, mistral"):
        adapter_for("bert")

