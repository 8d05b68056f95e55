"""Fine-tuning: response-only loss, trainer.freeze, config adoption from a checkpoint, and the Aurora use
case end to end (a random HF Mixtral + its tokenizer + local chat JSONL, only the experts trained)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from accelerate.utils import set_seed
from conftest import compose

from moe import load_model
from moe.batches import MicroBatchSchedule
from moe.data.packing import first_per_domain
from moe.evaluation import evaluate
from moe.models.build import build_model
from moe.spec import instantiate
from moe.training import run

REPO = Path(__file__).resolve().parent.parent


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def save_word_tokenizer(directory: Path, texts: list[str], eos: str = "</s>"):
    """A WordLevel tokenizer.json of the texts' words, and a tokenizer_config.json naming its eos."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=["[UNK]", eos]))
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"eos_token": eos}))
    return tok
WORDS = "alpha beta gamma delta red green blue one two three four five".split()


def chat_rows(n: int = 40) -> list[dict]:
    """Learnable instructions: the answer repeats the prompt's words in reverse; both row formats."""
    rows = []
    for i in range(n):
        words = [WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(3 + i % 3)]
        prompt, response = "reverse " + " ".join(words), " ".join(reversed(words))
        if i % 2:
            rows.append({"prompt": prompt, "response": response})
        else:
            rows.append({"messages": [{"role": "system", "content": "be exact"}, {"role": "user", "content": prompt},
                                      {"role": "assistant", "content": response}]})
    return rows


@pytest.fixture
def chat_file(tmp_path) -> str:
    return write_jsonl(tmp_path / "train.jsonl", chat_rows())


def chat_config(chat_file, run_dir, *overrides):
    return compose("experiment=smoke", "logger=none", "trainer.progress=false", "data=chat",
                   f"data.data_files={chat_file}", "data.val_fraction=0.2", "trainer.log_every=1",
                   *overrides, run_dir=run_dir)


def test_training_loss_is_the_cross_entropy_of_response_tokens_only(chat_file, tmp_path):
    config = chat_config(chat_file, tmp_path / "run", "trainer.max_steps=1", "trainer.eval_every=1")
    run_dir = Path(run(config)["run_dir"])
    record = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    # rebuild what run() saw at step 1: same seed, same data, same first micro-batch, untrained weights
    set_seed(config["trainer"]["seed"])
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["data"]["tokenizer"] == "byte"  # auto, without a tokenizer at init.path
    data = instantiate(saved["data"], "data")
    model = build_model(config)
    picks = MicroBatchSchedule(num_sequences=len(data.train), batch_size=config["trainer"]["batch_size"],
                               seed=config["trainer"]["seed"]).indices(0)
    batch, mask = data.train.input_ids[picks], data.train.loss_mask[picks, 1:]
    with torch.no_grad():
        logp = F.log_softmax(model(batch[:, :-1]).logits.float(), dim=-1)
    token_loss = -logp.gather(-1, batch[:, 1:, None])[..., 0]
    expected = float(token_loss[mask].mean())
    assert mask.sum() < mask.numel() // 2  # prompts and padding really are excluded
    assert record["lm_loss"] == pytest.approx(expected, rel=1e-5)
    assert abs(float(token_loss.mean()) - expected) > 1e-3  # the unmasked loss differs
    # evaluate() with the mask: nats per response token
    val = evaluate(model, data.val.input_ids, data.val.domain_ids, data.domains, batch_size=4,
                   device=torch.device("cpu"), loss_mask=data.val.loss_mask)
    with torch.no_grad():
        logp = F.log_softmax(model(data.val.input_ids[:, :-1]).logits.float(), dim=-1)
    val_loss = -logp.gather(-1, data.val.input_ids[:, 1:, None])[..., 0]
    assert val["val/loss"] == pytest.approx(float(val_loss[data.val.loss_mask[:, 1:]].mean()), rel=1e-5)


@pytest.mark.parametrize(("freeze", "frozen"), [
    ("router", lambda n: ".router." in n),
    ("experts", lambda n: ".experts." in n),
    ("all_but_experts", lambda n: ".experts." not in n),
    ("[router,experts]", lambda n: ".router." in n or ".experts." in n),
])
def test_frozen_parameters_stay_bit_identical_and_the_others_train(chat_file, tmp_path, freeze, frozen):
    config = chat_config(chat_file, tmp_path / "run", "trainer.max_steps=3", "trainer.eval_every=3",
                         "model.num_shared_experts=1", f"trainer.freeze={freeze}")
    summary = run(config)
    set_seed(config["trainer"]["seed"])
    before = build_model(config).state_dict()  # init=scratch: the weights run() started from
    after = load_model(tmp_path / "run")
    names = [n for n, _ in after.named_parameters()]
    assert any(frozen(n) for n in names) and not all(frozen(n) for n in names)
    for name, param in after.named_parameters():
        same = torch.equal(param, before[name])
        assert same == frozen(name), (name, same)
    trainable = sum(p.numel() for n, p in after.named_parameters() if not frozen(n))
    assert summary["trainable_params"] == trainable
    assert summary["total_params"] == sum(p.numel() for p in after.parameters())


