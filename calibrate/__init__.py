"""Calibration: run real kernels on the local device, fit the cost model, validate.

``device`` finds what can be timed (CPU always, CUDA, Ascend via torch_npu);
``harness`` times a callable robustly; ``suites`` pairs each measured case with
the IR the simulator prices; ``fit`` fits the roofline parameters with
``scipy.optimize.least_squares``; ``overlay`` writes the calibrated profile;
``validate`` compares predictions with held-out measurements.

This package may import torch; ``sim/`` never imports it.
"""

if __name__.partition(".")[0] != "xpusim":
    # Installed, this folder is ``xpusim.calibrate``; imported under its folder name (from
    # the repository root) it would load every module twice under two names.
    raise ImportError(
        "xpusim's calibrate/ folder is imported as 'xpusim.calibrate' "
        "(pip install -e . from the repository root), not as 'calibrate'"
    )

