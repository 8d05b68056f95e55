"""Autoregressive generation on the incremental decode state (moe/models/decode_state.py): the prompts are
fed once (prefill), then one token per step, every mixer continuing from its cache (attention's keys and
values, MLA's latents, Mamba's conv window and SSM state).

Prompts of different lengths are left-padded into one batch; each sequence's positions count from its
first real token and no token attends to padding, so a prompt generates the same tokens alone or in a
batch (tests/test_generation.py).

Sampling per step, on the last position's logits z:
- ``temperature = 0``: greedy, argmax z;
- otherwise softmax(z / temperature), after ``top_k`` (keep the k largest) and ``top_p`` (nucleus: keep
  the smallest set of most probable tokens whose probability reaches p; Holtzman et al. 1904.09751),
  drawn with a seeded generator.
A sequence stops after emitting one of ``stop_tokens`` (which is kept) or after ``max_new_tokens``.
With ``scmoe`` the logits sampled from are SCMoE's contrast of a strong and a weak pass (moe/scmoe.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from moe.scmoe import SCMoE, contrast_logits, weak_routing

SAMPLING_OPTIONS = ("temperature", "top_k", "top_p")


def check_sampling(*, temperature: float, top_k: int | None, top_p: float | None) -> None:
    """One-line errors naming the option, before any work."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature < 0:
        raise ValueError(f"temperature={temperature!r} must be a number >= 0 (0: greedy)")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k={top_k!r} must be an integer >= 1, or None")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1):
        raise ValueError(f"top_p={top_p!r} must lie in (0, 1], or be None")


def filter_logits(logits_BV: torch.Tensor, *, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """The logits with every token outside the top-k and outside the top-p nucleus set to −inf."""
    logits_BV = logits_BV.clone()
    if top_k is not None and top_k < logits_BV.shape[-1]:
        kth_B1 = logits_BV.topk(top_k, dim=-1).values[..., -1:]
        logits_BV[logits_BV < kth_B1] = -torch.inf
    if top_p is not None and top_p < 1:
        sorted_BV, order_BV = logits_BV.sort(dim=-1, descending=True)
        probs_BV = sorted_BV.softmax(-1)
        # drop a token when the more probable ones already reach p (the first token always stays)
        drop_BV = probs_BV.cumsum(-1) - probs_BV >= top_p
        logits_BV.scatter_(-1, order_BV, sorted_BV.masked_fill(drop_BV, -torch.inf))
    return logits_BV


def next_tokens(logits_BV: torch.Tensor, *, temperature: float = 0.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """ids_B: greedy at temperature 0, else a draw from the filtered, tempered softmax."""
    if temperature == 0:
        return logits_BV.argmax(-1)
    probs_BV = (filter_logits(logits_BV.float(), top_k=top_k, top_p=top_p) / temperature).softmax(-1)
    return torch.multinomial(probs_BV, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(model: torch.nn.Module, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
             temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
             stop_tokens: Sequence[int] = (), pad_id: int = 0, seed: int = 0,
             scmoe: SCMoE | None = None) -> list[list[int]]:
    """The new tokens of every prompt (a stop token included when one ends it), with the model in eval mode.
    ``scmoe``: self-contrast decoding (moe/scmoe.py), a weak pass with its own decode state each step."""
    check_sampling(temperature=temperature, top_k=top_k, top_p=top_p)
    if scmoe is not None:
        scmoe.check(model)
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens!r} must be an integer >= 1")
    longest = max(len(p) for p in prompts)
    if longest + max_new_tokens > model.max_seq_len:
        raise ValueError(f"a prompt of {longest} tokens + max_new_tokens={max_new_tokens} exceeds the model's "
                         f"max_seq_len={model.max_seq_len}")
    device = next(model.parameters()).device
    lengths_B = torch.tensor([len(p) for p in prompts], device=device)
    ids_BL = torch.full((len(prompts), longest), pad_id, dtype=torch.long, device=device)
    for b, prompt in enumerate(prompts):  # right-aligned: the padding on the left
        ids_BL[b, longest - len(prompt):] = torch.tensor(list(prompt), dtype=torch.long)
    pads_B = longest - lengths_B
    was_training = model.training
    model.eval()
    try:
        pads = pads_B if bool(pads_B.any()) else None
        state = model.decode_state(pads)
        weak = None if scmoe is None else model.decode_state(pads)

        def step_logits(ids_BS: torch.Tensor) -> torch.Tensor:
            strong_BV = model(ids_BS, state=state).logits[:, -1]
            if scmoe is None:
                return strong_BV
            with weak_routing(model, scmoe.rank):
                weak_BV = model(ids_BS, state=weak).logits[:, -1]
            return contrast_logits(strong_BV, weak_BV, beta=scmoe.beta, alpha=scmoe.alpha)

        logits_BV = step_logits(ids_BL)
        generator = torch.Generator(device=device).manual_seed(seed)
        stops = set(int(t) for t in stop_tokens)
        outputs: list[list[int]] = [[] for _ in prompts]
        done = [False] * len(prompts)
        for step in range(max_new_tokens):
            ids_B = next_tokens(logits_BV, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
            for b, token in enumerate(ids_B.tolist()):
                if not done[b]:
                    outputs[b].append(token)
                    done[b] = token in stops
            if all(done) or step == max_new_tokens - 1:
                break
            logits_BV = step_logits(ids_B[:, None])
    finally:
        model.train(was_training)
    return outputs
