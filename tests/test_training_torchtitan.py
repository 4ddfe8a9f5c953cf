"""torchtitan's eager stack (framework 'torchtitan-eager'): the unfused elementwise
passes of its Llama, FSDP2's all-gather copy-out, and op-level selective activation
checkpointing. Hand-computed bytes and FLOPs on Llama 3 8B (hidden 4096, 32 heads,
8 KV heads of 128, FFN 14336) at 10 tokens."""

from __future__ import annotations

import pytest
from xpusim.sim.ir import Op, OpKind
from xpusim.sim.models.hf_config import load_model
from xpusim.sim.parallel import ParallelPlan, validate_plan
from xpusim.sim.training import eager
from xpusim.sim.training import layers as L
from xpusim.sim.training.chunks import Chunk
from xpusim.sim.training.units import _copy_out, recompute_for_slot

T = 10.0


def _ctx(framework: str = "torchtitan-eager", recompute: str = "selective") -> L.SlotContext:
    spec = load_model("llama-3-8b")
    plan = validate_plan(spec, ParallelPlan(framework=framework, recompute=recompute, seq=10), 1)
    return L.SlotContext(spec, plan, T, {}, {}, False)


def _bytes(ops: list[Op]) -> dict[str, float]:
    return {o.name: o.main_bytes for o in ops}


def test_norm_passes_32_bytes_per_element_above_the_fused_norm():
    # 36 B of the eager RMSNorm (cast 6, pow 8, mean 4, mul 8, type_as 6, weight 4) - 4 B
    assert _bytes(eager.norm_passes("attn_norm", T, _ctx())) == {"attn_norm_eager": T * 4096 * 32}


def test_attention_passes_rotary_repeat_kv_and_transpose():
    got = _bytes(eager.attention_passes(_ctx()))
    assert got == pytest.approx({
        "rotary_eager": T * (4096 + 1024) * 20,  # float cast 6 + complex mul 8 + type_as 6
        "repeat_kv_eager": 2 * T * 2 * (4096 + 1024),  # K and V: read 1024, write 4096 wide
        "attn_out_transpose_eager": T * 4096 * 4,
    })


def test_ffn_passes_a_separate_silu():
    assert _bytes(eager.ffn_passes(_ctx(), 0)) == {"silu_eager": T * 14336 * 4}


def test_layer_items_carry_the_passes_only_with_the_framework():
    names = {it.name for it in L.layer_items(_ctx(), 0) if isinstance(it, Op)}
    plain = {it.name for it in L.layer_items(_ctx("eager"), 0) if isinstance(it, Op)}
    extra = {"attn_norm_eager", "ffn_norm_eager", "rotary_eager", "repeat_kv_eager",
             "attn_out_transpose_eager", "silu_eager"}
    assert names - plain == extra and not plain & extra


def test_op_sac_recomputes_wk_wo_w3_and_every_elementwise_op():
    ctx = _ctx()
    items = L.layer_items(ctx, 0)
    redo = recompute_for_slot(items, ctx.plan, "L0")
    gemms = {o.name: o.flops for o in redo if o.kind == OpKind.GEMM}
    # mm order wq wk wv wo w1 w3 w2: the 2nd, 4th and 6th are recomputed
    assert gemms == pytest.approx({
        "qkv_proj_sac": 2 * T * 4096 * 1024,
        "o_proj_sac": 2 * T * 4096 * 4096,
        "mlp_up_sac": 2 * T * 4096 * 14336,
    })
    assert not any(o.kind == OpKind.ATTENTION for o in redo)  # SDPA's output is saved
    others = [it for it in items if isinstance(it, Op) and it.kind not in
              (OpKind.GEMM, OpKind.ATTENTION)]
    assert [o for o in redo if o.kind != OpKind.GEMM] == others


def test_other_frameworks_keep_the_module_recompute():
    ctx = _ctx("eager")
    items = L.layer_items(ctx, 0)
    assert recompute_for_slot(items, ctx.plan, "L0") == L.recompute_items(items, "selective",
                                                             ctx.plan.recompute_modules)


def test_fsdp2_copy_out_reads_and_writes_the_unit_once_after_its_gather():
    chunk = Chunk(0, [("l0", [])], 100.0, 20.0, 0.0, 0.0, [(100.0, 20.0)])
    plan = _ctx().plan
    items, left = _copy_out(chunk, plan, 0, (7,))
    assert left == () and items[0][0] == "wait" and items[0][2] == (7,)
    assert items[0][1].main_bytes == 2 * 120 * 2  # read + write of 120 bf16 parameters
    assert _copy_out(chunk, _ctx("eager").plan, 0, (7,)) == ([], (7,))
