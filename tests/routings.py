"""Hand-made Routings shared by the tests of experts and balancers."""

from __future__ import annotations

import torch

from moe.types import BalanceContext, Routing


def token_choice_routing(expert_ids_TK: torch.Tensor, probs_TE: torch.Tensor,
                         weights_TK: torch.Tensor | None = None) -> Routing:
    """Token t's j-th assignment goes to expert_ids_TK[t, j] with weight weights_TK[t, j] (default:
    its probability); no dropping."""
    T, K = expert_ids_TK.shape
    expert_ids_N = expert_ids_TK.reshape(-1)
    if weights_TK is None:
        weights_TK = probs_TE.gather(1, expert_ids_TK)
    return Routing(
        token_ids_N=torch.arange(T).repeat_interleave(K), expert_ids_N=expert_ids_N,
        weights_N=weights_TK.reshape(-1), logits_TE=probs_TE.log(), probs_TE=probs_TE,
        tokens_per_expert_E=torch.bincount(expert_ids_N, minlength=probs_TE.shape[1]), num_dropped=0,
        top_k=float(K),
    )


def balance_ctx(batch_size: int, seq_len: int) -> BalanceContext:
    return BalanceContext(batch_size=batch_size, seq_len=seq_len, layer_index=0)


def random_routing(case: str, *, T: int, E: int, K: int) -> Routing:
    """Random top-k with random float32 gate weights (requiring grad). 'skewed': expert 0 takes most
    tokens and the last two experts none; 'dropped': about a third of the assignments removed (token 0
    keeps none); 'empty': N = 0; anything else: plain top-k."""
    logits_TE = torch.randn(T, E)
    expert_ids_TK = logits_TE.topk(K, dim=-1).indices
    if case == "skewed":
        first_T = torch.where(torch.rand(T) < 0.6, 0, torch.randint(1, E - 2, (T,)))
        expert_ids_TK = torch.stack([first_T, (first_T + 1) % (E - 2)], -1)[:, :K]
    token_ids_N, expert_ids_N = torch.arange(T).repeat_interleave(K), expert_ids_TK.reshape(-1)
    keep_N = torch.ones(T * K, dtype=torch.bool)
    if case == "dropped":
        keep_N = torch.rand(T * K) > 0.33
        keep_N[:K] = False
    if case == "empty":
        keep_N[:] = False
    routing = Routing(
        token_ids_N=token_ids_N[keep_N], expert_ids_N=expert_ids_N[keep_N],
        weights_N=torch.rand(int(keep_N.sum())).requires_grad_(), logits_TE=logits_TE,
        probs_TE=logits_TE.softmax(-1), tokens_per_expert_E=torch.bincount(expert_ids_N[keep_N], minlength=E),
        num_dropped=int((~keep_N).sum()), top_k=float(K),
    )
    routing.validate()
    return routing


def expert_outputs_and_grads(experts, x_TD: torch.Tensor, routing: Routing, grad_TD: torch.Tensor):
    """An expert backend's output and the gradients (as float32) w.r.t. x, weights_N and the weight
    stacks (SwiGLU: gate, up, down; GELU: fc, b_fc, proj, b_proj), for the loss Σ y ⊙ grad_TD."""
    x_TD = x_TD.detach().clone().requires_grad_()
    routing.weights_N.grad = None
    experts.zero_grad(set_to_none=True)
    y_TD = experts(x_TD, routing)
    y_TD.backward(grad_TD.to(y_TD.dtype))
    grads = [x_TD.grad, routing.weights_N.grad, *(p.grad for p in experts.parameters())]
    return y_TD.detach(), [g.float() for g in grads]
