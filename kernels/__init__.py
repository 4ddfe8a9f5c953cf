"""Real PyTorch implementations of the kernels the simulator models.

Each kernel can describe itself as IR (``describe_*`` delegating to the torch-free
builders in ``xpusim.sim.workloads``) so calibration and validation compare the simulator's
prediction for exactly the op graph the kernel runs. Modules: ``attention``
(standard and FastAttention), ``tiling_allreduce`` (TP attention with overlapped
all-reduce), ``flops`` (FLOP counting of real runs), ``distributed`` (gloo process
launcher) and the MoE/CDC kernels. Only this package and ``calibrate`` import torch.
"""

if __name__.partition(".")[0] != "xpusim":
    # Installed, this folder is ``xpusim.kernels``; imported under its folder name (from
    # the repository root) it would load every module twice under two names.
    raise ImportError(
        "xpusim's kernels/ folder is imported as 'xpusim.kernels' "
        "(pip install -e . from the repository root), not as 'kernels'"
    )

