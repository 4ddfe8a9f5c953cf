"""The simulated FastAttention study (sim/attention_model.py) and ``xpusim attention``."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from xpusim.hwprofiles import load_device, load_system
from xpusim.hwprofiles.spec import Device, Efficiency, MemoryLevel
from xpusim.sim.api.attention import parse_seq_list
from xpusim.sim.attention_model import (
    compare,
    derive_tiling,
    fast_attention_cost,
    standard_attention_cost,
    standard_peak_memory,
    tiling_allreduce_cost,
)
from xpusim.sim.cli.main import main
from xpusim.sim.cost import RooflineModel
from xpusim.sim.errors import InputError
from xpusim.sim.workloads.attention import (
    describe_fast_attention,
    describe_standard_attention,
    describe_tp_attention_tiling_allreduce,
)

NPU = load_device("ascend-910b2")


def _volta_like() -> Device:
    """A V100-class GPU built in the test (figures: NVIDIA V100 datasheet — 80 SMs,
    125 TFLOP/s fp16 tensor, 900 GB/s HBM2, 96 KiB shared memory per SM, 6 MiB L2)."""
    return Device(
        name="volta-like",
        vendor="NVIDIA",
        arch="nvidia",
        description="test GPU",
        matrix_peak={"fp16": 125e12, "fp32": 15.7e12},
        vector_peak={"fp32": 15.7e12, "fp16": 31.4e12},
        marketing_peak={"fp16": 125e12},
        cores=80,
        matrix_cores=80,
        vector_cores=80,
        clock_hz=1.53e9,
        hbm_capacity=32 * 2**30,
        hbm_bandwidth=900e9,
        memory=(
            MemoryLevel("l2", 6 * 2**20, None),
            MemoryLevel("smem", 96 * 2**10, None, "per_core"),
        ),
        matrix_tile=(16, 16, 16),
        efficiency=Efficiency(),
    )


def test_npu_tiling_derived_from_buffer_capacities():
    t = derive_tiling(NPU, 128, "fp16", 65536)
    # L0A 64 KiB / 2 buffers / (128 x 2 B) = 128 rows; L0C 128 KiB / 2 / (128 x 4 B) = 128;
    # S tile 128 x 128 fp32 = 64 KiB = half of L0C.
    assert (t.inner_m, t.inner_n) == (128, 128)
    # UB 192 KiB per AIV: 64 rows x cols x (4 + 2) B + 64 x 128 x 4 B <= 192 KiB -> cols <= 426.
    assert t.limits["ub_cols"] == 384
    # L1 512 KiB: Q 128x128x2 + K,V cols x 128 x 2 x 2 <= 512 KiB -> cols <= 960.
    assert t.limits["l1_cols"] == 896
    assert (t.rows, t.cols) == (128, 384)
    # Short sequences do not get a block longer than the (tile-rounded) sequence.
    assert derive_tiling(NPU, 128, "fp16", 200).cols == 256


def test_gpu_tiling_from_shared_memory():
    t = derive_tiling(_volta_like(), 128, "fp16", 8192)
    # 96 KiB / (3 tiles x 128 x 2 B) = 128 -> square 128 x 128 blocks.
    assert (t.rows, t.cols) == (128, 128)


def test_bad_outer_block_is_an_input_error():
    with pytest.raises(InputError, match="multiple of the inner tile"):
        derive_tiling(NPU, 128, "fp16", 8192, outer_block=100)


def test_standard_time_is_the_sum_of_its_ops():
    graph = describe_standard_attention(1, 8, 2048, 128, True, dtype="fp16")
    model = RooflineModel(NPU)
    cost = standard_attention_cost(NPU, 1, 8, 2048, 128, True, "fp16")
    assert cost.time_s == pytest.approx(sum(model.time(op).time_s for op in graph.ops()))
    assert cost.bound == "memory"  # the S x S tensors dominate on every practical head_dim


def test_standard_peak_memory_by_hand():
    # fp16, B=1, H=32, S=65536, causal: S and the fp32 P live together (6 B per score)
    # + the 2 B mask per position + Q, K, V, O.
    s, h, d = 65536, 32, 128
    want = 6 * h * s * s + 2 * s * s + 4 * h * s * d * 2
    assert standard_peak_memory(1, h, s, d, True, "fp16") == want
    row = compare(NPU, 1, h, s, d, True, "fp16")
    assert not row["standard_fits"] and row["fast_fits"]
    assert row["fast_memory_bytes"] < row["standard_memory_bytes"] / 100


def test_fast_never_beats_the_physical_roofline():
    for seq in (1024, 8192, 32768):
        cost = fast_attention_cost(NPU, 1, 32, seq, 128, False, "fp16")
        flops = 4.0 * 32 * seq * seq * 128
        assert cost.time_s > flops / NPU.peak_for("matrix", "fp16")


def test_causal_skips_about_half_the_work():
    full = fast_attention_cost(NPU, 1, 32, 32768, 128, False, "fp16")
    causal = fast_attention_cost(NPU, 1, 32, 32768, 128, True, "fp16")
    assert 0.45 < causal.time_s / full.time_s < 0.6


def test_speedup_grows_with_sequence_and_fast_is_gm_bound_on_ascend():
    rows = [compare(NPU, 1, 32, s, 128, True, "fp16") for s in (1024, 4096, 16384, 65536)]
    speedups = [r["speedup"] for r in rows]
    assert speedups == sorted(speedups) and speedups[0] > 1
    # The separated AIC/AIV hand-off through L2 is the bottleneck of the blockwise kernel.
    assert all(r["fast_bound"] == "gm" for r in rows)


def test_sync_cost_only_adds_time():
    base = fast_attention_cost(NPU, 1, 8, 8192, 128, False, "fp16", sync_s=0.0)
    slow = fast_attention_cost(NPU, 1, 8, 8192, 128, False, "fp16", sync_s=5e-6)
    assert slow.time_s > base.time_s
    assert slow.details["blocks"] == base.details["blocks"]


def test_gpu_has_no_handoff_and_is_compute_bound():
    gpu = _volta_like()
    cost = fast_attention_cost(gpu, 1, 32, 16384, 128, False, "fp16")
    assert cost.details["sync_s"] == 0.0
    assert cost.bound in ("tensor-core", "cuda-core")  # an NVIDIA arch names its units


def test_coupled_davinci_has_no_gm_handoff():
    """910A: Cube and Vector in one AI core (as many vector as cube cores) — the score
    tile stays on chip, so only the K/V load is priced as memory traffic."""
    coupled = load_device("ascend-910a")
    cost = fast_attention_cost(coupled, 1, 8, 8192, 128, True, "fp16")
    assert cost.details["sync_s"] == 0.0
    assert cost.memory_bytes < fast_attention_cost(NPU, 1, 8, 8192, 128, True, "fp16").memory_bytes


def test_pto_flash_attention_measurement_is_in_range():
    """Check, not input: Huawei's PTO FA kernel on a 910B2 (one 128-query block, 8192 keys,
    outer block 512) measured 68.8 us (docs/attention.md, validation C1)."""
    cost = fast_attention_cost(NPU, 1, 1, 8192, 128, False, "fp16", outer_block=512, q_len=128)
    assert 68.8e-6 / 1.5 < cost.time_s < 68.8e-6 * 1.5


def test_blocks_counted_match_the_kernel_description():
    # 1 head, 1024 tokens, 128 x 384 blocks: 8 query blocks x 3 key blocks (non-causal).
    cost = fast_attention_cost(NPU, 1, 1, 1024, 128, False, "fp16")
    assert cost.details["blocks"] == 8 * 3
    # The description with square 128 blocks, causal: 8 x 9 / 2 = 36 blocks of QK^T.
    graph = describe_fast_attention(1, 1, 1024, 128, True, outer_block=128, inner_block=128)
    assert sum(".qk" in op.name for op in graph.ops()) == 36


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    heads=st.integers(1, 64),
    seq=st.integers(16, 20000),
    causal=st.booleans(),
    dtype=st.sampled_from(["fp16", "bf16"]),
)
def test_more_heads_never_faster(heads, seq, causal, dtype):
    a = fast_attention_cost(NPU, 1, heads, seq, 128, causal, dtype)
    b = fast_attention_cost(NPU, 1, heads + 1, seq, 128, causal, dtype)
    assert b.time_s >= a.time_s * (1 - 1e-12)
    assert a.time_s > 0 and math.isfinite(a.time_s)


def test_seq_range_parsing():
    assert parse_seq_list("1024,2048,...,65536") == [1024 * 2**i for i in range(7)]
    assert parse_seq_list("100,300") == [100, 300]
    for bad in ("1024,...", "2048,1024,...,4096", "a,b"):
        with pytest.raises(InputError):
            parse_seq_list(bad)


def test_cli_json_fields(capsys):
    assert (
        main(
            [
                "attention",
                "--device",
                "ascend-910b2",
                "--seq",
                "1024,2048,...,65536",
                "--heads",
                "32",
                "--head-dim",
                "128",
                "--causal",
                "--dtype",
                "fp16",
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["schema_version"] >= 1
    assert [r["seq"] for r in out["rows"]] == [1024 * 2**i for i in range(7)]
    for r in out["rows"]:
        for key in (
            "standard_time_s",
            "fast_time_s",
            "speedup",
            "standard_memory_bytes",
            "fast_memory_bytes",
            "standard_bound",
            "fast_bound",
            "standard_fits",
        ):
            assert key in r
        assert r["speedup"] == pytest.approx(r["standard_time_s"] / r["fast_time_s"])
    assert out["rows"][0]["standard_fits"] and not out["rows"][-1]["standard_fits"]


def test_cli_table_plot_and_csv(tmp_path, capsys):
    plot, csv = tmp_path / "att.png", tmp_path / "att.csv"
    assert main(["attention", "--seq", "1024,32768", "--plot", str(plot), "--csv", str(csv)]) == 0
    text = capsys.readouterr().out
    assert "speedup" in text and "(OOM)" in text
    assert plot.stat().st_size > 1000
    assert csv.read_text().splitlines()[0].startswith("seq,")


@pytest.mark.parametrize(
    "argv",
    [
        ["attention", "--seq", "0"],
        ["attention", "--seq", "1024,..."],
        ["attention", "--heads", "0"],
        ["attention", "--device", "no-such-npu"],
        ["attention", "--dtype", "fp7"],
        ["attention", "--dtype", "int4"],
        ["attention", "--outer-block", "100"],
        ["attention", "--sync-us", "-1"],
    ],
)
def test_cli_bad_input_exits_2(argv, capsys):
    assert main(argv) == 2
    assert "error" in capsys.readouterr().err


def test_tiling_allreduce_graph_mirrors_the_kernel():
    from xpusim.sim.ir import Collective

    graph = describe_tp_attention_tiling_allreduce(1, 32, 1000, 128, 8, 3, True, "fp16")
    colls = [t.work for t in graph.tasks if isinstance(t.work, Collective)]
    # 3 blocks of 334, 334, 332 queries; each all-reduces (1, rows, hidden) fp16.
    assert [c.bytes for c in colls] == [334 * 4096 * 2, 334 * 4096 * 2, 332 * 4096 * 2]
    assert [c.tag for c in colls] == [0, 1, 2] and colls[0].group == tuple(range(8))
    # Causal attention FLOPs over the blocks add up to the whole causal prefill on 4 heads.
    attn = sum(op.flops for op in graph.ops() if op.name.endswith(".attn"))
    assert attn == pytest.approx(2 * 2 * 4 * 128 * 1000 * 1001 / 2)


def test_tiling_allreduce_overlap_hides_communication():
    system = load_system("atlas-800t-a2")
    one = tiling_allreduce_cost(system, 1, 32, 32768, 128, 8, 1, True, "fp16")
    tiled = tiling_allreduce_cost(system, 1, 32, 32768, 128, 8, 8, True, "fp16")
    # One block: nothing overlaps, time = compute + comm.
    assert one["tiled_time_s"] == pytest.approx(one["compute_s"] + one["comm_s"])
    # Eight blocks: below the serial time, at least max(compute, comm), and the exposed
    # communication is about one block's all-reduce (the last one).
    assert max(tiled["compute_s"], tiled["comm_s"]) <= tiled["tiled_time_s"] < one["tiled_time_s"]
    assert tiled["exposed_comm_s"] < 1.5 * tiled["comm_s"] / 8
    assert tiled["blocks_no_overlap_time_s"] > tiled["tiled_time_s"]


def test_cli_tp_section(capsys):
    assert main(["attention", "--seq", "8192", "--tp", "8", "--blocks", "1,4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["blocks"] for r in out["tiling_allreduce"]] == [1, 4]
    assert main(["attention", "--seq", "8192", "--tp", "3"]) == 2
