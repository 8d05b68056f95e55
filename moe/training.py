"""The training loop: accelerate, gradient accumulation, eval, metrics.jsonl, atomic checkpoints, resume.

``run(config)`` takes the resolved run config (a plain dict; ``train.py`` composes it with Hydra).
Everything that can be wrong with the config is built and checked before the run directory is
touched. Every per-optimizer-step action — the optimizer, the LR schedule, balancer bias updates,
logging, eval and checkpoints — happens only when ``accelerator.sync_gradients`` is true.

The model is built from the config and initialised by the ``init`` node (moe/upcycle/init.py:
scratch, a checkpoint, or upcycled from a dense model); ``trainer.max_steps=0`` only evaluates it and
writes it as the step-0 checkpoint. ``init=checkpoint`` first replaces the config nodes named by
``init.config_from_checkpoint`` with the checkpoint's (a moe-lab config.yaml, or a HF config.json), so
a Hugging Face model is fine-tuned without retyping its architecture and the run's config.yaml
rebuilds the fine-tuned model; ``data.tokenizer=auto`` becomes init.path's tokenizer.json (if any).

Data may carry a loss mask (chat data: responses only); masked targets are -100, which the model's
cross-entropy skips, in training and evaluation alike. ``trainer.freeze`` turns off gradients of the
router, the routed experts, or everything but the routed experts, and leaves them out of the optimizer.

Resume (``trainer.resume=true``) restores weights, optimizer, scheduler and RNG states from the
latest checkpoint of ``run_dir`` and continues at its micro-step, so the losses after resuming equal
those of an uninterrupted run. SIGINT/SIGTERM finish the current optimizer step, save a checkpoint
and return.
"""

from __future__ import annotations

import json
import platform
import signal
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, set_seed
from safetensors.torch import save_model
from tqdm.auto import tqdm

from moe.batches import MicroBatchSchedule
from moe.checkpoint import (
    begin_checkpoint,
    commit_checkpoint,
    latest_checkpoint,
    list_checkpoints,
    read_config,
    read_meta,
    write_config,
    write_text_atomic,
)
from moe.data.packing import masked_targets
from moe.evaluation import eval_indices, evaluate
from moe.finetune import adopt_checkpoint_config, freeze_parameters, resolve_tokenizer
from moe.metrics import RoutingAccumulator, RunningSums
from moe.models.build import build_model
from moe.optim import build_optimizer, warmup_cosine
from moe.schedule_resume import recorded_schedule_steps, schedule_steps_on_resume
from moe.spec import instantiate
from moe.train_config import OptimConfig, TrainerConfig, from_mapping


class StopRequest:
    """Turns the first SIGINT/SIGTERM into a flag the loop checks; a second one interrupts at once."""

    def __init__(self):
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. a notebook worker): keep default handling
                pass
        return self

    def _handle(self, signum, frame):
        self.signal_name = signal.Signals(signum).name
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class MetricWindow:
    """Losses and routing statistics of the micro-steps between two log steps, summed on the device
    (moe/metrics.py): ``add`` never waits for the device, ``summary`` reads everything in one transfer."""

    def __init__(self):
        self.sums = RunningSums()
        self.routing = RoutingAccumulator(self.sums)
        self.micro_steps = 0
        self.tokens = 0
        self.started = time.perf_counter()

    def add(self, out, tokens: int) -> None:
        self.micro_steps += 1
        self.tokens += tokens
        for key, value in (("loss", out.loss), ("lm_loss", out.lm_loss), ("aux_loss", out.aux_loss)):
            self.sums.add(key, value)
        for key, loss in out.aux_losses.items():
            self.sums.add(key, loss)
            self.sums.add(f"{key}_scaled", out.aux_coeffs[key] * loss)
        self.routing.add(out.layer_aux)

    def summary(self) -> dict[str, float]:
        """Window means; per-layer routing statistics as layer{i}/{stat}, their mean over layers as moe/{stat}."""
        values = self.sums.read()
        metrics = {key: value / max(1, self.micro_steps) for key, value in values.items() if isinstance(key, str)}
        return {**metrics, **self.routing.metrics(values)}


def _prepare_run_dir(run_dir: Path, resume: bool) -> Path | None:
    """The checkpoint to resume from, after checking the run directory fits the request."""
    existing = latest_checkpoint(run_dir)
    if resume and existing is None:
        raise FileNotFoundError(
            f"trainer.resume=true but {run_dir} holds no checkpoint (looked in {run_dir / 'checkpoints'})"
        )
    if not resume and existing is not None:
        raise FileExistsError(
            f"run_dir={run_dir} already holds checkpoints ({existing.name}); pass trainer.resume=true to "
            f"continue it, or choose another run_dir"
        )
    return existing


def _append_metrics(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_metrics(path: Path, last_step: int) -> None:
    """On resume, drop records logged after the checkpoint (they will be logged again)."""
    if path.is_file():
        kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= last_step]
        write_text_atomic(path, "".join(line + "\n" for line in kept))


