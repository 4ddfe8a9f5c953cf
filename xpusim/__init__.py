"""xpusim: performance simulator for large models on Ascend NPUs and NVIDIA GPUs.

The repository keeps four code folders at its top level (``sim``, ``hwprofiles``,
``kernels``, ``calibrate``); installed, they live under this one import name as
``xpusim.sim``, ``xpusim.hwprofiles``, ``xpusim.kernels`` and ``xpusim.calibrate``
(see ``setup.py``), so nothing generic lands at the top of a user's environment.
"""
