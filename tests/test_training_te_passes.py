"""Per-layer memory passes of Megatron-Core + TransformerEngine training, by hand:
the rotary embedding on Q and K (fused RoPE: read 2 B + write 2 B per element, the same
in backward) and the straight-through backward of the FP8 casts (no op). Llama 2 7B
(32 heads of 128, MHA), Llama 3 8B (32 query heads, 8 KV heads of 128), DeepSeek-V3
(MLA, 128 heads, 64-wide rope part), GPT-3 (learned positions: no rotary)."""

from __future__ import annotations

import pytest
from xpusim.sim.ir import Op, OpKind
from xpusim.sim.models.hf_config import load_model
from xpusim.sim.parallel import ParallelPlan, validate_plan
from xpusim.sim.training import layers as L

T = 16.0  # tokens of the micro-batch: mbs 1 x seq 16 (the GEMMs read plan.seq)


def _ctx(model: str, tp: int = 1, cp: int = 1, **kw) -> L.SlotContext:
    spec = load_model(model)
    plan = validate_plan(spec, ParallelPlan(tp=tp, cp=cp, seq=16, **kw), tp * cp)
    return L.SlotContext(spec, plan, T / cp, {}, {}, False)


def _ops(items: list) -> list[Op]:
    return [it for it in items if isinstance(it, Op)]


def _rotary(ctx: L.SlotContext) -> list[Op]:
    return [o for o in _ops(L.layer_items(ctx, 0)) if o.name == L.ROTARY]


def test_rotary_width_by_hand():
    assert L.rotary_width(load_model("llama-2-7b"), 1) == (32 + 32) * 128
    assert L.rotary_width(load_model("llama-3-8b"), 2) == (32 + 8) * 128 / 2
    # MLA: 128/4 query heads x 64 plus the one shared 64-wide key rope head
    assert L.rotary_width(load_model("deepseek-v3"), 4) == (128 / 4 + 1) * 64
    assert L.rotary_width(load_model("gpt3-1.7b"), 1) == 0


@pytest.mark.parametrize("model,tp,width", [
    ("llama-2-7b", 1, 8192),
    ("llama-3-8b", 1, 5120),
    ("llama-3-8b", 2, 2560),
])
def test_rotary_pass_bytes_and_backward(model: str, tp: int, width: int):
    ctx = _ctx(model, tp=tp, sequence_parallel=tp > 1)
    (rope,) = _rotary(ctx)
    assert rope.kind == OpKind.ELEMENTWISE
    assert rope.main_bytes == T * width * 4  # read 2 B + write 2 B per element
    (bwd,) = L.backward_op(rope)
    assert bwd.name == "rotary_bwd" and bwd.main_bytes == rope.main_bytes  # dy in, dx out
    assert not rope.role.saves  # its input is the attention's saved Q/K, counted there


def test_rotary_sits_before_the_attention_core_and_cp_gather():
    items = L.layer_items(_ctx("llama-3-8b", cp=2), 0)
    names = [it.name for it in items]
    i = names.index(L.ROTARY)
    assert names[i + 1] == "cp_kv_gather" and names[i + 2] == "attention"


def test_no_rotary_with_learned_positions_or_eager_framework():
    assert _rotary(_ctx("gpt3-1.7b")) == []
    # torchtitan's eager rotary (20 B per element, eager.py) replaces the fused pass
    assert _rotary(_ctx("llama-3-8b", framework="torchtitan-eager")) == []


def test_fp8_casts_have_no_backward_op():
    ctx = _ctx("llama-2-7b", dtype="fp8")
    fwd = L.layer_items(ctx, 0)
    casts = [o for o in _ops(fwd) if o.name.endswith("_quant")]
    assert {o.name for o in casts} == {"qkv_proj_quant", "o_proj_quant", "mlp_up_quant",
                                       "mlp_down_quant"}
    assert all(L.backward_op(o) == [] for o in casts)
    bwd_names = [o.name for o in _ops(L.backward_items(fwd, False))]
    assert not [n for n in bwd_names if n.endswith("_quant_bwd")]
    # the output-gradient casts stay: one per GEMM, m x n elements into both usages
    assert sorted(n for n in bwd_names if n.endswith("_dgrad_quant")) == [
        "mlp_down_dgrad_quant", "mlp_up_dgrad_quant", "o_proj_dgrad_quant",
        "qkv_proj_dgrad_quant"]
    up = next(o for o in _ops(L.backward_items(fwd, False)) if o.name == "mlp_up_dgrad_quant")
    assert up.main_bytes == T * 2 * 11008 * 4  # dC of the gate+up GEMM: 2 x 11008 wide
