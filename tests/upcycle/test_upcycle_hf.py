"""Upcycling straight from a Hugging Face dense model directory (tiny random models with their own
tokenizer.json, offline): only ``init.path`` and MoE options on the command line — the backbone and
the tokenizer come from the source, and step 0 computes the dense model's logits."""

from __future__ import annotations

import pytest
import torch
import yaml
from bpe_tokenizer import VOCAB, save_bpe_tokenizer

from moe import load_model
from moe.training import run

transformers = pytest.importorskip("transformers")

SHAPE = dict(vocab_size=VOCAB, hidden_size=48, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=96, max_position_embeddings=64, rms_norm_eps=1e-5, initializer_range=0.2)
SOURCES = {
    "llama": lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(**SHAPE, tie_word_embeddings=False,
                                                                            rope_theta=5000.0)),
    "qwen2": lambda: transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**SHAPE, tie_word_embeddings=True)),
    "gpt2": lambda: transformers.GPT2LMHeadModel(transformers.GPT2Config(  # GELU experts with biases
        vocab_size=VOCAB, n_embd=48, n_layer=3, n_head=4, n_inner=96, n_positions=64, initializer_range=0.2,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)),
}
METHODS = {  # MoE options only: expert_d_ff and the shared expert follow from the method and the source
    "copy": ["init.method=copy", "model.num_experts=4"],
    "virtual_group": ["init.method=virtual_group", "init.granularity=2", "model.num_experts=8", "router.top_k=4"],
}


@pytest.fixture(scope="module", params=list(SOURCES))
def hf_dense(request, tmp_path_factory):
    """(directory, model): a saved random dense HF model with a BPE tokenizer.json beside it."""
    torch.manual_seed(0)
    model = SOURCES[request.param]().eval()
    with torch.no_grad():  # biases and norm gains start at 0 and 1: make them count
        for name, param in model.named_parameters():
            if name.endswith("bias") or "norm" in name or ".ln_" in name:
                param.add_(0.2 * torch.randn_like(param))
    directory = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(directory, safe_serialization=True)
    save_bpe_tokenizer(directory)
    return directory, model


def upcycle(smoke, source, run_dir, *overrides):
    overrides = ["init=upcycle", f"init.path={source}", *overrides]
    return run(smoke(*overrides, run_dir=run_dir), overrides)  # as train.py calls it


