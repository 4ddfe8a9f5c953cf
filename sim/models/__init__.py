"""Model specifications: dense and MoE transformers read from HF config.json or presets."""

from sim.models.spec import MLASpec, ModelSpec, MoESpec

__all__ = ["MLASpec", "ModelSpec", "MoESpec"]
