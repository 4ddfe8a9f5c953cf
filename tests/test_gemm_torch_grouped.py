"""PyTorch's CUTLASS sm90 grouped GEMM (``--impl torch-grouped-sm90``, sim/cost/gemm_torch.py):
tile and cluster from GroupMM.cu / ScaledGroupMM.cu, each group's M-blocks rounded up to the
cluster (PersistentTileSchedulerSm90Group), a persistent grid of get_max_cta_occupancy CTAs.
Hand-computed values; the group sizes are pytorch/ao PR #2490's printed offsets (G35 rows)."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from xpusim.hwprofiles import load_device
from xpusim.sim import ops
from xpusim.sim.api.op import op
from xpusim.sim.cli.main import main
from xpusim.sim.cost import RooflineModel
from xpusim.sim.cost.gemm_torch import (
    GroupedConfig,
    grouped_config,
    grouped_launch,
    grouped_work,
    max_cta_occupancy,
)
from xpusim.sim.errors import InputError
from xpusim.sim.ir import GemmShape

IMPL = "torch-grouped-sm90"
# pytorch/ao #2490, Llama4 17bx16e: offs 272, 832, ..., 8192 (up) and 464, 1008, ..., 8192 (down).
UP = (272, 560, 912, 544, 480, 288, 1104, 192, 192, 256, 256, 304, 1072, 1328, 112, 320)
DOWN = (464, 544, 656, 944, 304, 384, 288, 384, 992, 64, 208, 720, 1488, 320, 224, 208)
H100 = load_device("h100-sxm5-80gb")


def grouped(rows, n, k):
    return GemmShape(sum(rows) / len(rows), n, k, len(rows), impl=IMPL, group_rows=tuple(rows))


def test_offsets_are_the_printed_ones():
    """Cumulative sums of the group sizes are the PR's printed offs tensors."""
    up = [sum(UP[: i + 1]) for i in range(16)]
    down = [sum(DOWN[: i + 1]) for i in range(16)]
    assert up == [272, 832, 1744, 2288, 2768, 3056, 4160, 4352, 4544, 4800, 5056, 5360,
                  6432, 7760, 7872, 8192]
    assert down == [464, 1008, 1664, 2608, 2912, 3296, 3584, 3968, 4960, 5024, 5232, 5952,
                    7440, 7760, 7984, 8192]


@pytest.mark.parametrize(
    ("dtype", "mnk", "want"),
    [
        ("bf16", (512, 8192, 5120), GroupedConfig(128, 256, 64, 2, 1, False)),
        ("bf16", (128, 8192, 5120), GroupedConfig(64, 128, 128, 2, 1, True)),  # M <= 128
        ("bf16", (4096, 128, 5120), GroupedConfig(64, 128, 128, 2, 1, True)),  # N <= 128
        ("fp8", (512, 8192, 5120), GroupedConfig(128, 128, 128, 2, 2, False)),  # K, N >= 2048
        ("fp8", (2048, 1024, 2048), GroupedConfig(128, 128, 128, 2, 2, False)),  # M, K >= 2048
        ("fp8", (512, 1024, 4096), GroupedConfig(128, 256, 64, 2, 2, False)),  # not large
        ("fp8", (64, 8192, 5120), GroupedConfig(64, 128, 128, 2, 2, True)),
    ],
)
def test_dispatch(dtype, mnk, want):
    assert grouped_config(dtype, *mnk) == want


@pytest.mark.parametrize(
    ("cluster", "sms", "ctas"),
    # 132 = 7 x 18 + 6: 2-CTA clusters fill all; 4-CTA clusters 7 x 16 + 4 = 116.
    [(1, 132, 132), (2, 132, 132), (4, 132, 116), (4, 144, 128), (4, 16, 16), (2, 10, 10)],
)
def test_max_cta_occupancy(cluster, sms, ctas):
    assert max_cta_occupancy(cluster, sms) == ctas


def test_block_counts_of_the_printed_groups():
    """BF16 up: sum round_up(ceil(m_g / 128), 2) = 82 M-blocks (72 before the cluster
    rounding) x 8192 / 256 = 32 N-blocks = 2624 tiles, ceil(2624 / 132) = 20 rounds; 16 equal
    groups of 512: 64 x 32 = 2048 tiles, 16 rounds. Down: 78 x 5120 / 256 = 20 -> 1560 tiles,
    12 rounds. FP8 up: 128 x 128 tiles, 2 x 2 cluster: 82 x 64 = 5248 tiles on 116 CTAs, 46."""
    up = grouped_launch(grouped(UP, 8192, 5120), "bf16", 132)
    assert (up.m_blocks, up.n_blocks, up.tiles, up.ctas, up.waves) == (82, 32, 2624, 132, 20)
    equal = grouped_launch(GemmShape(512, 8192, 5120, 16, impl=IMPL), "bf16", 132)
    assert (equal.m_blocks, equal.tiles, equal.waves) == (64, 2048, 16)
    down = grouped_launch(grouped(DOWN, 5120, 8192), "bf16", 132)
    assert (down.m_blocks, down.n_blocks, down.tiles, down.waves) == (78, 20, 1560, 12)
    fp8 = grouped_launch(grouped(UP, 8192, 5120), "fp8", 132)
    assert (fp8.m_blocks, fp8.n_blocks, fp8.tiles, fp8.ctas, fp8.waves) == (82, 64, 5248, 116, 46)


