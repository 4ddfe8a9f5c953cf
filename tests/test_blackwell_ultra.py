"""Blackwell Ultra profiles (b300, gb300) and their systems (dgx-b300, gb300-nvl72).

Blackwell Ultra doubles the SFU (MUFU.EX2) rate of Blackwell: NVIDIA's "Making Softmax More
Efficient with NVIDIA Blackwell Ultra" blog; Verda's GB300 NVL72 post tabulates 10.7 against
5 TeraExponentials/s per GPU. The GB300 NVL72 carries one 800 Gb/s ConnectX-8 per GPU (NVIDIA
Enterprise RA, NVL72 AI factory components: 4 ConnectX-8 per 4-GPU compute tray).
"""

import pytest
from xpusim.hwprofiles import load_device, load_system


@pytest.mark.parametrize(("name", "twin"), [("b300", "b200"), ("gb300", "gb200")])
def test_blackwell_ultra_exp_rate_is_twice_blackwell_per_clock_per_sm(name: str, twin: str) -> None:
    ultra, blackwell = load_device(name), load_device(twin)
    assert ultra.kernels.exp_per_clk_per_core == 2 * blackwell.kernels.exp_per_clk_per_core == 32
    # Per GPU: 160 SMs x 32 x clock against 148 x 16 x clock (Verda: 10.7 vs 5 T/s); the
    # clocks are INFERRED from each part's BF16 peak, so the per-GPU ratio is only near 2.
    rate = ultra.matrix_cores * ultra.kernels.exp_per_clk_per_core * ultra.clock_hz
    base = blackwell.matrix_cores * blackwell.kernels.exp_per_clk_per_core * blackwell.clock_hz
    assert 1.8 < rate / base < 2.1


def test_gb300_peaks_and_clock() -> None:
    dev = load_device("gb300")
    # Dense per-GPU figures of the GB300 NVL72 (Verda's table, NVIDIA's Blackwell Ultra blog).
    assert dev.matrix_peak["bf16"] == pytest.approx(2.5e15)
    assert dev.matrix_peak["fp8"] == pytest.approx(5e15)
    assert dev.matrix_peak["nvfp4"] == pytest.approx(15e15)
    assert dev.matrix_cores == 160
    # Clock INFERRED from the BF16 peak: 160 SMs x 8192 FLOP/clk (tcgen05, twice Hopper's).
    assert dev.matrix_peak["bf16"] == pytest.approx(160 * 8192 * dev.clock_hz, rel=1e-3)
    # Efficiency carried from gb200 (same quoted 16/8-bit peaks).
    assert dev.efficiency == load_device("gb200").efficiency


def test_b300_efficiency_is_carried_from_b200() -> None:
    assert load_device("b300").efficiency == load_device("b200").efficiency


@pytest.mark.parametrize(("name", "device", "per_node"), [("gb300-nvl72", "gb300", 72), ("dgx-b300", "b300", 8)])
def test_blackwell_ultra_systems_have_one_800g_nic_per_gpu(name: str, device: str, per_node: int) -> None:
    system = load_system(name)
    assert system.device.name == device
    assert system.devices_per_node == system.nics_per_node == per_node
    assert system.nic.bandwidth == pytest.approx(800e9 / 8)
    assert system.intra_link.bandwidth == pytest.approx(900e9)


def test_gb300_nvl72_host_link_is_half_a_superchips_c2c() -> None:
    system = load_system("gb300-nvl72")
    assert system.host_link is not None and system.host_link.bandwidth == pytest.approx(225e9)