@pytest.mark.parametrize("method", list(METHODS))
def test_upcycling_with_only_moe_options_reproduces_the_hf_model(smoke, hf_dense, tmp_path, method):
    source, dense = hf_dense
    upcycle(smoke, source, tmp_path / "moe", *METHODS[method], "trainer.max_steps=0")
    moe = load_model(tmp_path / "moe")
    assert len(moe.moe_layers) == 3 and moe.moe_layers[0].experts.num_experts == (4 if method == "copy" else 8)
    ids = torch.randint(0, VOCAB, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(moe(ids).logits, dense(ids).logits, rtol=1e-4, atol=1e-5)
    if moe.moe_layers[0].experts.activation == "gelu":  # GPT-2's MLP as experts: no HF MoE class holds them
        from moe.interop import save_hf

        with pytest.raises(ValueError, match="are not SwiGLU experts"):
            save_hf(tmp_path / "moe", tmp_path / "hf_out")


def test_a_few_steps_train_with_the_source_tokenizer(smoke, hf_dense, tmp_path):
    source, _ = hf_dense
    summary = upcycle(smoke, source, tmp_path / "moe", *METHODS["copy"], "trainer.max_steps=4",
                      "trainer.eval_every=4", "trainer.save_every=4")
    config = yaml.safe_load((tmp_path / "moe" / "config.yaml").read_text())  # what the run recorded
    assert config["data"]["tokenizer"] == str(source) and config["model"]["vocab_size"] == VOCAB
    assert config["model"]["d_model"] == 48 and config["model"]["num_shared_experts"] == 0
    assert summary["step"] == 4 and 0 < summary["val_loss"] < 10


def test_a_backbone_value_on_the_command_line_must_agree_with_the_source(smoke, hf_dense, tmp_path):
    source, _ = hf_dense
    upcycle(smoke, source, tmp_path / "same", *METHODS["copy"], "model.d_model=48", "trainer.max_steps=0")
    with pytest.raises(ValueError, match=r"model.n_layers=4 disagrees with init.path=.*, which has n_layers=3"):
        upcycle(smoke, source, tmp_path / "bad", *METHODS["copy"], "model.n_layers=4", "trainer.max_steps=0")
    assert not (tmp_path / "bad").exists()


def test_a_router_that_cannot_preserve_the_function_says_so_in_one_line(smoke, hf_dense, tmp_path):
    source, _ = hf_dense
    with pytest.warns(UserWarning, match=r"^init.method=copy: step 0 will not equal the dense model: router.order="
                                         r"softmax_then_topk [^\n]*$"):
        upcycle(smoke, source, tmp_path / "moe", *METHODS["copy"], "router.order=softmax_then_topk",
                "trainer.max_steps=0")


def test_carving_a_hf_model_calibrates_in_its_tokens_and_keeps_its_function_with_every_expert_on(
        smoke, hf_dense, tmp_path, data_cache):
    source, dense = hf_dense
    carve = ["init.method=carve", "router=cmoe", "model.num_experts=3", "model.num_shared_experts=1",
             "router.top_k=3", "init.calibration_tokens=512", f"init.calibration_cache_dir={data_cache}",
             "trainer.max_steps=0"]
    if source.name.startswith("gpt2"):
        with pytest.raises(ValueError, match="init.method=carve partitions SwiGLU neurons; .* has model.mlp=gelu"):
            upcycle(smoke, source, tmp_path / "moe", *carve)
        return
    upcycle(smoke, source, tmp_path / "moe", *carve)
    moe = load_model(tmp_path / "moe")
    assert moe.moe_layers[0].experts.d_ff == moe.moe_layers[0].shared_expert.ffn.gate.weight.shape[0] == 24  # 96 / 4
    ids = torch.randint(0, VOCAB, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(moe(ids).logits, dense(ids).logits, rtol=1e-4, atol=1e-5)


def test_the_llama3_moe_recipe_upcycles_any_dense_source_exactly(hf_dense, tmp_path, data_cache):
    from conftest import compose

    source, dense = hf_dense
    overrides = ["experiment=[smoke,llama3_moe_upcycle]", f"init.path={source}", "logger=none",
                 "trainer.progress=false", f"data.cache_dir={data_cache}", "trainer.max_steps=0"]
    run(compose(*overrides, run_dir=tmp_path / "moe"), overrides)
    moe = load_model(tmp_path / "moe")
    layers = moe.moe_layers
    assert len(layers) == 3 and {(layer.experts.num_experts, layer.router.top_k) for layer in layers} == {(8, 2)}
    assert layers[0].shared_expert is None and layers[0].experts.d_ff == 96
    ids = torch.randint(0, VOCAB, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(moe(ids).logits, dense(ids).logits, rtol=1e-4, atol=1e-5)


def test_the_sequence_length_follows_a_shorter_source_unless_typed(smoke, tmp_path):
    """experiment=smoke composes data.seq_len = model.max_seq_len = 64; the source allows 32."""
    torch.manual_seed(0)
    short = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**SHAPE, "max_position_embeddings": 32}))
    short.save_pretrained(tmp_path / "short", safe_serialization=True)
    save_bpe_tokenizer(tmp_path / "short")
    upcycle(smoke, tmp_path / "short", tmp_path / "moe", *METHODS["copy"], "trainer.max_steps=1")
    config = yaml.safe_load((tmp_path / "moe" / "config.yaml").read_text())
    assert config["model"]["max_seq_len"] == config["data"]["seq_len"] == 32
    with pytest.raises(ValueError, match=r"data.seq_len=64 exceeds model.max_seq_len=32; set data.seq_len<=32"):
        upcycle(smoke, tmp_path / "short", tmp_path / "bad", *METHODS["copy"], "data.seq_len=64")


def test_drop_upcycling_redraws_the_same_fraction_of_gelu_and_swiglu_neurons(smoke, hf_dense, tmp_path):
    source, dense = hf_dense
    upcycle(smoke, source, tmp_path / "moe", "init.method=drop", "init.drop_ratio=0.25", "model.num_experts=4",
            "trainer.max_steps=0")
    experts = load_model(tmp_path / "moe").moe_layers[0].experts
    first = "w_fc_EDF" if experts.activation == "gelu" else "w_gate_EDF"
    dense_FD = dict(dense.named_parameters())[  # the first dense matrix read by x, [F, D]
        "transformer.h.0.mlp.c_fc.weight" if experts.activation == "gelu" else "model.layers.0.mlp.gate_proj.weight"]
    dense_DF = dense_FD.T if experts.activation == "swiglu" else dense_FD  # GPT-2's Conv1D is already [D, F]
    redrawn_E = [(getattr(experts, first)[e] != dense_DF).any(dim=0) for e in range(4)]
    assert [int(r.sum()) for r in redrawn_E] == [96 // 4] * 4
    if experts.activation == "gelu":  # a redrawn neuron's input bias is reset, the others keep GPT-2's
        dense_bias_F = dense.transformer.h[0].mlp.c_fc.bias
        for e, redrawn_F in enumerate(redrawn_E):
            assert torch.equal(experts.b_fc_EF[e][redrawn_F], torch.zeros(24))
            assert torch.equal(experts.b_fc_EF[e][~redrawn_F], dense_bias_F[~redrawn_F])
