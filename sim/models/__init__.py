"""Model specifications: dense and MoE transformers read from HF config.json or presets."""

from xpusim.sim.models.counting import (
    ParamCounts,
    flops_per_token,
    model_flops_per_token,
    param_counts,
    weight_bytes,
)
from xpusim.sim.models.hf_config import from_hf_config, list_presets, load_model
from xpusim.sim.models.spec import MLASpec, ModelSpec, MoESpec

__all__ = [
    "MLASpec",
    "ModelSpec",
    "MoESpec",
    "ParamCounts",
    "flops_per_token",
    "from_hf_config",
    "list_presets",
    "load_model",
    "model_flops_per_token",
    "param_counts",
    "weight_bytes",
]
