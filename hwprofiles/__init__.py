"""Hardware profiles as data: device and system TOML files, their schema and loader.

Profiles use the units vendors publish (``_tflops``, ``_gbps`` = GB/s, ``_gib``, ``_us``);
the loader converts everything to SI and returns frozen dataclasses from ``xpusim.hwprofiles.spec``.
"""

if __name__.partition(".")[0] != "xpusim":
    # Installed, this folder is ``xpusim.hwprofiles``; imported under its folder name (from
    # the repository root) it would load every module twice under two names.
    raise ImportError(
        "xpusim's hwprofiles/ folder is imported as 'xpusim.hwprofiles' "
        "(pip install -e . from the repository root), not as 'hwprofiles'"
    )


from xpusim.hwprofiles.loader import (
    list_devices,
    list_systems,
    load_device,
    load_system,
)
from xpusim.hwprofiles.spec import Device, Efficiency, MemoryLevel, System

__all__ = [
    "Device",
    "Efficiency",
    "MemoryLevel",
    "System",
    "list_devices",
    "list_systems",
    "load_device",
    "load_system",
]
