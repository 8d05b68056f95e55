"""The Mamba-1 token mixer: a selective state-space model (Gu & Dao 2312.00752), as Jamba (2403.19887)
and BlackMamba (2402.01771) interleave it with attention and MoE blocks.

For each of the d_in = expand·D channels c and N state dimensions n (I = d_in):

    [x, z] = in_proj(u)                                   x, z ∈ R^{I}
    x = SiLU(causal depthwise conv1d(x))                   kernel d_conv, one filter per channel
    [δ, B, C] = x_proj(x)                                 δ ∈ R^{dt_rank}, B, C ∈ R^{N}
    Δ = softplus(dt_proj(δ))                              Δ ∈ R^{I}, per token
    A = −exp(A_log)                                       A ∈ R^{I×N}, learned, input-independent
    h_t = exp(Δ_t A) ⊙ h_{t−1} + (Δ_t x_t) ⊗ B_t           h ∈ R^{I×N}
    y_t = h_t C_t + D ⊙ x_t
    out = out_proj(y ⊙ SiLU(z))

``inner_norms`` adds Jamba's RMSNorms on δ, B and C (Jamba-1.5 trains more stably with them). On CUDA, with
``mamba_ssm`` and ``causal_conv1d`` installed, the conv and the scan run their kernels (moe/models/mamba_kernels.py).

The recurrence is linear in h, so it has two implementations here that compute the same thing:
``selective_scan_reference`` steps through time one token at a time (the definition; the tests' oracle)
and ``selective_scan_chunked`` (the training path) handles a chunk of L tokens at once: with
Λ_t = Σ_{τ≤t} Δ_τ A the decay accumulated since the chunk began,

    h_t = exp(Λ_t) ⊙ (h_0 + Σ_{s≤t} exp(−Λ_s) ⊙ (Δ_s x_s) ⊗ B_s),

a cumulative sum instead of a loop (a matmul with a triangular matrix of ones), and a loop over S/L chunks
only. exp(−Λ_s) grows as the decay accumulates: a chunk whose decay leaves the range of exp (|Λ| > 80 in
float32, 700 in float64) is split in halves, down to MIN_CHUNK tokens, and a span that still decays too
fast takes the token loop, which never overflows. Terms the sum loses to rounding are those whose true
weight exp(Λ_t − Λ_s) is below the dtype's resolution relative to the largest one. The scan runs in
float32 (float64 inputs stay float64), also under bf16 autocast.

Both forms are bound by memory traffic over [B, L, I, N] tensors, not by arithmetic: on a 2-core CPU the
chunked scan is ~9× faster than the token loop at 1024 tokens, and ~15× with ``trainer.compile_mamba``
(each chunk through ``torch.compile``, which fuses the elementwise passes; bench/README.md).
"""

from __future__ import annotations

import math
from functools import cache, partial

import torch
import torch.nn.functional as F
from torch import nn

from moe.models import mamba_kernels

CHUNK = 32  # tokens per step of the chunked scan: 16, 32 and 64 ran alike (64 with Mamba's initial Δ and A is
# mostly too steep and halved), 8 1.5× slower, 128 2× (2-core CPU, B=8 × S=256 and B=2 × S=1024, float32)
MIN_CHUNK = 8  # a chunk whose decay leaves exp's range is halved down to this many tokens, then takes the loop
# |Λ| beyond which exp(−Λ) would leave the dtype's range (float32 overflows past e^88)
MAX_LOG_DECAY = {torch.float32: 80.0, torch.float64: 700.0}


def selective_scan_reference(x_BSI, dt_BSI, A_IN, B_BSN, C_BSN, h_BIN=None):
    """y_BSI (without the D skip) and the final state h_BIN, one token at a time."""
    batch, S, d_inner = x_BSI.shape
    h_BIN = x_BSI.new_zeros(batch, d_inner, A_IN.shape[1]) if h_BIN is None else h_BIN
    ys = []
    for t in range(S):
        decay_BIN = torch.exp(dt_BSI[:, t, :, None] * A_IN)
        h_BIN = decay_BIN * h_BIN + (dt_BSI[:, t] * x_BSI[:, t])[:, :, None] * B_BSN[:, t, None, :]
        ys.append(torch.einsum("bin,bn->bi", h_BIN, C_BSN[:, t]))
    return torch.stack(ys, dim=1), h_BIN


