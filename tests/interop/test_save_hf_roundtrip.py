"""save_hf: tiny random moe-lab models written as HF llama / qwen2 / qwen3 / gpt2 / mixtral / qwen2_moe /
qwen3_moe / olmoe / deepseek_v3 give transformers' logits equal to ours (float32, 1e-4 relative) and load
back into moe-lab unchanged; HF → moe-lab → HF round-trips (Mixtral, DeepSeek-V3); unsupported models and
occupied directories are refused before anything is written."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from hf_cases import CASES, DEEPSEEK, MOE, S, V, random_model, run_config
from safetensors.torch import save_model

from moe import load_model
from moe.checkpoint import write_config
from moe.interop import save_hf
from moe.models.build import build_model

transformers = pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[2]


def hf_logits(path, ids):
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        return hf, hf(ids).logits


def rel_diff(a, b) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors is a no-op")  # n_shared_experts=0
def test_save_hf_logits_match_transformers_and_load_back(tmp_path, case):
    options, expected = CASES[case]
    config = run_config(**options)
    model = random_model(config)
    ids = torch.randint(0, V, (2, S))
    with torch.no_grad():
        ours = model(ids).logits
    out = save_hf(model, tmp_path / "hf", config=config)
    written = json.loads((out / "config.json").read_text())
    assert written["model_type"] == expected
    assert not list(tmp_path.glob(".*"))  # the temporary directory is gone
    _, theirs = hf_logits(out, ids)
    diff = rel_diff(theirs, ours)
    print(f"{case}: {expected} max |Δlogit| / max |logit| = {diff:.2e}")
    assert diff < 1e-4
    with torch.no_grad():  # moe-lab's import reads the directory back to the same function
        back = load_model(out)(ids).logits
    assert rel_diff(back, ours) < 1e-6


def test_deepseek_v3_export_config_and_router_bias(tmp_path):
    config = run_config(**DEEPSEEK)
    model = random_model(config)
    out = save_hf(model, tmp_path / "hf", config=config)
    written = json.loads((out / "config.json").read_text())
    assert written["architectures"] == ["DeepseekV3ForCausalLM"]
    expected = {"n_routed_experts": 8, "num_experts_per_tok": 2, "n_group": 4, "topk_group": 2,
                "norm_topk_prob": True, "routed_scaling_factor": 2.5, "topk_method": "noaux_tc",
                "scoring_func": "sigmoid", "first_k_dense_replace": 1, "moe_intermediate_size": 32,
                "intermediate_size": 96, "n_shared_experts": 2, "q_lora_rank": 24, "kv_lora_rank": 16,
                "qk_nope_head_dim": 8, "qk_rope_head_dim": 4, "v_head_dim": 12, "rope_interleave": False,
                "num_key_value_heads": 4, "rope_parameters": {"rope_type": "default", "rope_theta": 5000.0}}
    assert {key: written[key] for key in expected} == expected
    hf, _ = hf_logits(out, torch.randint(0, V, (1, 4)))
    for ours, theirs in zip(model.moe_layers, [layer.mlp for layer in hf.model.layers[1:]]):
        assert torch.equal(theirs.gate.e_score_correction_bias, ours.router.selection_bias_E)
        assert theirs.shared_experts.up_proj.weight.shape == (64, 64)  # 2 shared experts × 32
    back = load_model(out)
    router = back.moe_layers[0].router
    assert (router.num_groups, router.topk_groups, router.routed_scaling_factor) == (4, 2, 2.5)
    assert back.moe_layers[0].shared_expert.ffn.up.weight.shape == (64, 64)
    assert torch.equal(router.selection_bias_E, model.moe_layers[0].router.selection_bias_E)


def test_hf_deepseek_v3_round_trips_through_moe_lab(tmp_path):
    """HF (interleaved RoPE, DeepSeek's own layout) → moe-lab (rows de-interleaved) → HF (rope_interleave
    false) computes the same function."""
    config = transformers.DeepseekV3Config(
        vocab_size=V, hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=4, first_k_dense_replace=1, n_routed_experts=8, n_group=4,
        topk_group=2, num_experts_per_tok=2, n_shared_experts=1, q_lora_rank=24, kv_lora_rank=16,
        qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=12, max_position_embeddings=48, initializer_range=0.2,
        rope_interleave=True)
    torch.manual_seed(0)
    reference = transformers.DeepseekV3ForCausalLM(config).eval()
    for layer in reference.model.layers[1:]:
        layer.mlp.gate.e_score_correction_bias.normal_(0.0, 0.5)
    reference.save_pretrained(tmp_path / "a")
    save_hf(tmp_path / "a", tmp_path / "b")
    again, logits = hf_logits(tmp_path / "b", ids := torch.randint(0, V, (2, S)))
    with torch.no_grad():
        expected = reference(ids).logits
        back = load_model(tmp_path / "b")(ids).logits
    diff = rel_diff(logits, expected)
    print(f"HF deepseek_v3 → moe-lab → HF: max |Δlogit| / max |logit| = {diff:.2e}")
    assert diff < 1e-4 and rel_diff(back, expected) < 1e-4
    assert again.config.rope_interleave is False and again.config.n_shared_experts == 1
    assert torch.equal(again.model.layers[2].mlp.gate.e_score_correction_bias,
                       reference.model.layers[2].mlp.gate.e_score_correction_bias)


def test_hf_mixtral_round_trips_through_moe_lab(tmp_path):
    config = transformers.MixtralConfig(
        vocab_size=V, hidden_size=64, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=48,
        initializer_range=0.2, router_aux_loss_coef=0.02, rope_theta=2000.0)
    torch.manual_seed(0)
    reference = transformers.MixtralForCausalLM(config).eval()
    reference.save_pretrained(tmp_path / "a")
    ours = load_model(tmp_path / "a")
    save_hf(tmp_path / "a", tmp_path / "b")  # a HF directory as the source: its config comes along
    again, logits = hf_logits(tmp_path / "b", ids := torch.randint(0, V, (2, S)))
    with torch.no_grad():
        assert rel_diff(logits, reference(ids).logits) < 1e-4
        assert rel_diff(ours(ids).logits, reference(ids).logits) < 1e-4
    assert again.config.router_aux_loss_coef == pytest.approx(0.02)  # k × coef in, coef / k out
    assert load_model(tmp_path / "b").moe_layers[0].balancers["switch_aux"].coeff == pytest.approx(2 * 0.02)


def test_switch_aux_coefficient_round_trips(tmp_path):
    balance = {"switch_aux": {"_target_": "moe.balance.SwitchAuxLoss", "_partial_": True, "coeff": 0.03},
               "z_loss": {"_target_": "moe.balance.ZLoss", "_partial_": True, "coeff": 0.001}}
    config = run_config(**MOE, balance=balance)
    out = save_hf(random_model(config), tmp_path / "hf", config=config)
    written = json.loads((out / "config.json").read_text())
    assert written["router_aux_loss_coef"] == pytest.approx(0.03 / 2)  # HF's loss is k at balance, ours 1
    assert written["output_router_logits"] is False
    back = load_model(out).moe_layers[0]
    assert back.balancers["switch_aux"].coeff == pytest.approx(0.03) and "z_loss" not in back.balancers


def write_checkpoint(run_dir, config, model):
    """The files load_model reads from a checkpoint: config.yaml, model.safetensors, meta.json."""
    ckpt = run_dir / "checkpoints" / "step_0000001"
    ckpt.mkdir(parents=True)
    write_config(ckpt / "config.yaml", config)
    save_model(model, str(ckpt / "model.safetensors"))
    (ckpt / "meta.json").write_text("{}")


def test_run_directory_source_and_cli(tmp_path, capsys):
    config = run_config(**MOE, qk_norm=True, order="softmax_then_topk")
    model = random_model(config)
    write_checkpoint(tmp_path / "run", config, model)
    with pytest.raises(ValueError, match="config= is only for a model object"):
        save_hf(tmp_path / "run", tmp_path / "hf", config=config)
    out = save_hf(tmp_path / "run", tmp_path / "hf")
    ids = torch.randint(0, V, (2, S))
    with torch.no_grad():
        assert rel_diff(hf_logits(out, ids)[1], model(ids).logits) < 1e-4

    spec = importlib.util.spec_from_file_location("export_hf", REPO / "eval" / "export_hf.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    assert cli.main([str(tmp_path / "run"), str(tmp_path / "hf")]) == 1  # occupied, no --overwrite
    assert "not empty" in capsys.readouterr().err
    assert cli.main([str(tmp_path / "run"), str(tmp_path / "hf"), "--overwrite"]) == 0
    assert "model_type qwen3_moe" in capsys.readouterr().out
    assert cli.main([str(tmp_path / "run"), str(tmp_path / "mx"), "--arch", "mixtral"]) == 1
    assert "arch='mixtral' cannot represent" in capsys.readouterr().err and not (tmp_path / "mx").exists()


@pytest.mark.parametrize("options, message", [
    ({**MOE, "router": {"_target_": "moe.routers.ExpertChoiceRouter", "_partial_": True}},
     "router ExpertChoiceRouter has no Hugging Face equivalent.*exportable routers: TopKRouter"),
    ({**MOE, "router": {"_target_": "moe.routers.SigmoidRouter", "_partial_": True}},
     "deepseek_v3: model.attention=gqa \\(deepseek_v3 needs model.attention=mla"),
    ({**DEEPSEEK, "router": {"_target_": "moe.routers.TopKRouter", "_partial_": True, "order": "softmax_then_topk"}},
     "deepseek_v3: router TopKRouter \\(deepseek_v3 routes with sigmoid scores"),
    ({**DEEPSEEK, "moe_first_dense": 0, "moe_layers": [0, 2]},
     "MoE blocks \\[0, 2\\]: deepseek_v3 has dense blocks only before the first MoE block"),
    ({**DEEPSEEK, "shared_expert_d_ff": 48}, "shared expert width 96 != num_shared_experts × expert_d_ff"),
    ({**DEEPSEEK, "shared_expert_gate": True}, "a gated shared expert"),
    ({**MOE, "router": {"_target_": "moe.routers.TopKRouter", "_partial_": True, "order": "softmax_then_topk",
                 "jitter_eps": 0.01}},
     "jitter_eps=0.01 has no HF equivalent"),
    ({**MOE, "router": {"_target_": "moe.routers.TopKRouter", "_partial_": True, "order": "softmax_then_topk",
                 "routed_scaling_factor": 2.0}},
     "routed_scaling_factor=2.0 has no HF equivalent"),
    ({**MOE, "capacity_factor": 1.25}, "HF MoEs are dropless"),
    ({"norm": "layernorm"}, "no Hugging Face architecture represents this model.*model.norm='layernorm'"),
])
@pytest.mark.filterwarnings("ignore:ExpertChoiceRouter ranks all tokens")
def test_unsupported_models_raise_before_writing(tmp_path, options, message):
    config = run_config(**options)
    with pytest.raises(ValueError, match=message):
        save_hf(build_model(config), tmp_path / "hf", config=config)
    assert not list(tmp_path.iterdir())


def test_selection_bias_is_refused(tmp_path):
    config = run_config(**MOE)
    model = build_model(config)
    model.moe_layers[1].router.selection_bias_E[0] = 0.5  # as the aux_free balancer leaves it
    with pytest.raises(ValueError, match="block 1: the router's selection_bias_E is non-zero"):
        save_hf(model, tmp_path / "hf", config=config)
    assert not list(tmp_path.iterdir())


def test_forced_arch_that_cannot_hold_the_model(tmp_path):
    config = run_config(**MOE, order="softmax_then_topk")
    with pytest.raises(ValueError, match="arch='mixtral' cannot represent.*router.order=softmax_then_topk"):
        save_hf(build_model(config), tmp_path / "hf", config=config, arch="mixtral")
    save_hf(build_model(run_config(**MOE)), tmp_path / "q", config=run_config(**MOE), arch="qwen2_moe")


def test_non_empty_out_dir_is_kept_unless_overwrite(tmp_path):
    config = run_config()
    model = random_model(config)
    out = tmp_path / "hf"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        save_hf(model, out, config=config)
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "keep me"
    save_hf(model, out, config=config, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]  # no temporary or backup directory left


def test_wrong_rope_theta_in_config_is_caught(tmp_path):
    config = run_config()
    with pytest.raises(ValueError, match="rope_theta=10000.0 from the config does not match"):
        save_hf(build_model(config), tmp_path / "hf", config={"model": {**config["model"], "rope_theta": 1e4}})


def test_a_model_object_brings_its_own_rope_theta(tmp_path):
    config = run_config()  # rope_theta 5000, not the default 10000
    model = random_model(config)
    save_hf(model, tmp_path / "hf")  # no config=: θ comes from the model itself
    written = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert written["rope_parameters"]["rope_theta"] == 5000.0
    ids = torch.randint(0, config["model"]["vocab_size"], (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path / "hf")(ids).logits, model(ids).logits)
