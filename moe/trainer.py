"""Steps 2-6 of a training run, after moe/run_plan.py has checked the config: build the parts, train
step by step, evaluate, save checkpoints, write the summary.

Every per-optimizer-step action — the optimizer, the LR schedule, balancer bias updates, logging,
eval and checkpoints — happens only when ``accelerator.sync_gradients`` is true.

The model is built from the config and initialised by the ``init`` node (moe/upcycle/init.py:
scratch, a checkpoint, or upcycled from a dense model); ``trainer.max_steps=0`` only evaluates it and
writes it as the step-0 checkpoint. Data may carry a loss mask (chat data: responses only); masked
targets are -100, which the model's cross-entropy skips, in training and evaluation alike.
``trainer.freeze`` turns off gradients of the router, the routed experts, or everything but the routed
experts, and leaves them out of the optimizer.

Several processes (torchrun) train data-parallel; ``parallel`` picks how the model is spread over them
(moe/parallel/layout.py: DDP through accelerate, expert shards, or FSDP). Checkpoints are saved and
loaded in the layout of a one-process run (moe/parallel/train_state.py), so any run resumes in any
layout and world size.

Resume (``trainer.resume=true``) restores weights, optimizer, scheduler and RNG states from the
latest checkpoint of ``run_dir`` and continues at its micro-step, so the losses after resuming equal
those of an uninterrupted run. SIGINT/SIGTERM finish the current optimizer step, save a checkpoint
and return.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import broadcast_object_list, set_seed
from safetensors.torch import save_model
from tqdm.auto import tqdm

from moe.balance.counts import all_reduce_sum
from moe.batches import MicroBatchSchedule
from moe.checkpoint import begin_checkpoint, commit_checkpoint, list_checkpoints, write_config, write_text_atomic
from moe.data.packing import PackedDataset, first_per_domain, masked_targets
from moe.evaluation import evaluate
from moe.finetune import freeze_parameters
from moe.flops import measure_peak_flops, training_flops_per_token
from moe.metrics import MetricWindow
from moe.models.build import build_model
from moe.models.mamba import compile_mamba_scans
from moe.optim import build_optimizer
from moe.parallel.layout import Layout
from moe.parallel.train_state import TRAIN_STATE_FILE, load_train_state, save_train_state
from moe.run_plan import RunPlan
from moe.spec import instantiate
from moe.stop_request import StopRequest


class Trainer:
    """One training run of a :class:`RunPlan`: ``Trainer(plan).fit()`` returns the summary."""

    def __init__(self, plan: RunPlan):
        self.plan = plan
        self.step, self.micro_step = 0, 0
        self.record: dict[str, Any] = {}
        self.val_metrics: dict[str, float] = {}
        self._build_data_and_model()
        self._build_optimization()

    # -- step 2: build (every check that needs the built parts runs before the run directory is touched)

    def _build_data_and_model(self) -> None:
        config = self.plan.config
        set_seed(self.plan.trainer.seed)
        self.data = instantiate(config["data"], "data")
        per_domain = self.plan.trainer.train_sequences_per_domain
        if per_domain is not None:
            # the first n of each domain in packing order: every seed reads the same sequences, in its own order
            if not isinstance(self.data.train, PackedDataset):
                raise ValueError(f"trainer.train_sequences_per_domain={per_domain} needs in-memory data "
                                 f"(data=embedded, hf or chat), not token shards (data=tokens): set it to null")
            self.data = dataclasses.replace(self.data, train=self.data.train.subset(
                first_per_domain(self.data.train.domain_ids, per_domain)))
        model = build_model(config)
        if self.plan.resume_from is None:  # a resumed run takes its weights from the checkpoint
            instantiate(config.get("init") or {"_target_": "moe.upcycle.FromScratch"}, "init")(model)
        if model.vocab_size < self.data.vocab_size:
            raise ValueError(f"model.vocab_size={model.vocab_size} < the tokenizer's vocab_size={self.data.vocab_size}")
        if self.data.train.input_ids.shape[1] - 1 > model.max_seq_len:
            raise ValueError(f"data sequences of {self.data.train.input_ids.shape[1] - 1} tokens exceed "
                             f"model.max_seq_len={model.max_seq_len}")
        self.trainable_params, self.total_params = freeze_parameters(model, self.plan.trainer.freeze)
        self.flops_per_token = training_flops_per_token(model, self.data.train.input_ids.shape[1] - 1)
        if self.plan.trainer.compile_moe:
            for layer in model.moe_layers:
                layer.compile()  # in place: parameter names and checkpoints are unchanged
        if self.plan.trainer.compile_mamba:
            compile_mamba_scans(model)
        self.model = model

    def _build_optimization(self) -> None:
        trainer, optim, data = self.plan.trainer, self.plan.optim, self.data
        # accelerate keeps one process-wide state whose precision cannot change; a run is a fresh start, so
        # a second run in the same process (a notebook, a test) may pick another precision. The process
        # group (PartialState) is kept.
        AcceleratorState._reset_state(reset_partial_state=False)
        # cpu=True for a multi-process launch without CUDA: otherwise accelerate starts W unrelated
        # single processes instead of one gloo group
        cpu = trainer.cpu or (self.plan.world_size > 1 and not torch.cuda.is_available())
        self.accelerator = Accelerator(mixed_precision=trainer.mixed_precision, cpu=cpu,
                                       gradient_accumulation_steps=trainer.grad_accum_steps)
        self.layout = Layout(self.plan.parallel)

        def make_optimizer(model):  # after sharding: FSDP's optimizer holds the sharded parameters
            optimizer = build_optimizer(model, lr=optim.lr, weight_decay=optim.weight_decay, betas=optim.betas,
                                        eps=optim.eps, router_lr_scale=optim.router_lr_scale, fused=optim.fused)
            # stepped by hand once per optimizer step (accelerate would step it once per process)
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.plan.schedule())
            return optimizer

        self.model, self.optimizer, self.raw_model = self.layout.prepare(self.accelerator, self.model, make_optimizer)
        self.accelerator.register_for_checkpointing(self.scheduler)  # for checkpoints in the former layout
        self.batches = MicroBatchSchedule(
            num_sequences=len(data.train), batch_size=trainer.batch_size, seed=trainer.seed,
            num_processes=self.accelerator.num_processes, process_index=self.accelerator.process_index,
            domain_ids=data.train.domain_ids, domain_pure=trainer.domain_pure_batches)
        self.make_logger = instantiate(self.plan.config["logger"], "logger")
        self.peak_flops = self._peak_flops()
        # batch_size is the global micro-batch (every rank reads its share of it: moe/batches.py)
        self.tokens_per_micro_step = trainer.batch_size * (data.train.input_ids.shape[1] - 1)
        # the same subset at every eval
        val_ids = first_per_domain(data.val.domain_ids, trainer.eval_sequences_per_domain)
        self.val = (data.val.input_ids[val_ids], data.val.domain_ids[val_ids],
                    None if data.val.loss_mask is None else data.val.loss_mask[val_ids])

    def _peak_flops(self) -> float:
        """The MFU denominator: every rank's peak FLOP/s summed (trainer.peak_flops × ranks, or each rank's
        matmul probe, run on all ranks at once so that ranks sharing a machine share its rate)."""
        trainer = self.plan.trainer
        if trainer.peak_flops is not None:
            return trainer.peak_flops * self.accelerator.num_processes
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(trainer.mixed_precision, torch.float32)
        measured = torch.tensor(measure_peak_flops(self.accelerator.device, dtype), dtype=torch.float64)
        return float(all_reduce_sum(measured))

    # -- the run directory: created only now, after every check has passed

    @property
    def metrics_path(self) -> Path:
        return self.plan.run_dir / "metrics.jsonl"

    def _open_run_dir(self) -> None:
        accelerator, run_dir, freeze = self.accelerator, self.plan.run_dir, self.plan.trainer.freeze
        if accelerator.is_main_process:
            run_dir.mkdir(parents=True, exist_ok=True)
            write_config(run_dir / "config.yaml", self.plan.config)
            if freeze != ("none",):
                print(f"moe-lab: trainer.freeze={','.join(freeze)}: training {self.trainable_params:,} "
                      f"of {self.total_params:,} parameters", flush=True)
        self.logger = self.make_logger(run_dir=str(run_dir), config=self.plan.config)
        if self.plan.resume_from is not None:
            self._load_checkpoint(self.plan.resume_from)
            self.step, self.micro_step = self.plan.resumed_meta["step"], self.plan.resumed_meta["micro_step"]
            if accelerator.is_main_process:
                _truncate_metrics(self.metrics_path, self.step)
        accelerator.wait_for_everyone()

    def _load_checkpoint(self, checkpoint: Path) -> None:
        """Weights, optimizer, scheduler and RNG of a checkpoint, whatever layout wrote it."""
        accelerator = self.accelerator
        with self.layout.unsharded(self.raw_model, self.optimizer):
            if not (checkpoint / TRAIN_STATE_FILE).is_file():  # written by accelerator.save_state (before 2026-12)
                accelerator.load_state(str(checkpoint / "accelerate"))
                return
            self.layout.load_weights(self.raw_model, checkpoint / "model.safetensors",
                                     lambda: build_model(self.plan.config))
            load_train_state(checkpoint, self.raw_model, self.optimizer, self.scheduler, accelerator.process_index)

    # -- steps 3-5: train, evaluate, save

    def fit(self) -> dict[str, Any]:
        """Train to ``trainer.max_steps`` (or a stop signal); returns the summary."""
        trainer = self.plan.trainer
        self._open_run_dir()
        progress = tqdm(total=trainer.max_steps, initial=self.step, desc="train", dynamic_ncols=True,
                        disable=not (trainer.progress and self.accelerator.is_main_process))
        if trainer.max_steps == 0 and self.plan.resume_from is None:  # e.g. init=upcycle: write the converted model
            self.val_metrics = self.evaluate()
            self.record = {"step": 0, "tokens_seen": 0, **self.val_metrics}
            self._append_record()
            self.save_checkpoint()
        self.model.train()
        window = MetricWindow()
        with StopRequest() as stop:
            while self.micro_step < trainer.max_steps * trainer.grad_accum_steps:
                out, grad_norm = self.train_step()
                window.add(out, self.tokens_per_micro_step)
                if not self.accelerator.sync_gradients:
                    continue
                self.scheduler.step()
                self.raw_model.on_optimizer_step()
                self.step += 1
                progress.update(1)
                eval_now = self.step % trainer.eval_every == 0 or self.step == trainer.max_steps
                if self.step % trainer.log_every == 0 or eval_now or stop.signal_name:
                    self.log(window, grad_norm, eval_now)
                    progress.set_postfix(loss=f"{self.record['loss']:.3f}", refresh=False)
                    window = MetricWindow()
                if self.step % trainer.save_every == 0 or self.step == trainer.max_steps or stop.signal_name:
                    self.save_checkpoint()
                if stop.signal_name:
                    break
        progress.close()
        self.logger.finish()
        return self.finish(stop.signal_name)

    def train_step(self) -> tuple[Any, torch.Tensor | None]:
        """One micro-step (forward, backward; the optimizer steps when gradients sync): the model
        output and, at an optimizer step with clipping, the gradient norm before clipping."""
        train, accelerator = self.data.train, self.accelerator
        picks = self.batches.indices(self.micro_step)
        batch = train.input_ids[picks].to(accelerator.device)
        # prompt and padding targets become -100 (skipped by the loss); tokens/s still counts every token
        targets = masked_targets(batch, None if train.loss_mask is None else train.loss_mask[picks].to(batch.device))
        with accelerator.accumulate(self.model):
            with accelerator.autocast():  # a model accelerate did not wrap (FSDP) gets its precision here
                out = self.model(batch[:, :-1], targets)
            accelerator.backward(out.loss)
            grad_norm = None
            if accelerator.sync_gradients:
                grad_norm = self.layout.finish_gradients(accelerator, self.model, self.raw_model,
                                                         self.plan.optim.grad_clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.micro_step += 1
        return out, grad_norm

    def evaluate(self) -> dict[str, float]:
        input_ids, domain_ids, loss_mask = self.val
        metrics = evaluate(self.model, input_ids, domain_ids, self.data.domains,
                           batch_size=self.plan.trainer.batch_size, device=self.accelerator.device,
                           autocast=self.accelerator.autocast, loss_mask=loss_mask)
        self.layout.reshard(self.model)
        return metrics

    def log(self, window: MetricWindow, grad_norm: torch.Tensor | None, eval_now: bool) -> None:
        """The window's record (with an evaluation when due) to metrics.jsonl and the logger."""
        elapsed = time.perf_counter() - window.started
        self.record = {"step": self.step, "tokens_seen": self.micro_step * self.tokens_per_micro_step,
                       "lr": self.scheduler.get_last_lr()[0], "tokens_per_s": window.tokens / max(elapsed, 1e-9),
                       **window.summary()}
        self.record["mfu"] = self.record["tokens_per_s"] * self.flops_per_token / self.peak_flops
        if grad_norm is not None:
            self.record["grad_norm"] = float(grad_norm)
        if eval_now:
            self.val_metrics = self.evaluate()
            self.record.update(self.val_metrics)
        self._append_record()
        if self.accelerator.is_main_process:
            self.logger.log(self.record, self.step)

    def _append_record(self) -> None:
        if self.accelerator.is_main_process:
            with self.metrics_path.open("a") as f:
                f.write(json.dumps(self.record) + "\n")

    def save_checkpoint(self) -> None:
        """An atomic checkpoint of this step (weights, config, accelerate state with every rank's RNG)."""
        accelerator, run_dir = self.accelerator, self.plan.run_dir
        accelerator.wait_for_everyone()
        tmp = final = None
        if accelerator.is_main_process:
            tmp, final = begin_checkpoint(run_dir, self.step)
        tmp = Path(broadcast_object_list([str(tmp)])[0])  # every rank saves its RNG state there
        with self.layout.unsharded(self.raw_model, self.optimizer):  # one layout whatever the run's sharding
            save_train_state(tmp, self.raw_model, self.optimizer, self.scheduler, accelerator.process_index)
            weights = self.layout.weights_to_save(self.raw_model, lambda: build_model(self.plan.config))
            if accelerator.is_main_process:
                save_model(weights, str(tmp / "model.safetensors"))
        accelerator.wait_for_everyone()  # every rank's RNG state is written before rank 0 renames the directory
        if accelerator.is_main_process:
            write_config(tmp / "config.yaml", self.plan.config)
            meta = {"step": self.step, "micro_step": self.micro_step,
                    "tokens_seen": self.micro_step * self.tokens_per_micro_step,
                    "schedule_max_steps": self.plan.schedule_steps, "metrics": self.record,
                    "torch": torch.__version__, "python": platform.python_version()}
            commit_checkpoint(tmp, final, meta, self.plan.trainer.keep_last)
        accelerator.wait_for_everyone()

    # -- step 6: the summary

    def finish(self, interrupted_by: str | None) -> dict[str, Any]:
        """The run's summary, written to RUN_DIR/summary.json and printed as one line."""
        run_dir, val = self.plan.run_dir, self.val_metrics
        summary = {
            "run_dir": str(run_dir), "step": self.step, "max_steps": self.plan.trainer.max_steps,
            "interrupted_by": interrupted_by, "train_loss": self.record.get("lm_loss"),
            "val_loss": val.get("val/loss"), "unigram_entropy": self.data.unigram_entropy,
            "tokens_per_s": self.record.get("tokens_per_s"), "mfu": self.record.get("mfu"),
            "flops_per_token": self.flops_per_token, "peak_flops": self.peak_flops,
            "peak_flops_source": "config" if self.plan.trainer.peak_flops else "measured",
            "trainable_params": self.trainable_params,
            "total_params": self.total_params, "mixed_precision": self.plan.trainer.mixed_precision,
            "threads": torch.get_num_threads(),  # tokens_per_s depends on it (trainer.threads)
            "val_domain_losses": {k: v for k, v in val.items() if k.count("/") == 2 and k.endswith("/loss")},
            "checkpoints": [p.name for p in list_checkpoints(run_dir)],
        }
        if self.accelerator.is_main_process:
            write_text_atomic(run_dir / "summary.json", json.dumps(summary, indent=2))
            print(format_summary(summary), flush=True)
        return summary


