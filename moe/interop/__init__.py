"""Import models from other frameworks into the moe-lab backbone."""

from moe.interop.hf_dense import SUPPORTED, hf_run_config, load_hf_dense, model_config_from_hf

__all__ = ["SUPPORTED", "hf_run_config", "load_hf_dense", "model_config_from_hf"]
