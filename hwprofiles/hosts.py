"""Host CPUs (hwprofiles/hosts.toml): the single-thread speed that host-side costs scale by.

A serving engine's scheduler and a training framework's eager dispatch run on one host
thread, so a time measured on one CPU becomes ``reference speed / this CPU's speed`` times
that on another. Speed = boost clock x IPC relative to Zen 2 (the table's sources say
which IPC figures are estimates)."""

from __future__ import annotations

from functools import cache
from typing import Any

from xpusim.hwprofiles.errors import ProfileError
from xpusim.hwprofiles.loader import ROOT, read_toml

HOSTS_PATH = ROOT / "hosts.toml"


@cache
def _hosts() -> dict[str, Any]:
    return read_toml(HOSTS_PATH, "host CPU table")


def host_speed(cpu: str) -> float:
    """Single-thread speed of a host CPU of hwprofiles/hosts.toml (boost GHz x IPC vs Zen 2)."""
    cpus = _hosts().get("cpus", {})
    if cpu not in cpus:
        raise ProfileError(
            f"unknown host CPU '{cpu}' in {HOSTS_PATH}; known: {', '.join(sorted(cpus))}"
        )
    entry = cpus[cpu]
    return float(entry["boost_ghz"]) * float(entry["ipc_vs_zen2"])


def system_host(system_name: str) -> str | None:
    """The host CPU of a system profile (hwprofiles/hosts.toml [systems]), or None."""
    value = _hosts().get("systems", {}).get(system_name)
    return value if isinstance(value, str) else None


def system_host_speed(system_name: str) -> float | None:
    """``host_speed`` of the system's host CPU, None for a system with no entry."""
    cpu = system_host(system_name)
    return host_speed(cpu) if cpu else None
