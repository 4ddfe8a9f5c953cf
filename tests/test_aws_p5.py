"""AWS p5.48xlarge (hwprofiles/systems/aws-p5.toml): the N23 nccl-tests rows' cluster.

Hand check: p5 is the HGX H100 board of dgx-h100 with EFA instead of InfiniBand. Its 32 EFA
cards of 100 Gb/s are four per GPU, which aws-ofi-nccl stripes into one 400 Gb/s NCCL device
per GPU, so a large ring all-gather across nodes moves the same bytes per node at the same
rate as on dgx-h100 (8 x 400 Gb/s): the slopes agree. What differs is the per-step network
latency: 75 us (aws-ofi-nccl's figure for p5) against dgx-h100's 1 us.
"""

from __future__ import annotations

import pytest
from xpusim.hwprofiles import load_system
from xpusim.sim.network.api import cost_collective


def _ring_all_gather(system_name: str, size: float) -> float:
    system = load_system(system_name, nodes=8)
    return cost_collective(system, "all-gather", range(64), size, algorithm="ring").time_s


def test_p5_is_an_hgx_h100_with_eight_400g_efa_devices() -> None:
    p5, dgx = load_system("aws-p5"), load_system("dgx-h100")
    assert p5.device.name == dgx.device.name == "h100-sxm5-80gb"
    assert (p5.nics_per_node, p5.nic.bandwidth) == (8, 50e9)  # 4 x 100 Gb/s per GPU
    assert p5.nic.latency == pytest.approx(75e-6)


def test_p5_bandwidth_matches_dgx_h100_latency_does_not() -> None:
    def slope(name: str) -> float:
        return (_ring_all_gather(name, 64e9) - _ring_all_gather(name, 8e9)) / 56e9

    # 63/64 of the output leaves each node, one eighth per 400 Gb/s device at 0.9
    assert slope("aws-p5") == pytest.approx(63 / 64 / 8 / (50e9 * 0.9), rel=1e-6)
    assert slope("aws-p5") == pytest.approx(slope("dgx-h100"), rel=1e-9)
    # the EFA latency makes the same small all-gather slower on p5
    assert _ring_all_gather("aws-p5", 1e6) > _ring_all_gather("dgx-h100", 1e6)
