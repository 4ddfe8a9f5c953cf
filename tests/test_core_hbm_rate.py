"""The AI cores' own HBM data-move rate caps what an op on the cores streams through main
memory (hwprofiles [cores] hbm_bytes_per_cycle = the CANN platform ini's ddr_rate;
hwprofiles.spec.Device.main_memory_rate; sim.cost.roofline; docs/cost_model.md,
"Memory-bound ops"). Every expected value below is computed by hand in the docstrings."""

from __future__ import annotations

import dataclasses
import math

import pytest
from xpusim.hwprofiles import load_device
from xpusim.sim import ops
from xpusim.sim.cost.roofline import RooflineModel, stream_time_s

HALF_910B = 2.0 * 1024**2  # ascend-910b* memory_half_mib = 2.0
COPY_BYTES = 2**28 * 4 * 2  # 2^28 fp32 read + written = 2,147,483,648 B


def test_chip_rates_by_hand() -> None:
    """cube clock x AI cores x 32 B/cycle (ddr_rate): 910B3 1.8 GHz x 20 = 1152 GB/s,
    910B2 1.8 x 24 = 1382.4, 910B1 1.85 x 24 = 1420.8, 910B4 1.5 x 20 = 960,
    910C 1.8 x 48 = 2764.8 (two dies)."""
    expected = {"ascend-910b3": 1152e9, "ascend-910b2": 1382.4e9, "ascend-910b1": 1420.8e9,
                "ascend-910b4": 960e9, "ascend-910c": 2764.8e9}
    for name, rate in expected.items():
        dev = load_device(name)
        assert dev.core_hbm_bytes_per_cycle == 32
        assert dev.core_hbm_bandwidth == pytest.approx(rate, rel=1e-12)


def test_main_memory_rate_is_the_smaller_limit() -> None:
    """910B3: min(1600 x 0.9 = 1440, 1152) = 1152 GB/s (the cores bind); 910B4:
    min(800 x 0.9 = 720, 960) = 720 GB/s (HBM binds); an H100 has no per-core rate:
    3350 x 0.9 = 3015 GB/s."""
    b3, b4, h100 = (load_device(n) for n in ("ascend-910b3", "ascend-910b4", "h100-sxm5-80gb"))
    assert b3.main_memory_rate(0.9) == pytest.approx(1152e9, rel=1e-12)
    assert b4.main_memory_rate(0.9) == pytest.approx(720e9, rel=1e-12)
    assert math.isinf(h100.core_hbm_bandwidth)
    assert h100.main_memory_rate(0.9) == pytest.approx(3015e9, rel=1e-12)
    no_rate = dataclasses.replace(b3, core_hbm_bytes_per_cycle=None)
    assert no_rate.main_memory_rate(0.9) == pytest.approx(1440e9, rel=1e-12)


def test_vector_copy_on_910b3_by_hand() -> None:
    """2^28 fp32 copy on a 910B3: (2,147,483,648 + 2,097,152) B / 1.152e12 B/s
    = 1.8659556e-3 s, i.e. 1150.9 GB/s of copied bytes (it was 1.4928e-3 s at 1440 GB/s)."""
    b3 = load_device("ascend-910b3")
    op = ops.elementwise("copy", 2**28, "fp32", inputs=1, outputs=1)
    assert op.main_bytes == COPY_BYTES
    t = RooflineModel(b3).memory_time(op)
    assert t == pytest.approx(2_149_580_800 / 1.152e12, rel=1e-12)
    assert t == pytest.approx(1.8659556e-3, rel=1e-7)
    assert stream_time_s(b3, COPY_BYTES) == pytest.approx(t, rel=1e-12)


def test_matrix_ops_are_capped_dma_copies_are_not() -> None:
    """A skinny GEMM's weight stream runs on the Cube's MTEs (capped: bytes / 1.152e12); a
    memcpy on the DMA engine keeps HBM x memory_max: (2 x 2^30 + 2 MiB) / 1.44e12
    = 1.4927644e-3 s."""
    b3 = load_device("ascend-910b3")
    model = RooflineModel(b3)
    gemm = ops.gemm("w", 1, 8192, 8192, "bf16")
    assert model.memory_time(gemm) == pytest.approx(
        (gemm.main_bytes + HALF_910B) / 1.152e12, rel=1e-12)
    copy = ops.memcpy("d2d", 2**30)
    assert model.memory_time(copy) == pytest.approx(
        (2 * 2**30 + HALF_910B) / 1.44e12, rel=1e-12)
    assert model.memory_time(copy) == pytest.approx(1.4927644e-3, rel=1e-7)


def test_uncapped_device_unchanged() -> None:
    """Without a per-core rate the memory term is the old (bytes + half) / (HBM x max):
    on the 910B3 with the rate removed the 2^28 fp32 copy is 2,149,580,800 / 1.44e12
    = 1.4927644e-3 s."""
    b3 = dataclasses.replace(load_device("ascend-910b3"), core_hbm_bytes_per_cycle=None)
    op = ops.elementwise("copy", 2**28, "fp32")
    assert RooflineModel(b3).memory_time(op) == pytest.approx(2_149_580_800 / 1.44e12, rel=1e-12)