@pytest.mark.parametrize(("overrides", "error", "message"), [
    (("trainer.freeze=everything",), ValueError, "trainer.freeze='everything' is not one of .*all_but_experts"),
    (("model=dense_tiny", "trainer.freeze=all_but_experts"), ValueError,
     "trainer.freeze=all_but_experts leaves no trainable parameter"),
    (("model=dense_tiny", "trainer.freeze=router"), ValueError, "matches no parameter"),
    (("init=checkpoint", "init.path=X", "init.config_from_checkpoint=[model,optim]"), ValueError,
     r"unknown node\(s\) \['optim'\]; allowed: \['model', 'router', 'experts', 'balance'\]"),
    (("init=checkpoint", "init.path=/nonexistent/ckpt"), FileNotFoundError, "/nonexistent/ckpt"),
])
def test_bad_fine_tuning_options_stop_before_the_run_directory_exists(chat_file, tmp_path, overrides, error,
                                                                      message):
    with pytest.raises(error, match=message):
        run(chat_config(chat_file, tmp_path / "run", *overrides))
    assert not (tmp_path / "run").exists()


def make_hf_mixtral(directory: Path) -> int:
    """A random tiny HF Mixtral with a WordLevel tokenizer of the chat texts; returns the tokenizer size."""
    from transformers import MixtralConfig, MixtralForCausalLM

    texts = [json.dumps(r) for r in chat_rows()] + ["<|user|> <|assistant|> <|system|>"]
    tok = save_word_tokenizer(directory, texts)
    torch.manual_seed(0)
    hf = MixtralForCausalLM(MixtralConfig(
        vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=128,
        tie_word_embeddings=False))
    hf.save_pretrained(directory)
    return tok.get_vocab_size()


@pytest.mark.slow
def test_fine_tuning_an_hf_mixtral_trains_only_its_experts_and_reloads(chat_file, tmp_path):
    hf_dir = tmp_path / "hf"
    vocab = make_hf_mixtral(hf_dir)
    assert vocab < 300
    run_dir = tmp_path / "ft"
    config = chat_config(chat_file, run_dir, "init=checkpoint", f"init.path={hf_dir}", "trainer.freeze=all_but_experts",
                         "data.seq_len=48", "trainer.max_steps=12", "trainer.eval_every=12", "optim.lr=1e-2",
                         "optim.warmup_steps=2")
    assert config["model"]["d_model"] == 64 and config["data"]["tokenizer"] == "auto"  # the composed smoke model
    summary = run(config)
    assert summary["step"] == 12 and summary["interrupted_by"] is None
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["model"]["d_model"] == 32 and saved["model"]["num_experts"] == 4
    assert saved["model"]["vocab_size"] == 300 and saved["router"]["top_k"] == 2
    assert saved["data"]["tokenizer"] == str(hf_dir)

    source, tuned = load_model(hf_dir), load_model(run_dir)
    data = instantiate(saved["data"], "data")
    assert data.vocab_size == vocab
    picks = first_per_domain(data.val.domain_ids, saved["trainer"]["eval_sequences_per_domain"])
    before = evaluate(source, data.val.input_ids[picks], data.val.domain_ids[picks], data.domains, batch_size=4,
                      device=torch.device("cpu"), loss_mask=data.val.loss_mask[picks])["val/loss"]
    assert torch.isfinite(torch.tensor(summary["val_loss"])) and summary["val_loss"] < before
    source_sd = source.state_dict()
    for name, param in tuned.named_parameters():
        assert torch.equal(param, source_sd[name]) != (".experts." in name), name
    assert summary["trainable_params"] == sum(p.numel() for n, p in tuned.named_parameters() if ".experts." in n)

    # fine-tune the fine-tuned run: its config and (through data.tokenizer=auto) its tokenizer carry over
    again = run(chat_config(chat_file, tmp_path / "again", "init=checkpoint", f"init.path={run_dir}",
                            "data.seq_len=48", "trainer.max_steps=0"))
    saved = yaml.safe_load((tmp_path / "again" / "config.yaml").read_text())
    assert saved["model"]["d_model"] == 32 and saved["data"]["tokenizer"] == str(hf_dir)
    assert again["val_loss"] == pytest.approx(summary["val_loss"], rel=1e-5)


def test_fine_tuning_from_the_command_line(chat_file, tmp_path):
    hf_dir = tmp_path / "hf"
    make_hf_mixtral(hf_dir)
    run_dir = tmp_path / "cli"
    args = [sys.executable, str(REPO / "train.py"), "init=checkpoint", f"init.path={hf_dir}", "data=chat",
            f"data.data_files={chat_file}", "trainer.freeze=all_but_experts", "data.seq_len=48",
            "trainer.max_steps=2", "trainer.batch_size=4", "trainer.eval_sequences_per_domain=4",
            "trainer.progress=false", f"run_dir={run_dir}"]
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "trainer.freeze=all_but_experts: training" in done.stdout and "finished step 2/2" in done.stdout
    assert load_model(run_dir).vocab_size == 300
