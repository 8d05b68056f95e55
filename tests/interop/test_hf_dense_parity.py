"""Logits parity of HF Llama / Mistral / Qwen2 / Qwen3 models imported into our backbone (tiny random
models built offline from their config classes)."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from moe import load_model  # noqa: E402
from moe.interop import SUPPORTED, load_hf, model_config_from_hf  # noqa: E402
from moe.models import DecoderLM  # noqa: E402

TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=96, vocab_size=128, max_position_embeddings=256)

ARCHS = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
}
# Qwen3's class default head_dim is 128, not hidden/heads: tiny Qwen3s set it
HEAD_DIM = {"qwen3": {"head_dim": TINY["hidden_size"] // TINY["num_attention_heads"]}}


def _save_hf(tmp_path, arch: str, *, tie: bool, shard: str | None = None, **extra):
    config_cls, model_cls = ARCHS[arch]
    torch.manual_seed(0)
    # initializer_range 0.2 (not 0.02) so attention, and hence RoPE, visibly moves the logits
    extra = {"initializer_range": 0.2, **HEAD_DIM.get(arch, {}), **extra}
    config = config_cls(**TINY, tie_word_embeddings=tie, rope_theta=5000.0, rms_norm_eps=1e-5, **extra)
    model = model_cls(config).float().eval()
    with torch.no_grad():  # random norm gains and biases, so every mapped tensor matters
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(torch.randn_like(p) * 0.2 + (1.0 if "norm" in name else 0.0))
    kwargs = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(tmp_path, safe_serialization=True, **kwargs)
    return model


def _assert_parity(hf_model, ours, seq_len: int = 64):
    torch.manual_seed(1)
    ids = torch.randint(0, TINY["vocab_size"], (2, seq_len))
    with torch.no_grad():
        theirs = hf_model(input_ids=ids).logits.float()
        mine = ours(ids).logits.float()
    torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_logits_match_hf(tmp_path, arch, tie):
    hf_model = _save_hf(tmp_path, arch, tie=tie)
    ours = load_model(tmp_path)
    assert isinstance(ours, DecoderLM) and not ours.training
    assert (ours.lm_head.weight is ours.embed.weight) == tie
    assert ours.blocks[0].mixer.q_proj.bias is not None if arch == "qwen2" else True
    assert (ours.blocks[0].mixer.q_norm is not None) == (arch == "qwen3")
    _assert_parity(hf_model, ours)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_sharded_checkpoint(tmp_path, arch):
    hf_model = _save_hf(tmp_path, arch, tie=False, shard="40KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*-of-*.safetensors"))) > 1
    _assert_parity(hf_model, load_model(tmp_path))


def test_config_mapping():
    cfg = model_config_from_hf({**TINY, "model_type": "mistral", "rope_theta": 1e6, "rms_norm_eps": 1e-5,
                                "sliding_window": 4096, "max_position_embeddings": 131072,
                                "tie_word_embeddings": True})
    assert cfg == {"_target_": "moe.models.build_decoder", "vocab_size": 128, "d_model": 64, "n_layers": 2,
                   "n_heads": 4, "n_kv_heads": 2, "d_ff": 96, "max_seq_len": 4096, "rope_theta": 1e6,
                   "norm_eps": 1e-5, "qk_norm": False, "qk_norm_scope": "head", "attention_bias": False,
                   "tie_embeddings": True, "num_experts": 0}
    v5 = model_config_from_hf({**TINY, "model_type": "qwen2",
                               "rope_parameters": {"rope_type": "default", "rope_theta": 123.0}})
    assert v5["rope_theta"] == 123.0 and v5["attention_bias"] and v5["max_seq_len"] == 256
    assert model_config_from_hf({**TINY, "model_type": "llama"}, max_seq_len=64)["max_seq_len"] == 64


@pytest.mark.parametrize("model_type", ["rwkv", "bert", None])
def test_unsupported_model_type(tmp_path, model_type):
    (tmp_path / "config.json").write_text(json.dumps({**TINY, "model_type": model_type}))
    with pytest.raises(ValueError, match=rf"model_type={model_type!r}.*{', '.join(SUPPORTED)}"):
        load_model(tmp_path)


@pytest.mark.parametrize("bad, match", [
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_scaling"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4}}, "rope_type='yarn'"),
    ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
    ({"head_dim": 32}, "head_dim=32"),
    ({"mlp_bias": True}, "mlp_bias"),
    ({"attention_bias": True}, "attention_bias"),
    ({"sliding_window": 128}, "sliding_window=128"),
])
def test_unsupported_features(bad, match):
    with pytest.raises(ValueError, match=match):
        model_config_from_hf({**TINY, "model_type": "mistral", **bad})


def test_qwen3_config_mapping_and_head_dim():
    cfg = model_config_from_hf({**TINY, "model_type": "qwen3", "head_dim": 16, "rms_norm_eps": 1e-6,
                                "use_sliding_window": False, "sliding_window": 32})  # window unused
    assert cfg["qk_norm"] and cfg["qk_norm_scope"] == "head" and not cfg["attention_bias"]
    assert cfg["max_seq_len"] == 256 and cfg["norm_eps"] == 1e-6
    # Qwen3's class default head_dim=128 differs from hidden/heads here: refused, naming the field
    with pytest.raises(ValueError, match=r"qwen3: head_dim=128 differs from hidden_size/num_attention_heads=16"):
        model_config_from_hf({**TINY, "model_type": "qwen3", "head_dim": 128})
    with pytest.raises(ValueError, match="qwen3: sliding_window=32 is shorter"):
        model_config_from_hf({**TINY, "model_type": "qwen3", "head_dim": 16, "use_sliding_window": True,
                              "sliding_window": 32})
    with pytest.raises(ValueError, match="qwen3: attention_bias=true"):
        model_config_from_hf({**TINY, "model_type": "qwen3", "head_dim": 16, "attention_bias": True})


def test_sliding_window_at_least_seq_len_is_fine():
    assert model_config_from_hf({**TINY, "model_type": "mistral", "sliding_window": 256})["max_seq_len"] == 256
    # Qwen2 ignores sliding_window unless use_sliding_window is set
    assert model_config_from_hf({**TINY, "model_type": "qwen2", "sliding_window": 16})["max_seq_len"] == 256


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**TINY, "model_type": "llama"}))
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_model(tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_hf(tmp_path / "nowhere")


def test_missing_shard(tmp_path):
    _save_hf(tmp_path, "llama", tie=False, shard="40KB")
    shard = sorted(tmp_path.glob("model-*-of-*.safetensors"))[0]
    shard.unlink()
    with pytest.raises(FileNotFoundError, match=shard.name):
        load_model(tmp_path)


def _edit_config(path, **changes):
    """Change config.json after saving, so the stored tensors no longer fit it."""
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, **changes}))


def test_shape_mismatch(tmp_path):
    _save_hf(tmp_path, "llama", tie=False)
    _edit_config(tmp_path, intermediate_size=80)
    with pytest.raises(ValueError, match=r"model\.layers\.0\.mlp\.\w+_proj\.weight has shape \((96, 64|64, 96)\), "
                                         r"expected \((80, 64|64, 80)\)"):
        load_model(tmp_path)


def test_kv_shape_mismatch(tmp_path):
    _save_hf(tmp_path, "llama", tie=False)
    _edit_config(tmp_path, num_key_value_heads=4)
    with pytest.raises(ValueError, match=r"k_proj\.weight has shape \(32, 64\), expected \(64, 64\)"):
        load_model(tmp_path)


def test_moe_lab_checkpoints_still_load(tmp_path):
    """A moe-lab checkpoint dir (meta.json) is not mistaken for a HF dir even next to a config.json."""
    from moe.interop.hf_import import is_hf_model_dir

    (tmp_path / "config.json").write_text("{}")
    assert is_hf_model_dir(tmp_path)
    (tmp_path / "meta.json").write_text("{}")
    assert not is_hf_model_dir(tmp_path)