def selective_scan_chunked(x_BSI, dt_BSI, A_IN, B_BSN, C_BSN, h_BIN=None, chunk: int = CHUNK,
                           compiled: bool = False):
    """The same as :func:`selective_scan_reference`, a chunk of tokens at a time (see the module doc).
    ``compiled``: each chunk runs :func:`scan_chunk` through ``torch.compile`` (see ``compiled_scan_chunk``)."""
    batch, S, d_inner = x_BSI.shape
    dtype, work = x_BSI.dtype, torch.float64 if x_BSI.dtype == torch.float64 else torch.float32
    h_BIN = x_BSI.new_zeros(batch, d_inner, A_IN.shape[1], dtype=work) if h_BIN is None else h_BIN.to(work)
    A_IN = A_IN.to(work)
    steep = _too_steep(dt_BSI.detach().to(work) * A_IN.detach().min(1).values, chunk, MAX_LOG_DECAY[work])
    ones_LL = torch.ones(chunk, chunk, dtype=work, device=x_BSI.device).tril()
    body = compiled_scan_chunk() if compiled else scan_chunk
    ys = []

    def scan_span(start: int, size: int) -> None:
        nonlocal h_BIN
        if start >= S:
            return
        too_steep = steep[size][start // size]
        if too_steep and size // 2 in steep:  # the next level down exists
            scan_span(start, size // 2)
            scan_span(start + size // 2, size // 2)
            return
        part = slice(start, min(start + size, S))
        x, dt, Bm, Cm = (t[:, part].to(work) for t in (x_BSI, dt_BSI, B_BSN, C_BSN))
        L = x.shape[1]
        scan = selective_scan_reference if too_steep else partial(body, ones_LL=ones_LL[:L, :L])
        y_BLI, h_BIN = scan(x, dt, A_IN, Bm, Cm, h_BIN)
        ys.append(y_BLI)

    with torch.autocast(x_BSI.device.type, enabled=False):  # autocast would run the chunks' matmuls in bf16
        for start in range(0, S, chunk):
            scan_span(start, chunk)
    return torch.cat(ys, dim=1).to(dtype), h_BIN.to(dtype)


def scan_chunk(x_BLI, dt_BLI, A_IN, B_BLN, C_BLN, h_BIN, ones_LL):
    """One chunk of L tokens in closed form (the module doc's h_t), given the state h_BIN before it: y_BLI and
    the state after it. ``ones_LL`` is the lower-triangular matrix of ones: the cumulative sum over the chunk
    as a matmul, ~3× faster than cumsum over a middle dimension on a CPU, and its backward is a matmul too."""
    # Λ_t = (Σ_{τ≤t} Δ_τ) A: A does not change in time, so the sum runs over [B, L, I], not [B, L, I, N]
    log_decay_BLIN = torch.cumsum(dt_BLI, dim=1)[..., None] * A_IN  # ≤ 0
    inputs_BLIN = (dt_BLI * x_BLI)[..., None] * B_BLN[:, :, None, :]
    # h_0 enters as part of the first token's input, h_0·exp(Λ_1) (exp(−Λ_1) undoes it), rather than as a
    # sum over the whole chunk: one pass over [B, L, I, N] fewer, forward and backward
    inputs_BLIN[:, 0] += h_BIN * torch.exp(log_decay_BLIN[:, 0])
    grown_BLX = (torch.exp(-log_decay_BLIN) * inputs_BLIN).flatten(2)  # X = I·N
    states_BLIN = torch.exp(log_decay_BLIN) * (ones_LL @ grown_BLX).view_as(inputs_BLIN)
    return torch.einsum("blin,bln->bli", states_BLIN, C_BLN), states_BLIN[:, -1]


@cache
def compiled_scan_chunk():
    """:func:`scan_chunk` through ``torch.compile``, made once per process on first use (``trainer.compile_mamba``).
    Inductor fuses the chunk's elementwise passes over [B, L, I, N], which bound the eager scan by memory
    traffic: 1.5–2× faster forward + backward on a 2-core CPU (bench/README.md), after 15–45 s of compiling."""
    return torch.compile(scan_chunk)


def _too_steep(log_decay_BSI: torch.Tensor, chunk: int, limit: float) -> dict[int, list[bool]]:
    """For spans of ``chunk`` tokens, then of each half as long down to MIN_CHUNK: whether the strongest decay
    over a span (min over batch and channel of Σ_t Δ_t,i · min_n A_i,n) passes −limit. All levels in one
    host sync per call, not one per span."""
    batch, S, d_inner = log_decay_BSI.shape
    sizes = [chunk]
    while sizes[-1] % 2 == 0 and sizes[-1] // 2 >= MIN_CHUNK:
        sizes.append(sizes[-1] // 2)
    per_size = [F.pad(log_decay_BSI, (0, 0, 0, -S % size)).view(batch, -1, size, d_inner).sum(2).amin(dim=(0, 2))
                for size in sizes]
    flags = (torch.cat(per_size) < -limit).tolist()
    steep, at = {}, 0
    for size, sums in zip(sizes, per_size, strict=True):
        steep[size], at = flags[at:at + len(sums)], at + len(sums)
    return steep


def causal_conv(conv1d: nn.Conv1d, x_BSX: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
    """The depthwise causal conv over the sequence: output t reads inputs t − d_conv + 1 .. t. Without a
    cache the conv pads d_conv − 1 zeros on both sides and the first S outputs are kept; with one, the
    cached last d_conv − 1 inputs ("conv", [B, X, d_conv − 1], zeros at first) stand in for the left padding
    and the last d_conv − 1 inputs are kept for the next call."""
    S = x_BSX.shape[1]
    if cache is None:
        return conv1d(x_BSX.transpose(1, 2))[..., :S].transpose(1, 2)
    real_BS1 = None
    if cache.get("pads_B") is not None:  # a left-padded batch: padding is zeros before and after the conv,
        seen = cache.get("seen", 0)      # so the state stays zero until each sequence's first real token
        positions_S = torch.arange(seen, seen + S, device=x_BSX.device)
        real_BS1 = (positions_S >= cache["pads_B"][:, None]).unsqueeze(-1)
        x_BSX = x_BSX * real_BS1
    cache["seen"] = cache.get("seen", 0) + S
    x_BXS = x_BSX.transpose(1, 2)
    width = conv1d.kernel_size[0] - 1
    past_BXW = cache["conv"] if "conv" in cache else x_BXS.new_zeros(*x_BXS.shape[:2], width)
    window_BXT = torch.cat((past_BXW.to(x_BXS.dtype), x_BXS), dim=-1)  # T = width + S
    cache["conv"] = window_BXT[..., window_BXT.shape[-1] - width:]
    out_BSX = F.conv1d(window_BXT, conv1d.weight, conv1d.bias, groups=conv1d.groups).transpose(1, 2)
    return out_BSX if real_BS1 is None else out_BSX * real_BS1


class MambaMixer(nn.Module):
    """Mamba-1 token mixer (see the module doc): [B, S, D] → [B, S, D], causal."""

    def __init__(self, *, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank: int | str = "auto", conv_bias: bool = True, proj_bias: bool = False,
                 inner_norms: bool = False, norm_eps: float = 1e-6, chunk: int = CHUNK):
        super().__init__()
        for name, value in (("d_state", d_state), ("d_conv", d_conv), ("expand", expand), ("chunk", chunk)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"model.mamba_{name}={value!r} must be an integer >= 1")
        if dt_rank == "auto":
            dt_rank = math.ceil(d_model / 16)
        if isinstance(dt_rank, bool) or not isinstance(dt_rank, int) or dt_rank < 1:
            raise ValueError(f"model.mamba_dt_rank={dt_rank!r} must be 'auto' or an integer >= 1")
        d_inner = expand * d_model
        self.d_inner, self.d_state, self.dt_rank, self.chunk = d_inner, d_state, dt_rank, chunk
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=proj_bias)
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1, bias=conv_bias)
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner, bias=True)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(d_inner, 1))
        self.D = nn.Parameter(torch.ones(d_inner))
        self.out_proj = nn.Linear(d_inner, d_model, bias=proj_bias)
        self.inner_norms = nn.ModuleDict({name: nn.RMSNorm(size, eps=norm_eps) for name, size in
                                          (("dt", dt_rank), ("B", d_state), ("C", d_state))}) if inner_norms else None
        self.compiled_scan = False  # trainer.compile_mamba: the scan's chunk through torch.compile
        self.reset_dt_bias()

    @torch.no_grad()
    def reset_dt_bias(self, dt_min: float = 1e-3, dt_max: float = 0.1) -> None:
        """Mamba's init: softplus(bias) = Δ log-uniform in [dt_min, dt_max], so every channel starts with its
        own time scale (the bias is 1-D: the model's weight init leaves it, and A_log, alone)."""
        dt_I = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        self.dt_proj.bias.copy_(dt_I + torch.log(-torch.expm1(-dt_I)))  # the inverse of softplus

    def forward(self, u_BSD: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        """``cache`` (incremental decoding): the conv's last d_conv − 1 inputs and the SSM state h [B, d_in, N]
        after the tokens seen so far; the S new tokens continue from them and update them."""
        x_BSI, z_BSI = self.in_proj(u_BSD).chunk(2, dim=-1)
        fused = mamba_kernels.kernels_apply(u_BSD, cache)  # CUDA with mamba_ssm and causal_conv1d installed
        x_BSI = mamba_kernels.conv_silu(self.conv1d, x_BSI) if fused else F.silu(causal_conv(self.conv1d, x_BSI, cache))
        delta_BSR, B_BSN, C_BSN = self.x_proj(x_BSI).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        if self.inner_norms is not None:
            delta_BSR, B_BSN, C_BSN = (self.inner_norms[k](v) for k, v in (("dt", delta_BSR), ("B", B_BSN),
                                                                           ("C", C_BSN)))
        dt_BSI = F.softplus(self.dt_proj(delta_BSR))
        A_IN = -torch.exp(self.A_log.float())
        h_BIN = None if cache is None else cache.get("ssm")
        if fused:
            y_BSI, h_BIN = mamba_kernels.selective_scan(x_BSI.float(), dt_BSI.float(), A_IN, B_BSN.float(),
                                                        C_BSN.float())
        else:
            y_BSI, h_BIN = selective_scan_chunked(x_BSI.float(), dt_BSI.float(), A_IN, B_BSN.float(), C_BSN.float(),
                                                  h_BIN, chunk=self.chunk, compiled=self.compiled_scan)
        if cache is not None:
            cache["ssm"] = h_BIN
        y_BSI = (y_BSI + self.D * x_BSI.float()).to(x_BSI.dtype) * F.silu(z_BSI)
        return self.out_proj(y_BSI)


def compile_mamba_scans(model: nn.Module) -> None:
    """``trainer.compile_mamba``: every Mamba-1 mixer of ``model`` runs its scan's chunks compiled."""
    mixers = [m for m in model.modules() if isinstance(m, MambaMixer)]
    if not mixers:
        raise ValueError("trainer.compile_mamba=true, but the model has no Mamba-1 mixer (model.ssm=mamba or "
                         "'mamba' in model.mixer_layers); set it to false")
    for mixer in mixers:
        mixer.compiled_scan = True
