"""MPO experts (MPOE; Gao et al., COLING 2022, 2203.01104): every expert matrix is a matrix product operator
whose central core all experts share, so each added expert costs only its small auxiliary cores.

A matrix W ∈ R^{I×J} with I = i_1···i_n and J = j_1···j_n is n local tensors T^(k) ∈ R^{d_{k−1}×i_k×j_k×d_k}
(d_0 = d_n = 1):

    W[(i_1..i_n), (j_1..j_n)] = T^(1)[i_1, j_1] · T^(2)[i_2, j_2] ··· T^(n)[i_n, j_n]     (a chain of matrices)

found by sequential SVD (``mpo_decompose``). Untruncated it is exact, with bond d_k = min(Π_{≤k} i·j,
Π_{>k} i·j); ``bond_dim`` truncates every bond to at most that many singular values. The factors of I and J
are ordered small at the ends and large in the middle, so the central core (k = ⌈n/2⌉) holds most of
the parameters. Expert e of each of the SwiGLU matrices (gate, up [D, F]; down [F, D]) is

    W^(e) = MPO(A_1^e, …, C, …, A_n^e)        C shared by all experts, A_k^e its own auxiliary cores

``forward`` contracts the cores into the usual [E, D, F] stacks and dispatches exactly as
:class:`GroupedExperts` does, so routing, balancing and statistics are unchanged.

The central core is updated by every expert's tokens, the auxiliary ones by their own expert's only; MPOE
calls this unbalanced optimisation and slows the central core down with a gradient mask:
``central_grad_mask`` = p zeroes each element of the central cores' gradient with probability p at every
backward (an independent Bernoulli draw per element and step from torch's RNG; the kept elements are not
rescaled, so p = 1 would freeze the core). ``freeze_central`` is that p = 1, done by turning the central
cores' gradients off (the released MPOE code's ``--tensor_learn``). (That the mask is Bernoulli per element
is our reading of the paper's description; the released code has only the hard version.)

From scratch each core is drawn N(0, σ²) with σ chosen so the contracted weights have the experts'
``init_std``. Upcycling (``init=upcycle init.method=copy experts=mpo``) decomposes the dense FFN once:
every expert gets its cores, the central one shared, so at full bond dimension the MoE starts as the
dense model (``load_stacks``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from moe.experts.grouped import GroupedExperts
from moe.experts.swiglu import PARAMETERS

MATRICES = {"w_gate_EDF": ("D", "F"), "w_up_EDF": ("D", "F"), "w_down_EFD": ("F", "D")}


def factorise(size: int, n: int) -> list[int]:
    """``size`` as n integer factors, as equal as the primes allow, ordered small–large–small (the largest in
    the middle, so the central core is the big one)."""
    primes, rest, p = [], size, 2
    while rest > 1:
        while rest % p == 0:
            primes.append(p)
            rest //= p
        p += 1
    factors = [1] * n
    for prime in sorted(primes, reverse=True):  # each prime onto the currently smallest factor
        factors[factors.index(min(factors))] *= prime
    ascending = sorted(factors)
    middle = [0] * n
    left, right = 0, n - 1
    for k, factor in enumerate(ascending):  # fill from both ends inwards: small at the edges
        if k % 2 == 0:
            middle[left], left = factor, left + 1
        else:
            middle[right], right = factor, right - 1
    return middle


def full_bonds(in_factors: list[int], out_factors: list[int]) -> list[int]:
    """The untruncated bonds d_1..d_{n−1}: min(Π_{≤k} i·j, Π_{>k} i·j)."""
    sites = [i * j for i, j in zip(in_factors, out_factors, strict=True)]
    return [min(math.prod(sites[:k + 1]), math.prod(sites[k + 1:])) for k in range(len(sites) - 1)]


def mpo_decompose(W_IJ: torch.Tensor, in_factors: list[int], out_factors: list[int],
                  bond_dim: int | None = None) -> list[torch.Tensor]:
    """The n cores [d_{k−1}, i_k, j_k, d_k] of W by sequential SVD, each bond truncated to ``bond_dim``."""
    n = len(in_factors)
    T = W_IJ.reshape(*in_factors, *out_factors)
    T = T.permute(*[axis for k in range(n) for axis in (k, n + k)])  # i_1, j_1, i_2, j_2, ...
    cores, rank, rest = [], 1, T.reshape(-1)
    for k in range(n - 1):
        U, S, Vh = torch.linalg.svd(rest.reshape(rank * in_factors[k] * out_factors[k], -1), full_matrices=False)
        kept = len(S) if bond_dim is None else min(len(S), bond_dim)
        cores.append(U[:, :kept].reshape(rank, in_factors[k], out_factors[k], kept))
        rest, rank = S[:kept, None] * Vh[:kept], kept
    cores.append(rest.reshape(rank, in_factors[-1], out_factors[-1], 1))
    return cores


def mpo_contract(cores: list[torch.Tensor]) -> torch.Tensor:
    """W [(E,) I, J] from cores [(E,) d_{k−1}, i_k, j_k, d_k]; a core without the leading E is shared."""
    batched = any(core.dim() == 5 for core in cores)
    E = next(core.shape[0] for core in cores if core.dim() == 5) if batched else 1
    first = cores[0] if cores[0].dim() == 5 else cores[0].expand(E, *cores[0].shape)
    X = first[:, 0]  # [E, i_1, j_1, d_1]
    for core in cores[1:]:
        spec = "eabr,erijs->eaibjs" if core.dim() == 5 else "eabr,rijs->eaibjs"
        X = torch.einsum(spec, X, core)
        X = X.reshape(E, X.shape[1] * X.shape[2], X.shape[3] * X.shape[4], X.shape[5])
    W = X[..., 0]
    return W if batched else W[0]


class MPOExperts(GroupedExperts):
    """E SwiGLU experts whose matrices are MPOs with a shared central core (see the module docstring).

    Args (beyond :class:`GroupedExperts`'): ``num_cores`` n (MPOE uses 5), ``bond_dim`` (null: exact, the
    full bonds), ``freeze_central``, ``central_grad_mask`` (p in [0, 1)).
    """

    def __init__(self, *, num_experts: int, d_model: int, d_ff: int, init_std: float = 0.02, impl: str = "auto",
                 activation: str = "swiglu", num_cores: int = 5, bond_dim: int | None = None,
                 freeze_central: bool = False, central_grad_mask: float = 0.0):
        if activation != "swiglu":
            raise ValueError(f"experts=mpo has SwiGLU experts; model.mlp={activation!r} is not supported")
        if isinstance(num_cores, bool) or not isinstance(num_cores, int) or num_cores < 3:
            raise ValueError(f"experts.num_cores={num_cores!r} must be an integer >= 3 (auxiliary, central, auxiliary)")
        self.num_cores, self.central = num_cores, num_cores // 2
        self.factors = {"D": factorise(d_model, num_cores), "F": factorise(d_ff, num_cores)}
        most = max(full_bonds(self.factors["D"], self.factors["F"]))  # the same bonds for D x F and F x D
        if bond_dim is not None and (isinstance(bond_dim, bool) or not isinstance(bond_dim, int)
                                     or not 1 <= bond_dim <= most):
            raise ValueError(f"experts.bond_dim={bond_dim!r} must be an integer in [1, {most}] (the largest bond of "
                             f"a {d_model} x {d_ff} MPO with {num_cores} cores), or null for the exact MPO")
        if isinstance(central_grad_mask, bool) or not isinstance(central_grad_mask, (int, float)) \
                or not 0 <= central_grad_mask < 1:
            raise ValueError(f"experts.central_grad_mask={central_grad_mask!r} must be a number in [0, 1) (the "
                             f"probability of masking each element; for 1 set experts.freeze_central=true)")
        if central_grad_mask and freeze_central:
            raise ValueError(f"experts.central_grad_mask={central_grad_mask} with experts.freeze_central=true: the "
                             f"central cores get no gradient to mask; choose one")
        self.bond_dim, self.freeze_central, self.central_grad_mask = bond_dim, freeze_central, float(central_grad_mask)
        super().__init__(num_experts=num_experts, d_model=d_model, d_ff=d_ff, init_std=init_std, impl=impl)
        for name in PARAMETERS["swiglu"]:  # the stacks are contracted from the cores, not stored
            delattr(self, name)
        self.cores = nn.ParameterDict()
        for name, shape in self.core_shapes().items():
            self.cores[name] = nn.Parameter(torch.empty(shape), requires_grad=not (freeze_central and
                                                                                   name.endswith(f"_{self.central}")))
        if self.central_grad_mask:
            for matrix in MATRICES:
                self.cores[f"{matrix}_{self.central}"].register_hook(self._mask_gradient)
        self.reset_parameters()

    def _mask_gradient(self, grad: torch.Tensor) -> torch.Tensor:
        """MPOE's gradient mask on a central core: each element kept with probability 1 − p."""
        return grad * (torch.rand_like(grad) >= self.central_grad_mask)

    def _bonds(self, matrix: str) -> list[int]:
        rows, cols = MATRICES[matrix]
        bonds = full_bonds(self.factors[rows], self.factors[cols])
        return [1, *(b if self.bond_dim is None else min(b, self.bond_dim) for b in bonds), 1]

    def core_shapes(self) -> dict[str, tuple[int, ...]]:
        """``{matrix}_{k}`` → its core's shape: [E, d_{k−1}, i_k, j_k, d_k] for an auxiliary core, without
        E for the central (shared) one."""
        shapes = {}
        for matrix, (rows, cols) in MATRICES.items():
            bonds = self._bonds(matrix)
            for k in range(self.num_cores):
                shape = (bonds[k], self.factors[rows][k], self.factors[cols][k], bonds[k + 1])
                shapes[f"{matrix}_{k}"] = shape if k == self.central else (self.num_experts, *shape)
        return shapes

    def reset_parameters(self) -> None:
        if not hasattr(self, "cores"):  # the base class's __init__ calls this before the cores exist
            return
        for matrix in MATRICES:
            # Var(W) = Π_k σ² · Π_k d_k for independent N(0, σ²) cores: σ per core for Var(W) = init_std²
            sigma = (self.init_std ** 2 / math.prod(self._bonds(matrix))) ** (1 / (2 * self.num_cores))
            for k in range(self.num_cores):
                nn.init.normal_(self.cores[f"{matrix}_{k}"], std=sigma)

    def routed_parameters(self) -> list[nn.Parameter]:
        """The per-expert (auxiliary) cores: what a token uses k/E of. The central cores serve every token."""
        return [core for name, core in self.cores.items() if not name.endswith(f"_{self.central}")]

    def parameter_report(self) -> dict[str, int]:
        """Parameters of these MPO experts, of which the shared central cores, against plain SwiGLU experts."""
        central = sum(core.numel() for name, core in self.cores.items() if name.endswith(f"_{self.central}"))
        return {"mpo": sum(core.numel() for core in self.cores.values()), "central": central,
                "plain": 3 * self.num_experts * self.d_model * self.d_ff}

    def matrix_cores(self, matrix: str) -> list[torch.Tensor]:
        return [self.cores[f"{matrix}_{k}"] for k in range(self.num_cores)]

    def stacked_weights(self, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        return tuple(mpo_contract(self.matrix_cores(matrix)).to(dtype) for matrix in MATRICES)

    @torch.no_grad()
    def load_stacks(self, stacks: dict[str, torch.Tensor]) -> None:
        """Set the cores from full expert stacks ({name: [E, X, Y]}) that are equal across experts (copy
        upcycling): one decomposition each, its central core shared, its auxiliary cores copied to every expert."""
        for matrix, W_EXY in stacks.items():
            if not torch.equal(W_EXY, W_EXY[:1].expand_as(W_EXY)):
                raise ValueError("experts=mpo shares one central core, so its experts can start only as copies of one "
                                 "FFN: use init.method=copy (not virtual_group, drop, carve or split)")
            rows, cols = MATRICES[matrix]
            cores = mpo_decompose(W_EXY[0].float(), self.factors[rows], self.factors[cols], self.bond_dim)
            for k, core in enumerate(cores):
                target = self.cores[f"{matrix}_{k}"]
                target.copy_(core if k == self.central else core.expand(self.num_experts, *core.shape))

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, num_cores={self.num_cores}, bond_dim={self.bond_dim}, "
                f"factors={self.factors}, freeze_central={self.freeze_central}, "
                f"central_grad_mask={self.central_grad_mask}")
