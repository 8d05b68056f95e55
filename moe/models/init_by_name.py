"""``init.draws=by_name``: every parameter drawn from its own random generator, seeded by the run's seed
and the parameter's name, so two models of one seed start equal wherever they have the same parts.

A comparison paired by seed (the ``compare_*`` sweeps, MoE against dense) wants the arms of one seed to
differ only in what the experiment changes. The constructors and ``DecoderLM.reset_parameters`` draw
from one random stream in parameter order, so a part with more or fewer random numbers shifts every
draw after it: with the stream, a cosine router (a projection and expert embeddings), a noisy one (a
noise scorer) or hash routing (one routed expert of 384) starts a top-k sweep's arm from other token
embeddings and other attention weights than the top-k arm, and the dense baseline from other attention
weights than the MoE in every block after the first. Drawing by name removes that difference between
the arms (a "common random numbers" design):

    parameter p:  p ~ N(0, std_p)  from  Generator(seed = H(run seed, name of p))
    router r:     r.reset_parameters()  with the global generator seeded H(run seed, name of r)

with std_p as ``reset_parameters`` gives it and H the first 63 bits of SHA-256 of "seed/name". Routers
draw their own init (their scorers' rules) under their module's name; the parameters that keep a
constructor's init besides routers (Mamba's dt and A, MPO cores, LoRA adapters, vectors) are left as
the stream drew them.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn


def name_seed(seed: int, name: str) -> int:
    """H(seed, name): a 63-bit generator seed that depends on nothing else."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{name}".encode()).digest()[:8], "little") >> 1


def draw_by_name(model: nn.Module, seed: int) -> None:
    """Redraw ``model``'s parameters (a DecoderLM: its ``initial_std`` says which, and how) and its routers
    by name; the global random state is left as it was."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if (std := model.initial_std(name, param)) is not None:
                generator = torch.Generator().manual_seed(name_seed(seed, name))
                param.copy_(torch.empty(param.shape).normal_(0.0, std, generator=generator))
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] == "router" and hasattr(module, "reset_parameters"):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(name_seed(seed, name))
                module.reset_parameters()
