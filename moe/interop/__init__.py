"""Import models from other frameworks into the moe-lab backbone, and export them to Hugging Face."""

from moe.interop.hf_import import SUPPORTED, hf_run_config, load_hf, model_config_from_hf
from moe.interop.save_hf import save_hf

__all__ = ["SUPPORTED", "hf_run_config", "load_hf", "model_config_from_hf", "save_hf"]
