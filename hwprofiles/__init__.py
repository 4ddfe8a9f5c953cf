"""Hardware profiles as data: device and system TOML files, their schema and loader.

Profiles use the units vendors publish (``_tflops``, ``_gbps`` = GB/s, ``_gib``, ``_us``);
the loader converts everything to SI and returns frozen dataclasses from ``hwprofiles.spec``.
"""

from hwprofiles.loader import (
    list_devices,
    list_systems,
    load_device,
    load_system,
)
from hwprofiles.spec import Device, Efficiency, MemoryLevel, System

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