def _truncate_metrics(path: Path, last_step: int) -> None:
    """On resume, drop records logged after the checkpoint (they will be logged again)."""
    if path.is_file():
        kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= last_step]
        write_text_atomic(path, "".join(line + "\n" for line in kept))


_PRECISION_NAMES = {"no": "fp32", "bf16": "bf16 autocast", "fp16": "fp16 autocast"}


def format_summary(summary: dict[str, Any]) -> str:
    def fmt(value):
        return "n/a" if value is None else f"{value:.3f}"

    state = f"stopped by {summary['interrupted_by']} at" if summary["interrupted_by"] else "finished"
    domains = ", ".join(f"{k.split('/')[1]} {v:.3f}" for k, v in summary["val_domain_losses"].items())
    return (
        f"moe-lab: {state} step {summary['step']}/{summary['max_steps']} | val loss {fmt(summary['val_loss'])} "
        f"nats/token ({domains}) vs unigram entropy {fmt(summary['unigram_entropy'])} | train lm loss "
        f"{fmt(summary['train_loss'])} | {summary['tokens_per_s'] or 0:.0f} tokens/s "
        f"({_PRECISION_NAMES.get(summary['mixed_precision'], summary['mixed_precision'])}, MFU "
        f"{100 * (summary['mfu'] or 0):.1f}% of {summary['peak_flops'] / 1e9:.0f} GFLOP/s "
        f"{summary['peak_flops_source']}) | {summary['run_dir']}"
    )
