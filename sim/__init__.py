"""xpusim: a performance simulator for large models on Ascend NPUs and NVIDIA GPUs.

Layering (imports point one way): studies -> training/inference -> engine ->
cost/network -> ir, hwprofiles. Nothing here imports torch.
"""

__version__ = "0.1.0"
SCHEMA_VERSION = 1
