"""How a run's model gets its first weights: the ``init`` config group.

- ``init=scratch`` (default): the random initialisation of the model's constructors.
- ``init=checkpoint init.path=P``: every weight from a moe-lab checkpoint (or run directory) or a Hugging
  Face model directory, e.g. to fine-tune with another data set or balancer. The run adopts P's
  ``model``/``router``/``experts``/``balance`` config nodes (``init.config_from_checkpoint``).
- ``init=upcycle init.path=P init.method=M``: build the configured MoE model, then fill it from a dense
  model (a moe-lab dense checkpoint or run directory, or a Hugging Face dense model directory):
  attention, norms and embeddings are copied; blocks that stay dense (the layer pattern) copy the dense
  FFN; MoE blocks get experts from the dense FFN by method M (moe/upcycle/experts_from_dense.py) and
  keep their freshly initialised router (virtual groups repeat its rows per group).
- ``init.method=carve`` (CMoE) and ``init.method=split`` (LLaMA-MoE's neuron split, ``init.partition``
  random | cluster) partition the dense neurons into the routed experts of ``model.expert_d_ff`` each
  (plus the shared experts), from ``init.calibration_tokens`` training tokens of the embedded corpus
  (cached under ``init.calibration_cache_dir``; null: the data config's default) and ``init.active_neurons``
  = K_a; a ``router=cmoe`` gets its representative neurons. See moe/upcycle/carve.py.

Function preservation at step 0 (He et al. 2410.07524): with ``router.order=topk_then_softmax`` and no token
dropping, ``copy`` reproduces the dense model exactly (the k gate weights sum to 1 over identical
experts), and so does ``virtual_group`` with k a multiple of G and output scale G. With
``softmax_then_topk`` the routed output is (Σ_topk p)·FFN(x); ``output_scale: auto`` multiplies by E/k
(G = 1) or E·G/k, exact only for a uniform router.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from torch import nn

from moe.loading import load_model
from moe.models.init_by_name import draw_by_name
from moe.types import LinearScored, Scored, TopKGated, supports
from moe.upcycle import carve
from moe.upcycle.experts_from_dense import copy_into_experts, reinitialise_neurons
from moe.upcycle.source_backbone import source_tokenizer

METHODS = ("copy", "virtual_group", "drop", "carve", "split")


class FromScratch:
    """``init=scratch``: the constructors' random initialisation.

    ``draws``: ``sequence`` keeps it as drawn, one random stream in parameter order (what every run
    before this option did); ``by_name`` redraws every parameter from a generator seeded by ``seed``
    and its name (moe/models/init_by_name.py), so the arms of a comparison paired by seed start equal
    wherever they have the same parameters.
    """

    def __init__(self, draws: Literal["sequence", "by_name"] = "sequence", seed: int = 0):
        self.draws, self.seed = draws, seed

    def __call__(self, model: nn.Module) -> None:
        if self.draws == "by_name":
            draw_by_name(model, self.seed)


def _copy_matching(source: nn.Module, target: nn.Module, *, skip_ffn: bool, source_name: str) -> None:
    """Copy every tensor of ``source`` into the same name of ``target`` (FFNs excluded if asked)."""
    source_sd = source.state_dict()
    for name, tensor in target.state_dict().items():
        if skip_ffn and ".ffn." in name:
            continue
        if name not in source_sd:
            raise ValueError(f"{source_name} has no tensor {name!r} that the configured model needs")
        if source_sd[name].shape != tensor.shape:
            raise ValueError(f"{name}: {source_name} has shape {tuple(source_sd[name].shape)}, the configured "
                             f"model needs {tuple(tensor.shape)}; make the model config match the source")
        with torch.no_grad():
            tensor.copy_(source_sd[name])


class FromCheckpoint:
    """``init=checkpoint``: every weight from a model of the same architecture.

    ``config_from_checkpoint`` names the config nodes that ``moe.training.run`` takes from the
    checkpoint (its config.yaml, or ``moe.interop.hf_run_config`` of a HF directory) before building
    the model, so the architecture need not be retyped; the copy itself reads only ``path``.
    """

    ADOPTABLE_NODES = ("model", "router", "experts", "balance")

    def __init__(self, *, path: str, config_from_checkpoint: list[str] | tuple[str, ...] = ADOPTABLE_NODES):
        self.path = path
        self.config_from_checkpoint = self.check_nodes(config_from_checkpoint)

    @classmethod
    def check_nodes(cls, nodes) -> tuple[str, ...]:
        """The node names as a tuple; ValueError naming the allowed ones for anything else."""
        if isinstance(nodes, str) or not all(isinstance(n, str) for n in nodes):
            raise ValueError(f"init.config_from_checkpoint={nodes!r} must be a list of node names "
                             f"from {list(cls.ADOPTABLE_NODES)}")
        unknown = [n for n in nodes if n not in cls.ADOPTABLE_NODES]
        if unknown:
            raise ValueError(f"init.config_from_checkpoint: unknown node(s) {unknown}; allowed: "
                             f"{list(cls.ADOPTABLE_NODES)}")
        return tuple(nodes)

    def __call__(self, model: nn.Module) -> None:
        _copy_matching(load_model(self.path), model, skip_ffn=False, source_name=f"init.path={self.path}")


class Upcycle:
    """``init=upcycle``: a dense model's weights into the configured MoE model (see the module doc)."""

    def __init__(self, *, path: str, method: str = "copy", granularity: int = 1,
                 output_scale: float | str = "auto", drop_ratio: float = 0.5, seed: int = 0,
                 calibration_tokens: int = 8192, active_neurons: int = 10, partition: str = "random",
                 calibration_cache_dir: str | None = None):
        if method not in METHODS:
            raise ValueError(f"init.method={method!r} is not one of {METHODS}")
        if granularity < 1 or (method != "virtual_group" and granularity != 1):
            raise ValueError(f"init.granularity={granularity}: must be 1 for method={method!r}, >= 1 for virtual_group")
        if output_scale != "auto" and not float(output_scale) > 0:
            raise ValueError(f"init.output_scale={output_scale!r} must be 'auto' or a number > 0")
        if not Path(path).exists():
            raise FileNotFoundError(f"init.path={path} does not exist")
        self.path, self.method, self.granularity = path, method, granularity
        self.output_scale, self.drop_ratio, self.seed = output_scale, drop_ratio, seed
        if partition not in carve.PARTITIONS:
            raise ValueError(f"init.partition={partition!r} is not one of {carve.PARTITIONS}")
        self.calibration_tokens, self.active_neurons, self.partition = calibration_tokens, active_neurons, partition
        self.calibration_cache_dir = calibration_cache_dir

    def scale_for(self, layer) -> float:
        if self.output_scale != "auto":
            return float(self.output_scale)
        E, G, k = layer.experts.num_experts, self.granularity, getattr(layer.router, "top_k", None)
        if supports(layer.router, TopKGated) and layer.router.order == "softmax_then_topk":
            return E * G / k  # Megatron's _get_moe_activation_scale for pre-softmax routing
        return float(G)  # the k renormalised weights spread over whole groups of G shards

    def __call__(self, model: nn.Module) -> None:
        dense = load_model(self.path)
        source = f"init.path={self.path}"
        if dense.moe_layers:
            raise ValueError(f"{source} is an MoE model; upcycling needs a dense source (use init=checkpoint)")
        if len(dense.blocks) != len(model.blocks):
            raise ValueError(f"{source} has {len(dense.blocks)} blocks, model.n_layers={len(model.blocks)}")
        if self.method != "copy" and any(hasattr(layer.experts, "load_stacks") for layer in model.moe_layers):
            raise ValueError(f"init.method={self.method} with experts=mpo: MPO experts share one central core, so "
                             f"they can start only as copies of the dense FFN (init.method=copy)")
        _copy_matching(dense, model, skip_ffn=True, source_name=source)
        if self.method in ("carve", "split"):
            for dense_block, block in zip(dense.blocks, model.blocks):
                if not block.is_moe:
                    _copy_matching(dense_block.ffn, block.ffn, skip_ffn=False, source_name=source)

            def calibration():  # read only when the method needs activations, in the source's own tokens
                return carve.calibration_ids(num_tokens=self.calibration_tokens, seq_len=model.max_seq_len,
                                             cache_dir=self.calibration_cache_dir,
                                             tokenizer=source_tokenizer(self.path))

            carve.carve_model(dense, model, method=self.method, calibration=calibration,
                              active_neurons=self.active_neurons, split_partition=self.partition, seed=self.seed)
            return
        if any(layer.shared_expert is not None for layer in model.moe_layers):
            # copy / virtual_group / drop make every routed expert a copy (or shard) of the dense FFN:
            # a shared expert on top would add an untrained FFN and break step-0 preservation
            raise ValueError(f"init.method={self.method} fills routed experts only: set model.num_shared_experts=0 "
                             f"(the default MoE has one), or use init.method=carve, which fills shared experts too")
        generator = torch.Generator().manual_seed(self.seed)
        for dense_block, block in zip(dense.blocks, model.blocks):
            if not block.is_moe:
                _copy_matching(dense_block.ffn, block.ffn, skip_ffn=False, source_name=source)
                continue
            layer = block.ffn
            if self.method == "virtual_group":
                self._repeat_router_rows(layer)
            copy_into_experts(dense_block.ffn, layer.experts, granularity=self.granularity,
                              output_scale=self.scale_for(layer))
            if self.method == "drop":
                reinitialise_neurons(dense_block.ffn, layer.experts, drop_ratio=self.drop_ratio, generator=generator)

    def _repeat_router_rows(self, layer) -> None:
        """Virtual groups: expert r·G + g shares router row r, so top-k picks whole groups."""
        G, router = self.granularity, layer.router
        k = getattr(router, "top_k", None)
        if not (supports(router, Scored) and supports(router.scorer, LinearScored)):
            raise ValueError(f"init.method=virtual_group needs a linear router; {type(router).__name__} has none")
        if k is None or k % G:
            raise ValueError(
                f"init.method=virtual_group needs router.top_k={k} to be a multiple of init.granularity={G}"
            )
        with torch.no_grad():
            weight_ED = router.scorer.weight_ED
            R = weight_ED.shape[0] // G
            weight_ED.copy_(weight_ED[:R].repeat_interleave(G, dim=0))
