"""System fixtures for the network tests (no tests here), built from the Atlas 800T A2 profile.

Built with ``dataclasses.replace`` so the tests do not depend on other profiles; the
values are round illustrative figures (NVSwitch-like 450 GB/s ports, 400G NICs), not
claims about a product.
"""

from __future__ import annotations

from dataclasses import replace

from xpusim.hwprofiles import load_system
from xpusim.hwprofiles.spec import CollectiveEfficiency, Link, System


def mesh(nodes: int = 1, **kw) -> System:
    """Atlas 800T A2 as shipped: 8 NPUs on an HCCS full mesh, one 200G NIC each."""
    return replace(load_system("atlas-800t-a2"), nodes=nodes, **kw)


def switch(nodes: int = 1, **kw) -> System:
    """An NVSwitch-like server: 8 devices, 450 GB/s port each, 8 x 400G NICs on rails."""
    return replace(
        mesh(nodes),
        name="switch-fixture",
        intra_topology="switch",
        intra_link=Link(450e9, 1e-6),
        links_per_device=18,
        nic=Link(50e9, 2e-6),
        **kw,
    )


def uniform(
    n: int, bandwidth: float = 100e9, latency: float = 1e-6, overhead: float = 1e-6
) -> System:
    """n devices behind one switch, every port ``bandwidth`` — the textbook ring setting."""
    return replace(
        mesh(1),
        name="uniform-fixture",
        devices_per_node=n,
        intra_topology="switch",
        intra_link=Link(bandwidth, latency),
        collective_efficiency=CollectiveEfficiency(1.0, 1.0, overhead),
    )


def shared_nic(nodes: int = 2) -> System:
    """Two NICs per node of 8 devices: four devices share each NIC."""
    return replace(mesh(nodes), nics_per_node=2, nic=Link(50e9, 2e-6))


def oversubscribed(nodes: int = 4, topology: str = "rail_optimized", ratio: float = 2.0) -> System:
    return replace(switch(nodes), inter_topology=topology, oversubscription=ratio)


def dual_die(nodes: int = 1) -> System:
    """910C-like: 16 dies per node in 8 packages, die-to-die link, switched fabric."""
    return replace(
        switch(nodes),
        devices_per_node=16,
        dies_per_package=2,
        die_to_die=Link(224e9, 0.2e-6),
        intra_link=Link(196e9, 0.5e-6),
        nics_per_node=8,
        nic=Link(50e9, 2e-6),
    )