def run(config: dict[str, Any]) -> dict[str, Any]:
    """Train as the config says; returns the final summary (also written to RUN_DIR/summary.json)."""
    trainer = from_mapping(TrainerConfig, dict(config["trainer"]), "trainer")
    optim = from_mapping(OptimConfig, dict(config["optim"]), "optim")

    def schedule_of(length: int):
        return warmup_cosine(warmup_steps=optim.warmup_steps, max_steps=length, min_lr_ratio=optim.min_lr_ratio)

    schedule_of(trainer.max_steps)  # checks warmup/min_lr before anything else
    config = resolve_tokenizer(adopt_checkpoint_config(config))  # what config.yaml records
    seq_len, max_seq_len = (config.get("data") or {}).get("seq_len"), config["model"].get("max_seq_len")
    if isinstance(seq_len, int) and isinstance(max_seq_len, int) and seq_len > max_seq_len:
        raise ValueError(f"data.seq_len={seq_len} exceeds model.max_seq_len={max_seq_len}; set data.seq_len"
                         f"<={max_seq_len} (the model node may come from init.path)")
    run_dir = Path(config["run_dir"])
    resume_from = _prepare_run_dir(run_dir, trainer.resume)
    schedule_steps = trainer.max_steps
    if resume_from is not None:
        resumed_meta = read_meta(resume_from)
        schedule_steps = schedule_steps_on_resume(
            recorded=recorded_schedule_steps(resumed_meta, read_config(resume_from / "config.yaml")),
            requested=trainer.max_steps, policy=optim.schedule_on_resume, step=resumed_meta["step"],
            multiplier_for=schedule_of, lr=optim.lr)
    schedule = schedule_of(schedule_steps)
    if trainer.mixed_precision == "fp16" and (trainer.cpu or not torch.cuda.is_available()):
        raise ValueError("trainer.mixed_precision='fp16' needs a CUDA device; on the CPU use 'bf16' or 'no'")

    set_seed(trainer.seed)
    data = instantiate(config["data"], "data")
    model = build_model(config)
    if resume_from is None:  # a resumed run takes its weights from the checkpoint
        instantiate(config.get("init") or {"_target_": "moe.upcycle.FromScratch"}, "init")(model)
    if model.vocab_size < data.vocab_size:
        raise ValueError(f"model.vocab_size={model.vocab_size} < the tokenizer's vocab_size={data.vocab_size}")
    if data.train.input_ids.shape[1] - 1 > model.max_seq_len:
        raise ValueError(f"data sequences of {data.train.input_ids.shape[1] - 1} tokens exceed "
                         f"model.max_seq_len={model.max_seq_len}")
    trainable_params, total_params = freeze_parameters(model, trainer.freeze)
    if trainer.compile_moe:
        for layer in model.moe_layers:
            layer.compile()  # in place: parameter names and checkpoints are unchanged
    optimizer = build_optimizer(model, lr=optim.lr, weight_decay=optim.weight_decay, betas=optim.betas,
                                eps=optim.eps, router_lr_scale=optim.router_lr_scale)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    accelerator = Accelerator(mixed_precision=trainer.mixed_precision, cpu=trainer.cpu,
                              gradient_accumulation_steps=trainer.grad_accum_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    # stepped by hand once per optimizer step (accelerate would step it once per process)
    accelerator.register_for_checkpointing(scheduler)
    batches = MicroBatchSchedule(num_sequences=len(data.train), batch_size=trainer.batch_size,
                                 seed=trainer.seed, num_processes=accelerator.num_processes,
                                 process_index=accelerator.process_index, domain_ids=data.train.domain_ids,
                                 domain_pure=trainer.domain_pure_batches)
    make_logger = instantiate(config["logger"], "logger")

    metrics_path = run_dir / "metrics.jsonl"
    step, micro_step = 0, 0
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_config(run_dir / "config.yaml", config)
        if trainer.freeze != ("none",):
            print(f"moe-lab: trainer.freeze={','.join(trainer.freeze)}: training {trainable_params:,} of "
                  f"{total_params:,} parameters", flush=True)
    logger = make_logger(run_dir=str(run_dir), config=config)
    if resume_from is not None:
        accelerator.load_state(str(resume_from / "accelerate"))
        step, micro_step = resumed_meta["step"], resumed_meta["micro_step"]
        if accelerator.is_main_process:
            _truncate_metrics(metrics_path, step)
    accelerator.wait_for_everyone()

    raw_model = accelerator.unwrap_model(model)
    val_ids = eval_indices(data.val.domain_ids, trainer.eval_sequences_per_domain)
    val_inputs, val_domains = data.val.input_ids[val_ids], data.val.domain_ids[val_ids]
    val_mask = None if data.val.loss_mask is None else data.val.loss_mask[val_ids]
    train_mask = data.train.loss_mask
    tokens_per_micro_step = trainer.batch_size * (data.train.input_ids.shape[1] - 1) * accelerator.num_processes

    def run_eval() -> dict[str, float]:
        return evaluate(model, val_inputs, val_domains, data.domains, batch_size=trainer.batch_size,
                        device=accelerator.device, autocast=accelerator.autocast, loss_mask=val_mask)

    def save_checkpoint(last_metrics: dict[str, float]) -> None:
        accelerator.wait_for_everyone()
        tmp = final = None
        if accelerator.is_main_process:
            tmp, final = begin_checkpoint(run_dir, step)
        tmp = Path(broadcast_object_list([str(tmp)])[0])  # every rank saves its RNG state there
        accelerator.save_state(str(tmp / "accelerate"), safe_serialization=False)
        if accelerator.is_main_process:
            save_model(raw_model, str(tmp / "model.safetensors"))
            write_config(tmp / "config.yaml", config)
            meta = {"step": step, "micro_step": micro_step, "tokens_seen": micro_step * tokens_per_micro_step,
                    "schedule_max_steps": schedule_steps,
                    "metrics": last_metrics, "torch": torch.__version__, "python": platform.python_version()}
            commit_checkpoint(tmp, final, meta, trainer.keep_last)
        accelerator.wait_for_everyone()

    window, record, val_metrics = MetricWindow(), {}, {}
    total_micro_steps = trainer.max_steps * trainer.grad_accum_steps
    progress = tqdm(total=trainer.max_steps, initial=step, desc="train", dynamic_ncols=True,
                    disable=not (trainer.progress and accelerator.is_local_main_process))
    if trainer.max_steps == 0 and resume_from is None:  # e.g. init=upcycle: just write the converted model
        val_metrics = run_eval()
        record = {"step": 0, "tokens_seen": 0, **val_metrics}
        if accelerator.is_main_process:
            _append_metrics(metrics_path, record)
        save_checkpoint(record)
    model.train()
    with StopRequest() as stop:
        while micro_step < total_micro_steps:
            picks = batches.indices(micro_step)
            batch = data.train.input_ids[picks].to(accelerator.device)
            # prompt and padding targets become -100 (skipped by the loss); tokens/s still counts every token
            targets = masked_targets(batch, None if train_mask is None else train_mask[picks].to(accelerator.device))
            with accelerator.accumulate(model):
                out = model(batch[:, :-1], targets)
                accelerator.backward(out.loss)
                grad_norm = None
                if accelerator.sync_gradients and optim.grad_clip > 0:
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), optim.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            micro_step += 1
            window.add(out, tokens_per_micro_step)
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            raw_model.on_optimizer_step()
            step += 1
            progress.update(1)
            eval_now = step % trainer.eval_every == 0 or step == trainer.max_steps
            if step % trainer.log_every == 0 or eval_now or stop.signal_name:
                elapsed = time.perf_counter() - window.started
                record = {"step": step, "tokens_seen": micro_step * tokens_per_micro_step,
                          "lr": scheduler.get_last_lr()[0], "tokens_per_s": window.tokens / max(elapsed, 1e-9),
                          **window.summary()}
                if grad_norm is not None:
                    record["grad_norm"] = float(grad_norm)
                if eval_now:
                    val_metrics = run_eval()
                    record.update(val_metrics)
                if accelerator.is_main_process:
                    _append_metrics(metrics_path, record)
                    logger.log(record, step)
                progress.set_postfix(loss=f"{record['loss']:.3f}", refresh=False)
                window = MetricWindow()
            if step % trainer.save_every == 0 or step == trainer.max_steps or stop.signal_name:
                save_checkpoint(record)
            if stop.signal_name:
                break
    progress.close()
    logger.finish()

    summary = {
        "run_dir": str(run_dir), "step": step, "max_steps": trainer.max_steps,
        "interrupted_by": stop.signal_name, "train_loss": record.get("lm_loss"),
        "val_loss": val_metrics.get("val/loss"), "unigram_entropy": data.unigram_entropy,
        "tokens_per_s": record.get("tokens_per_s"), "trainable_params": trainable_params,
        "total_params": total_params,
        "val_domain_losses": {k: v for k, v in val_metrics.items() if k.count("/") == 2 and k.endswith("/loss")},
        "checkpoints": [p.name for p in list_checkpoints(run_dir)],
    }
    if accelerator.is_main_process:
        write_text_atomic(run_dir / "summary.json", json.dumps(summary, indent=2))
        print(format_summary(summary), flush=True)
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    def fmt(value):
        return "n/a" if value is None else f"{value:.3f}"

    state = f"stopped by {summary['interrupted_by']} at" if summary["interrupted_by"] else "finished"
    domains = ", ".join(f"{k.split('/')[1]} {v:.3f}" for k, v in summary["val_domain_losses"].items())
    return (
        f"moe-lab: {state} step {summary['step']}/{summary['max_steps']} | val loss {fmt(summary['val_loss'])} "
        f"nats/token ({domains}) vs unigram entropy {fmt(summary['unigram_entropy'])} | train lm loss "
        f"{fmt(summary['train_loss'])} | {summary['tokens_per_s'] or 0:.0f} tokens/s | {summary['run_dir']}"
    )
