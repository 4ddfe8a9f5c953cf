"""Sequence-parallel collectives under a TransformerEngine per-tensor FP8 recipe
(sim.training.lowprec ``sp_fp8_collectives``, ``amax_reduce``): the forward input gather of
qkv / dense fc1 and its backward re-gather move 1 B per element, the row-parallel output
gradient gather (o_proj / fc2 backward) too, the dgrad reduce-scatters stay bf16; current
scaling adds a 4-byte MAX all-reduce over TP before each FP8 gather it quantizes for.
Hand-computed bytes on llama-3-8b (hidden 4096), TP4 + SP, MBS 1, seq 4096."""

from __future__ import annotations

import pytest
from xpusim.sim.ir import CollectiveKind
from xpusim.sim.models.hf_config import load_model
from xpusim.sim.parallel import ParallelPlan
from xpusim.sim.training.backward import backward_items
from xpusim.sim.training.items import Comm, SlotContext
from xpusim.sim.training.layers import layer_items

H, TOKENS = 4096.0, 4096.0  # llama-3-8b hidden; mbs 1 x seq 4096 (the gathered tokens)
BF16 = TOKENS * H * 2.0  # 32 MiB: the gathered activation in bf16
FP8 = TOKENS * H * 1.0  # 16 MiB: the same in per-tensor FP8 (scale not gathered)
AG, RS, AR = CollectiveKind.ALL_GATHER, CollectiveKind.REDUCE_SCATTER, CollectiveKind.ALL_REDUCE


def _ctx(dtype: str = "fp8", scaling: str = "delayed", framework: str = "eager",
         sp: bool = True) -> SlotContext:
    plan = ParallelPlan(tp=4, sequence_parallel=sp, dtype=dtype, fp8_scaling=scaling,
                        framework=framework, mbs=1, seq=4096)
    return SlotContext(load_model("llama-3-8b"), plan, TOKENS, {}, {}, False)


def _comms(items: list) -> list[tuple[str, CollectiveKind, float]]:
    return [(c.name, c.kind, c.nbytes) for c in items if isinstance(c, Comm)]


def _step(ctx: SlotContext) -> tuple[list, list]:
    fwd = layer_items(ctx, 0)
    return _comms(fwd), _comms(backward_items(fwd, ctx.plan.sequence_parallel))


def test_delayed_fp8_gathers_one_byte_per_element() -> None:
    fwd, bwd = _step(_ctx())
    assert fwd == [("attn_sp_gather", AG, FP8), ("attn_tp_reduce", RS, BF16),
                   ("ffn_sp_gather", AG, FP8), ("ffn_tp_reduce", RS, BF16)]
    assert bwd == [
        ("ffn_tp_reduce_bwd", AG, FP8),       # fc2 output gradient: cast, then FP8 gather
        ("ffn_sp_gather_bwd", RS, BF16),      # fc1 dgrad reduce-scatter stays bf16
        ("ffn_sp_gather_regather", AG, FP8),  # the saved FP8 input shard, for fc1 wgrad
        ("attn_tp_reduce_bwd", AG, FP8),
        ("attn_sp_gather_bwd", RS, BF16),
        ("attn_sp_gather_regather", AG, FP8),
    ]


def test_current_scaling_adds_a_four_byte_amax_all_reduce_per_fp8_gather() -> None:
    fwd, bwd = _step(_ctx(scaling="current"))
    assert fwd == [("attn_sp_gather_amax_reduce", AR, 4.0), ("attn_sp_gather", AG, FP8),
                   ("attn_tp_reduce", RS, BF16),
                   ("ffn_sp_gather_amax_reduce", AR, 4.0), ("ffn_sp_gather", AG, FP8),
                   ("ffn_tp_reduce", RS, BF16)]
    # Backward: one before each output-gradient gather; the forward's has no backward,
    # and the re-gather reuses the forward's scale (no all-reduce).
    assert bwd == [
        ("ffn_tp_reduce_bwd_amax_reduce", AR, 4.0), ("ffn_tp_reduce_bwd", AG, FP8),
        ("ffn_sp_gather_bwd", RS, BF16), ("ffn_sp_gather_regather", AG, FP8),
        ("attn_tp_reduce_bwd_amax_reduce", AR, 4.0), ("attn_tp_reduce_bwd", AG, FP8),
        ("attn_sp_gather_bwd", RS, BF16), ("attn_sp_gather_regather", AG, FP8),
    ]


def test_mxfp8_gathers_its_input_in_mxfp8_and_its_gradient_in_bf16() -> None:
    """TE 2.x: the forward gathers the rowwise MXFP8 shard, the backward re-gathers the
    saved columnwise one (1 B + one E8M0 byte per 32 elements); the output-gradient gather
    and the dgrad reduce-scatters stay bf16; no amax all-reduce (block scales)."""
    mx = TOKENS * H * (1.0 + 1.0 / 32.0)  # 16.5 MiB
    fwd, bwd = _step(_ctx("mxfp8"))
    assert fwd == [("attn_sp_gather", AG, mx), ("attn_tp_reduce", RS, BF16),
                   ("ffn_sp_gather", AG, mx), ("ffn_tp_reduce", RS, BF16)]
    assert bwd == [
        ("ffn_tp_reduce_bwd", AG, BF16),
        ("ffn_sp_gather_bwd", RS, BF16),
        ("ffn_sp_gather_regather", AG, mx),
        ("attn_tp_reduce_bwd", AG, BF16),
        ("attn_sp_gather_bwd", RS, BF16),
        ("attn_sp_gather_regather", AG, mx),
    ]


@pytest.mark.parametrize(("dtype", "framework"), [
    ("bf16", "eager"),              # no FP8 recipe
    ("mxfp8", "torchtitan-eager"),  # not TransformerEngine linears
    ("fp8", "torchtitan-eager"),
])
def test_bf16_gathers_elsewhere(dtype: str, framework: str) -> None:
    fwd, bwd = _step(_ctx(dtype, "current" if dtype == "fp8" else "delayed", framework))
    assert {n for _, _, n in fwd + bwd} == {BF16}
    assert not any(k == AR for _, k, _ in fwd + bwd)


def test_no_sequence_parallelism_no_change() -> None:
    fwd, bwd = _step(_ctx(scaling="current", sp=False))
    assert fwd == [("attn_tp_reduce", AR, BF16), ("ffn_tp_reduce", AR, BF16)]
    assert bwd == [("ffn_tp_reduce_bwd", AR, BF16), ("attn_tp_reduce_bwd", AR, BF16)]
