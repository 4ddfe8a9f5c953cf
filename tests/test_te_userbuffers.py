"""TransformerEngine 1.x userbuffers TP overlap (``--overlap-tp`` on the Megatron-Core /
NeMo stacks): the FP8 cast runs on the shard before the ring-exchange gather, so the gather
still overlaps its GEMM, and a column-parallel layer's backward re-gather / reduce-scatter
run as bulk overlaps with the dgrad / wgrad GEMMs. Hand-computed chunk bytes, GEMM pieces
and the wait/join wiring."""

from __future__ import annotations

from xpusim.sim import ops
from xpusim.sim.ir import CollectiveKind, GemmShape, Op, Role, Weight
from xpusim.sim.parallel import ParallelPlan
from xpusim.sim.training.backward import backward_items
from xpusim.sim.training.items import Comm, quantize_op
from xpusim.sim.training.units import tp_overlap

T, H, F = 8192.0, 1024.0, 4096.0  # gathered tokens, hidden, TP-local output features
GATHER = T * H * 2.0  # the bf16 activation the sequence-parallel all-gather delivers
AG, RS = CollectiveKind.ALL_GATHER, CollectiveKind.REDUCE_SCATTER


def _plan(framework: str = "eager") -> ParallelPlan:
    return ParallelPlan(tp=4, sequence_parallel=True, overlap_tp=True, dtype="fp8",
                        framework=framework)


def _column_linear() -> list:
    """norm -> SP all-gather -> FP8 cast -> column-parallel GEMM (qkv / fc1 forward)."""
    norm = Op("attn_norm", ops.OpKind.NORM, T * H, {"hbm": T * H * 4}, "bf16")
    return [
        norm,
        Comm("attn_sp_gather", AG, GATHER, "tp"),
        quantize_op("qkv_proj", T * H, "fp8"),
        ops.gemm("qkv_proj", T, F, H, "fp8", role=Role("attn", weight=Weight.DENSE)),
    ]


def test_cast_runs_before_the_ring_exchange_gather():
    out = tp_overlap(_column_linear(), _plan(), [0])
    names = [it.name if isinstance(it, Op) else it[0] for it in out]
    assert names == ["attn_norm", "qkv_proj_quant"] + ["async"] * 4 + ["wait"] * 4
    chunks = [it[1] for it in out[2:6]]
    assert [c.nbytes for c in chunks] == [GATHER / 4] * 4  # 16 MiB in four 4 MiB pieces
    assert [it[2] for it in out[2:6]] == [1, 2, 3, 4]
    for j, (tag, gemm, key) in enumerate(out[6:]):
        assert tag == "wait" and key == j + 1
        assert isinstance(gemm.shape, GemmShape) and gemm.shape.m == T / 4  # 2,048 tokens


def test_other_stacks_keep_the_plain_chunking():
    items = _column_linear()
    out = tp_overlap(items, _plan("torchtitan-eager"), [0])
    assert out == items  # a cast between gather and GEMM: not chunked there


def test_backward_bulk_overlaps_regather_with_dgrad_and_rs_with_wgrad():
    back = backward_items(_column_linear()[1:], True, "fp32")
    kinds = [(it.name, it.kind) if isinstance(it, Comm) else it.name for it in back]
    assert kinds == ["qkv_proj_dgrad_quant", "qkv_proj_dgrad", "qkv_proj_wgrad",
                     ("attn_sp_gather_bwd", RS), ("attn_sp_gather_regather", AG)]
    out = tp_overlap(back, _plan(), [0])
    assert out[0][0] == "async" and out[0][1].kind == AG and out[0][2] == 1
    assert out[0][1].nbytes == GATHER  # one bulk gather, not chunked
    assert [it.name for it in out[1:3]] == ["qkv_proj_dgrad_quant", "qkv_proj_dgrad"]
    assert out[3][0] == "async" and out[3][1].kind == RS and out[3][2] == 2
    assert out[3][1].nbytes == GATHER
    tag, wgrad, key = out[4]
    assert (tag, wgrad.name, key) == ("wait", "qkv_proj_wgrad", 1)  # needs the gathered input
    assert isinstance(wgrad.shape, GemmShape) and wgrad.shape.m == H  # whole, not split
    assert wgrad.shape.accumulate == "fp32"
    assert out[5] == ("join", 2)  # the next op waits for the data gradient's reduce-scatter
    assert len(out) == 6


def test_row_parallel_backward_gathers_fp8_output_gradient_before_dgrad():
    fwd = [ops.gemm("o_proj", T, H, F, "fp8", role=Role("attn", weight=Weight.DENSE)),
           Comm("attn_tp_reduce", RS, GATHER, "tp")]
    back = backward_items(fwd, True, "fp32")
    out = tp_overlap(back, _plan(), [0])
    assert out[0].name == "o_proj_dgrad_quant"  # cast on the shard, then the gather
    assert [it[0] for it in out[1:5]] == ["async"] * 4
    assert [it[1].nbytes for it in out[1:5]] == [GATHER / 4] * 4
    assert [(it[0], it[1].name, it[2]) for it in out[5:9]] == [
        ("wait", "o_proj_dgrad", j) for j in (1, 2, 3, 4)]
    assert out[5][1].shape.m == T / 4
    assert out[9].name == "o_proj_wgrad"


def _plain_plan(framework: str = "eager", sp: bool = True) -> ParallelPlan:
    return ParallelPlan(tp=4, sequence_parallel=sp, overlap_tp=False, dtype="fp8",
                        framework=framework)


def test_without_userbuffers_the_backward_still_overlaps_through_async_nccl():
    """TE 1.x / Megatron-Core async gather + "Overlap dgrad-RS/AR with wgrad" without
    --overlap-tp: the same wiring as the bulk overlap; the forward stays serial."""
    back = backward_items(_column_linear()[1:], True, "fp32")
    out = tp_overlap(back, _plain_plan(), [0])
    assert out[0][0] == "async" and out[0][1].kind == AG and out[0][1].nbytes == GATHER
    assert [it.name for it in out[1:3]] == ["qkv_proj_dgrad_quant", "qkv_proj_dgrad"]
    assert out[3][0] == "async" and out[3][1].kind == RS
    assert (out[4][0], out[4][1].name, out[4][2]) == ("wait", "qkv_proj_wgrad", 1)
    assert out[5] == ("join", 2) and len(out) == 6
    fwd = _column_linear()
    assert tp_overlap(fwd, _plain_plan(), [0]) == fwd  # forward gather: not overlapped


def test_async_backward_needs_sequence_parallelism_and_a_megatron_stack():
    back = backward_items(_column_linear()[1:], True, "fp32")
    assert tp_overlap(back, _plain_plan("torchtitan-eager"), [0]) == back
    assert tp_overlap(back, _plain_plan(sp=False), [0]) == back
