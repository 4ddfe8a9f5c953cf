"""xpusim: a performance simulator for large models on Ascend NPUs and NVIDIA GPUs.

Layering (imports point one way): studies -> training/inference -> engine ->
cost/network -> ir, hwprofiles. Nothing here imports torch.
"""

if __name__.partition(".")[0] != "xpusim":
    # Installed, this folder is ``xpusim.sim``; imported under its folder name (from
    # the repository root) it would load every module twice under two names.
    raise ImportError(
        "xpusim's sim/ folder is imported as 'xpusim.sim' "
        "(pip install -e . from the repository root), not as 'sim'"
    )


__version__ = "0.1.0"
SCHEMA_VERSION = 1
