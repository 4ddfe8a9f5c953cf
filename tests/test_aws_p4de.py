"""AWS p4de.24xlarge (hwprofiles/systems/aws-p4de.toml): the torchtitan A100 rows' cluster.

Hand check: a 64-rank ring all-gather over 8 p4de nodes. Each node sends (n-1)/n of the
output through its 4 EFA cards of 100 Gb/s (12.5 GB/s x the inter-node efficiency 0.9);
NCCL's channels spread the rings over the cards, so one card carries a quarter. The
DGX A100 spreads the same bytes over 8 HDR cards of 25 GB/s: 4x the node bandwidth.
"""

from __future__ import annotations

import pytest
from xpusim.hwprofiles import load_system
from xpusim.sim.network.api import cost_collective


def _slope(system_name: str) -> float:
    """Seconds per output byte of a large ring all-gather (latency cancels)."""
    system = load_system(system_name, nodes=8)
    small = cost_collective(system, "all-gather", range(64), 8e9, algorithm="ring").time_s
    large = cost_collective(system, "all-gather", range(64), 64e9, algorithm="ring").time_s
    return (large - small) / 56e9


def test_p4de_node_bandwidth_is_four_100g_efa_cards() -> None:
    system = load_system("aws-p4de")
    assert system.device.name == "a100-sxm4-80gb"
    assert (system.nics_per_node, system.nic.bandwidth) == (4, 12.5e9)  # 100 Gb/s
    # 63/64 of the output leaves each node, a quarter per card at 12.5 GB/s x 0.9
    assert _slope("aws-p4de") == pytest.approx(63 / 64 / 4 / (12.5e9 * 0.9), rel=1e-6)


def test_p4de_is_a_quarter_of_dgx_a100_between_nodes() -> None:
    # DGX A100: 8 cards x 25 GB/s x 0.9 per node, the same 63/64 of the output
    assert _slope("dgx-a100") == pytest.approx(63 / 64 / 8 / (25e9 * 0.9), rel=1e-6)
    assert _slope("aws-p4de") / _slope("dgx-a100") == pytest.approx(4.0, rel=1e-6)
