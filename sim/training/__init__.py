"""Training at cluster scale: lowering of fwd/bwd/recompute/optimizer, memory, simulation."""

from xpusim.sim.training.simulate import TrainingOptions, TrainingResult, estimate_memory
from xpusim.sim.training.steady import simulate_training

__all__ = ["TrainingOptions", "TrainingResult", "estimate_memory", "simulate_training"]