def test_work_hand_computed():
    """BF16 up on H100 (132 SMs): 20 rounds x 132 SMs x 5120 / 64 = 80 K blocks of
    2 x 128 x 256 x 64 = 4,194,304 FLOPs. A feed cost of 300 FLOPs per element over
    (128 + 256 / 2) x 64 = 16,384 loaded elements (4,915,200) sets the cost instead."""
    shape = grouped(UP, 8192, 5120)
    slots = 20 * 132 * 80
    assert grouped_work(shape, H100, "bf16", 0.0) == (slots * 4194304, slots * 4194304)
    assert grouped_work(shape, H100, "bf16", 300.0) == (slots * 300 * 16384, slots * 4194304)


def test_equal_groups_two_ways_and_the_skew():
    """Sixteen equal groups priced from --group-rows or from --m/--batch are one price; the
    printed unequal groups take 20 / 16 = 1.25x the compute of equal ones."""
    model = RooflineModel(H100)
    by_rows = model.time(ops.gemm("g", 512, 8192, 5120, "bf16", 16, impl=IMPL,
                                  group_rows=(512,) * 16))
    by_batch = model.time(ops.gemm("g", 512, 8192, 5120, "bf16", 16, impl=IMPL))
    skewed = model.time(ops.gemm("g", 512, 8192, 5120, "bf16", 16, impl=IMPL, group_rows=UP))
    assert by_rows.time_s == by_batch.time_s
    assert by_rows.details["executed_flops"] == 16 * 132 * 80 * 4194304
    assert skewed.details["executed_flops"] == 20 * 132 * 80 * 4194304
    assert skewed.compute_s > 1.2 * by_rows.compute_s


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(st.integers(0, 3000), min_size=1, max_size=40),
    extra=st.integers(1, 2000),
    pick=st.integers(0, 39),
    dtype=st.sampled_from(["bf16", "fp8"]),
)
def test_more_rows_never_lower_time(rows, extra, pick, dtype):
    """Adding rows to one group never makes the kernel faster while PyTorch's dispatch keeps
    one config (mean group rows above 128, N and K >= 2048: BF16 128 x 256, FP8 128 x 128).
    At the dispatch's own thresholds the tile changes, which may cost less (module docs)."""
    rows = [r + 129 for r in rows]  # mean > 128: the large config before and after
    more = list(rows)
    more[pick % len(rows)] += extra
    model = RooflineModel(H100)

    def t(rs):
        return model.time_s(ops.gemm("g", sum(rs) / len(rs), 4096, 2048, dtype, len(rs),
                                     impl=IMPL, group_rows=tuple(rs)))

    assert t(more) >= t(rows)


def run_json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_cli_group_rows(capsys):
    """`op gemm --group-rows ... --impl torch-grouped-sm90`: batch = 16 groups, m their mean,
    the rows in the JSON shape; FLOPs 2 x 8192 x 8192 x 5120."""
    argv = ["op", "gemm", "--group-rows", ",".join(map(str, UP)), "--n", "8192", "--k", "5120",
            "--impl", IMPL, "--timing", "kernel", "--json"]
    doc = run_json(capsys, argv)
    assert doc["shape"]["group_rows"] == list(UP)
    assert doc["shape"]["batch"] == 16 and doc["shape"]["m"] == 512
    assert doc["flops"] == 2 * 8192 * 8192 * 5120
    assert doc["executed_flops"] == 20 * 132 * 80 * 4194304
    same = op(kind="gemm", group_rows=UP, n=8192, k=5120, impl=IMPL, timing="kernel")
    assert same.time_s == doc["time_s"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--group-rows", "272,-5"], "each group has >= 0 rows"),
        (["--group-rows", ","], "--group-rows: empty list"),
        (["--group-rows", "1.5,2"], "expected comma-separated integers"),
        (["--group-rows", "0,0"], "the groups together 1.."),
        (["--group-rows", "12,12", "--batch", "3"], "--batch 3 but --group-rows lists 2"),
        (["--group-rows", "12,12", "--m", "5"], "not both"),
        (["--group-rows", "12,12", "--dtype", "fp16"], "give --dtype bf16 or fp8"),
        (["--group-rows", ",".join(["1"] * 1024)], "at most 1023"),
        (["--group-rows", "12,12", "--device", "a100-sxm4-80gb"], "compute capability 8.0"),
    ],
)
def test_cli_bad_group_rows(capsys, extra, message):
    argv = ["op", "gemm", "--n", "8192", "--k", "5120", "--impl", IMPL, *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_group_rows_need_the_grouped_kernel_and_m_is_needed():
    with pytest.raises(InputError, match="--group-rows needs a kernel"):
        op(kind="gemm", group_rows="12,12", n=64, k=64)
    with pytest.raises(InputError, match="op gemm needs --m"):
        op(kind="gemm", n=64, k=64)
    with pytest.raises(InputError, match="expected integers"):
        op(kind="gemm", group_rows=(12, "a"), n=64, k=64, impl=IMPL)
    with pytest.raises(InputError, match="expected comma-separated integers"):
        op(kind="gemm", group_rows=12, n=64, k=64, impl=IMPL)
