"""xpusim: performance simulator for large models on Ascend NPUs and NVIDIA GPUs.

The repository keeps four code folders at its top level (``sim``, ``hwprofiles``,
``kernels``, ``calibrate``); installed, they live under this one import name as
``xpusim.sim``, ``xpusim.hwprofiles``, ``xpusim.kernels`` and ``xpusim.calibrate``
(see ``setup.py``), so nothing generic lands at the top of a user's environment.
"""

import importlib
from typing import Any


def __getattr__(name: str) -> Any:
    # The API's names, loaded on first use: `import xpusim.sim.cli.main` (the console
    # script) must not pay for importing every study.
    api = importlib.import_module("xpusim.api")
    if name == "api":
        return api
    if name in api.__all__:
        return getattr(api, name)
    raise AttributeError(f"module 'xpusim' has no attribute {name!r}")


def __dir__() -> list[str]:
    api = importlib.import_module("xpusim.api")
    return sorted([*globals(), *api.__all__])
