"""vLLM's SM100 CUTLASS NVFP4 GEMM priced by its compiled tile and cluster config
(sim/cost/gemm_cutlass.py): before vLLM #20646 one 256 x 256 x 256 MMA tile (2-SM, 128 x 256
per SM) and a 4 x 4 cluster for every M; hand-computed values."""

from dataclasses import replace

import pytest
from xpusim.hwprofiles import load_device
from xpusim.sim import ops
from xpusim.sim.api.op import op
from xpusim.sim.cost import RooflineModel
from xpusim.sim.cost.gemm_cutlass import (
    NVFP4_UNTUNED,
    cutlass_config,
    cutlass_device_error,
    cutlass_launch,
    cutlass_work,
)
from xpusim.sim.errors import InputError
from xpusim.sim.ir import GemmShape

IMPL = "vllm-cutlass-nvfp4"
B200 = "b200"
# One wave on B200: 148 SMs x 16 K blocks (4096 / 256) x one per-SM tile 2 x 128 x 256 x 256.
ONE_WAVE = 148 * 16 * 2 * 128 * 256 * 256  # 39,728,447,488 FLOPs


def test_untuned_config_tiles():
    """256 x 256 x 256 under the 2-SM MMA: 128 x 256 per SM (vLLM's PerSmTileShape_MNK);
    a 4 x 4 cluster covers 128 x 4 = 512 rows and 256 x 4 = 1024 columns on 16 SMs."""
    cfg = cutlass_config(IMPL)
    assert cfg is NVFP4_UNTUNED
    assert cfg.two_sm
    assert cfg.sm_tile == (128, 256)
    assert cfg.cluster_tile == (512, 1024)
    assert cfg.cluster_size == 16
    with pytest.raises(ValueError):
        cutlass_config("deepgemm")


@pytest.mark.parametrize(
    ("m", "clusters", "waves"),
    [(1, 6, 1), (512, 6, 1), (513, 12, 2), (1024, 12, 2), (16384, 192, 22)],
)
def test_launch_clusters_and_waves(m, clusters, waves):
    """N 6144 / 1024 = 6 cluster columns; ceil(M / 512) cluster rows; 148 // 16 = 9 clusters
    at once: M <= 512 is one wave of 6 clusters, 16384 is 32 x 6 = 192 -> ceil(21.3) = 22."""
    launch = cutlass_launch(GemmShape(m, 6144, 4096, impl=IMPL), 148)
    assert (launch.clusters, launch.concurrent, launch.waves) == (clusters, 9, waves)


def test_work_one_wave_and_feed_bound():
    """M = 1: every SM counts 16 K blocks of 2 x 128 x 256 x 256 = 16,777,216 FLOPs. A feed
    cost of 300 FLOPs per element over (128 + 256 / 2) x 256 = 65,536 loaded elements
    (19,660,800) exceeds the MMA and sets the cost; the executed FLOPs stay the MMA's."""
    dev = load_device(B200)
    shape = GemmShape(1, 6144, 4096, impl=IMPL)
    assert cutlass_work(shape, dev, 0.0) == (ONE_WAVE, ONE_WAVE)
    work, executed = cutlass_work(shape, dev, 300.0)
    assert work == 148 * 16 * 300 * 65536
    assert executed == ONE_WAVE


def test_time_floor_independent_of_m():
    """B200 (no L2 bandwidth in the profile: no feed bound): compute = (one wave + the 3.6
    GFLOP matrix half) / (9000 T x 0.434) = 11.09 us for every M up to 512; M = 1024 runs two
    waves (21.26 us). The generic path (no impl) prices M = 1 far lower."""
    dev = load_device(B200)
    rate = 9000e12 * 0.434
    floor = (ONE_WAVE + 3.6e9) / rate
    assert floor == pytest.approx(11.093e-6, rel=1e-4)
    model = RooflineModel(dev)
    for m in (1, 64, 512):
        cost = model.time(ops.gemm("g", m, 6144, 4096, "nvfp4", impl=IMPL))
        assert cost.compute_s == pytest.approx(floor)
        assert cost.details["executed_flops"] == ONE_WAVE
    two = model.time(ops.gemm("g", 1024, 6144, 4096, "nvfp4", impl=IMPL))
    assert two.compute_s == pytest.approx((2 * ONE_WAVE + 3.6e9) / rate)
    generic = model.time(ops.gemm("g", 1, 6144, 4096, "nvfp4"))
    assert generic.compute_s < floor / 2


def test_device_check():
    assert cutlass_device_error(load_device(B200)) is None
    assert "no NVFP4 tensor cores" in str(cutlass_device_error(load_device("h100-sxm5-80gb")))
    small = replace(load_device(B200), matrix_cores=8)
    assert "fewer SMs" in str(cutlass_device_error(small))


def test_api_checks_and_names_the_impl():
    r = op(kind="gemm", device=B200, m=1, n=6144, k=4096, dtype="nvfp4", impl=IMPL,
           timing="kernel")
    assert r.op.shape.impl == IMPL
    assert r.as_dict()["shape"]["impl"] == IMPL
    with pytest.raises(InputError, match="give --dtype nvfp4"):
        op(kind="gemm", device=B200, m=1, n=6144, k=4096, dtype="fp8", impl=IMPL)
    with pytest.raises(InputError, match="give --batch 1"):
        op(kind="gemm", device=B200, m=1, n=6144, k=4096, dtype="nvfp4", batch=2, impl=IMPL)
    with pytest.raises(InputError, match="no NVFP4 tensor cores"):
        op(kind="gemm", device="h100-sxm5-80gb", m=1, n=6144, k=4096, dtype="nvfp4", impl=IMPL)
