"""End-to-end training runs on the embedded corpus: metrics, checkpoints, exact resume, load_model."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from moe import load_model
from moe.checkpoint import list_checkpoints, read_config
from moe.data.packing import first_per_domain
from moe.evaluation import evaluate
from moe.spec import instantiate
from moe.training import run


def read_metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_short_run_logs_evaluates_checkpoints_and_reloads(smoke, tmp_path):
    config = smoke()
    summary = run(config)
    run_dir = tmp_path / "run"
    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == [5, 10, 15, 20]
    first = records[0]
    for key in ("loss", "lm_loss", "lr", "tokens_per_s", "layer0/switch_aux", "layer0/switch_aux_scaled",
                "layer1/z_loss", "layer1/z_loss_scaled", "layer0/max_vio", "layer0/load_entropy",
                "layer0/dead_experts", "moe/max_vio"):
        assert key in first, key
    assert first["layer0/switch_aux_scaled"] == pytest.approx(0.01 * first["layer0/switch_aux"])
    assert first["loss"] == pytest.approx(first["lm_loss"] + first["aux_loss"], rel=1e-5)
    assert {"val/loss", "val/code/loss", "val/prose/loss", "val/layer0/max_vio"} <= set(records[1])
    assert records[-1]["lm_loss"] < records[0]["lm_loss"]
    assert [p.name for p in list_checkpoints(run_dir)] == ["step_0000010", "step_0000020"]
    assert (run_dir / "config.yaml").is_file() and summary["step"] == 20

    # load_model rebuilds the final model: its val loss is the one the run reported
    model = load_model(run_dir)
    data = instantiate(read_config(run_dir / "config.yaml")["data"], "data")  # as recorded: the tokenizer resolved
    picks = first_per_domain(data.val.domain_ids, config["trainer"]["eval_sequences_per_domain"])
    reloaded = evaluate(model, data.val.input_ids[picks], data.val.domain_ids[picks], data.domains,
                        batch_size=4, device=torch.device("cpu"))
    assert reloaded["val/loss"] == pytest.approx(summary["val_loss"], rel=1e-5)
    assert model(data.val.input_ids[:2, :-1]).logits.shape == (2, 64, config["model"]["vocab_size"])


def test_resume_gives_the_losses_of_an_uninterrupted_run(smoke, tmp_path):
    overrides = ("trainer.max_steps=12", "trainer.save_every=6", "trainer.keep_last=0", "trainer.log_every=1",
                 "router.jitter_eps=0.01", "trainer.grad_accum_steps=2")
    full_dir, resumed_dir = tmp_path / "full", tmp_path / "resumed"
    run(smoke(*overrides, run_dir=full_dir))
    # the "interrupted" run: the same run directory as it stood right after the step-6 checkpoint
    shutil.copytree(full_dir, resumed_dir)
    shutil.rmtree(resumed_dir / "checkpoints" / "step_0000012")
    run(smoke(*overrides, "trainer.resume=true", run_dir=resumed_dir))
    full, resumed = read_metrics(full_dir), read_metrics(resumed_dir)
    assert [r["step"] for r in resumed] == list(range(1, 13))
    for a, b in zip(full[6:], resumed[6:]):
        assert a["loss"] == b["loss"] and a["lr"] == b["lr"], (a["step"], a["loss"], b["loss"])


def to_former_layout(checkpoint, config) -> None:
    """Rewrite a checkpoint as runs wrote them before train_state.pt: accelerate/ from accelerator.save_state
    (model, optimizer by position, scheduler, RNG states)."""
    from moe.optim import build_optimizer
    from moe.parallel.train_state import load_train_state

    model = load_model(checkpoint)
    optim = {k: v for k, v in config["optim"].items() if k in ("lr", "weight_decay", "betas", "eps", "fused")}
    optimizer = build_optimizer(model, router_lr_scale=config["optim"]["router_lr_scale"], **optim)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)  # its state comes from the file
    rng = torch.load(checkpoint / "rng" / "rank0.pt", weights_only=False)
    load_train_state(checkpoint, model, optimizer, scheduler, rank=0)
    former = checkpoint / "accelerate"
    former.mkdir()
    torch.save(model.state_dict(), former / "pytorch_model.bin")
    torch.save(optimizer.state_dict(), former / "optimizer.bin")
    torch.save(scheduler.state_dict(), former / "custom_checkpoint_0.pkl")
    torch.save({"step": 0, "random_state": rng["python"], "numpy_random_seed": rng["numpy"],
                "torch_manual_seed": rng["torch"]}, former / "random_states_0.pkl")
    (checkpoint / "train_state.pt").unlink()
    shutil.rmtree(checkpoint / "optimizer")
    shutil.rmtree(checkpoint / "rng")


def test_a_checkpoint_in_the_former_accelerate_layout_still_resumes_exactly(smoke, tmp_path):
    overrides = ("trainer.max_steps=8", "trainer.save_every=4", "trainer.keep_last=0", "trainer.log_every=1",
                 "router.jitter_eps=0.01")
    full_dir, resumed_dir = tmp_path / "full", tmp_path / "resumed"
    run(smoke(*overrides, run_dir=full_dir))
    shutil.copytree(full_dir, resumed_dir)
    shutil.rmtree(resumed_dir / "checkpoints" / "step_0000008")
    to_former_layout(resumed_dir / "checkpoints" / "step_0000004", read_config(full_dir / "config.yaml"))
    run(smoke(*overrides, "trainer.resume=true", run_dir=resumed_dir))
    assert [r["loss"] for r in read_metrics(resumed_dir)] == [r["loss"] for r in read_metrics(full_dir)]


@pytest.mark.slow
def test_compiled_mamba_scans_train_like_eager_ones(smoke, tmp_path):
    overrides = ("model=jamba_tiny", "model.n_layers=4", "model.expert_d_ff=64", "trainer.max_steps=2",
                 "trainer.log_every=1", "trainer.eval_every=2", "trainer.save_every=2")
    run(smoke(*overrides, run_dir=tmp_path / "eager"))
    run(smoke(*overrides, "trainer.compile_mamba=true", run_dir=tmp_path / "compiled"))
    eager, compiled = read_metrics(tmp_path / "eager"), read_metrics(tmp_path / "compiled")
    assert len(eager) == len(compiled) == 2
    for a, b in zip(eager, compiled):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)


def test_compiling_mamba_scans_of_a_model_without_mamba_is_refused(smoke, tmp_path):
    with pytest.raises(ValueError, match=r"trainer.compile_mamba=true, but the model has no Mamba-1 mixer"):
        run(smoke("trainer.compile_mamba=true", run_dir=tmp_path / "refused"))
    assert not (tmp_path / "refused").exists()


def test_training_on_local_hf_files(smoke, tmp_path):
    rows = [{"text": f"record {i}: " + "the quick brown fox jumps over the lazy dog. " * (3 + i % 5)}
            for i in range(200)]
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = run(smoke("data=hf", "data.path=json", f"data.data_files={path}", "trainer.max_steps=10",
                        f"data.cache_dir={tmp_path / 'hf'}"))
    assert summary["step"] == 10 and list(summary["val_domain_losses"]) == ["val/corpus/loss"]


@pytest.mark.slow
def test_compiled_moe_layers_train_like_eager_ones(smoke, tmp_path):
    overrides = ("trainer.max_steps=2", "trainer.log_every=1", "trainer.eval_every=2", "trainer.save_every=2")
    run(smoke(*overrides, run_dir=tmp_path / "eager"))
    run(smoke(*overrides, "trainer.compile_moe=true", run_dir=tmp_path / "compiled"))
    eager, compiled = read_metrics(tmp_path / "eager"), read_metrics(tmp_path / "compiled")
    for a, b in zip(eager, compiled):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
