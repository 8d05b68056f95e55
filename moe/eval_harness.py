"""moe-lab as a model of EleutherAI's lm-evaluation-harness (``lm_eval``), so any checkpoint is scored on the
tasks everyone reports:

    python -m moe.eval_harness --model moe-lab --model_args path=RUN_OR_HF_DIR --tasks hellaswag,...
    python -m moe.eval_harness --model moe-lab --model_args path=runs/x --tasks my_task --include_path my_tasks/

``python -m moe.eval_harness`` is lm_eval's own command line with ``moe-lab`` registered first. (The plain
``lm_eval`` command finds only models that ship inside lm_eval: version 0.4 discovers no plugins. From
Python, ``lm_eval.simple_evaluate(model=MoeLabLM(path=...), tasks=[...])`` works the same.)

The three request types, on the model's own tokenizer (as eval/generate.py picks it):
- ``loglikelihood(context, continuation)``: Σ log p(continuation tokens | context) and whether each
  continuation token is the argmax; the context is cut from the left to fit ``max_seq_len``, and an empty
  context is the end-of-document token;
- ``loglikelihood_rolling(text)``: the whole text's log-likelihood in windows of ``max_seq_len`` that
  each predict new tokens only, after the end-of-document token (lm_eval's rolling windows);
- ``generate_until(context, {until, max_gen_toks, do_sample, temperature})``: moe.generation.generate,
  cut at the first stop string.
"""

from __future__ import annotations

from typing import Any

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from moe.data.tokenizer import load_tokenizer
from moe.generation import generate
from moe.loading import load_model
from moe.upcycle.source_backbone import source_tokenizer


@register_model("moe-lab", "moe_lab")
class MoeLabLM(LM):
    """``path``: a moe-lab run or checkpoint directory, or a Hugging Face model directory."""

    def __init__(self, path: str, device: str | None = None, batch_size: int | str = 8,
                 max_gen_toks: int = 256, **_ignored: Any):
        super().__init__()
        self.device_name = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = load_model(path, device=self.device_name).eval()
        self.tokenizer = load_tokenizer(source_tokenizer(path))
        self.batch_size = 8 if str(batch_size).startswith("auto") else int(batch_size)
        self.max_gen_toks = int(max_gen_toks)
        self.max_length = int(self.model.max_seq_len)

    # -- scoring

    @torch.no_grad()
    def _score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(Σ log p, all greedy) of each (input tokens, tokens to score at the end of the input's targets):
        the model reads ``inputs[:-1]`` and the last ``len(scored)`` targets are scored."""
        results = []
        for start in range(0, len(pairs), self.batch_size):
            chunk = pairs[start:start + self.batch_size]
            width = max(len(inputs) for inputs, _ in chunk) - 1
            ids_BS = torch.zeros(len(chunk), width, dtype=torch.long)
            for b, (inputs, _) in enumerate(chunk):  # right padding: causal positions before it are unaffected
                ids_BS[b, :len(inputs) - 1] = torch.tensor(inputs[:-1])
            log_probs_BSV = self.model(ids_BS.to(self.device_name)).logits.float().log_softmax(-1).cpu()
            for b, (inputs, scored) in enumerate(chunk):
                positions = torch.arange(len(inputs) - len(scored), len(inputs)) - 1  # each predicts the next
                targets = torch.tensor(scored)
                rows = log_probs_BSV[b, positions]
                results.append((float(rows.gather(-1, targets[:, None]).sum()),
                                bool((rows.argmax(-1) == targets).all())))
        return results

    def _context_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        context_ids = self.tokenizer.encode(context) if context else [self.tokenizer.eos_id]
        continuation_ids = self.tokenizer.encode(continuation)
        inputs = (context_ids + continuation_ids)[-(self.max_length + 1):]
        return inputs, continuation_ids[-(len(inputs) - 1):]

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        return self._score([self._context_pair(*request.args) for request in requests])

    def loglikelihood_rolling(self, requests) -> list[float]:
        totals = []
        for request in requests:
            windows = [make_disjoint_window(window) for window in get_rolling_token_windows(
                self.tokenizer.encode(request.args[0]), prefix_token=self.tokenizer.eos_id,
                max_seq_len=self.max_length, context_len=1)]
            scores = self._score([(context + predicted, predicted) for context, predicted in windows])
            totals.append(sum(logprob for logprob, _ in scores))
        return totals

    # -- generation

    def generate_until(self, requests) -> list[str]:
        outputs = []
        for request in requests:
            context, kwargs = request.args
            kwargs = dict(kwargs or {})
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            prompt = self.tokenizer.encode(context)[-(self.max_length - 1):]
            budget = min(int(kwargs.get("max_gen_toks", self.max_gen_toks)), self.max_length - len(prompt))
            temperature = float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample") else 0.0
            (ids,) = generate(self.model, [prompt], max_new_tokens=max(1, budget), temperature=temperature,
                              stop_tokens=[self.tokenizer.eos_id])
            text = self.tokenizer.decode(ids)
            cut = min((text.find(stop) for stop in until if stop and stop in text), default=len(text))
            outputs.append(text[:cut])
        return outputs


def main() -> None:
    """lm_eval's command line, with moe-lab registered (importing this module did that)."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
