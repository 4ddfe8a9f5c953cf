"""Per-layer activation memory against Korthikanti et al. 2022 (arXiv 2205.05198, Table 2).

The simulator sums the tensors each op keeps for its backward (``layers.activation_bytes``);
for a GPT layer with dropout and unfused attention that sum must land within 10% of the
paper's closed forms for every recompute mode, with and without TP / sequence parallelism.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from xpusim.sim.ir import Op, OpKind
from xpusim.sim.models.hf_config import load_model
from xpusim.sim.parallel import ParallelPlan, validate_plan
from xpusim.sim.training import layers as L
from xpusim.sim.training.memory import megatron_activation_bytes

SEQ = 2048


def _unfused(items: list, ctx: L.SlotContext, impl: str) -> list:
    """The same layer with an unfused attention: Megatron-LM's (fused_softmax) or eager."""
    out = []
    for it in items:
        if isinstance(it, Op) and it.kind == OpKind.ATTENTION:
            op = replace(it, shape=replace(it.shape, impl=impl))
            out += L.training_items([op], ctx)
        else:
            out.append(it)
    return out


@pytest.mark.parametrize("impl", ["fused_softmax", "standard"])
@pytest.mark.parametrize("model", ["gpt3-175b", "gpt3-1.7b"])
@pytest.mark.parametrize("tp,sp", [(1, False), (8, False), (8, True), (4, True)])
@pytest.mark.parametrize("mbs", [1, 4])
@pytest.mark.parametrize(
    "policy,modules", [("none", ()), ("selective", ("core_attn",)), ("full", ())]
)
def test_activation_bytes_match_korthikanti(impl, model, tp, sp, mbs, policy, modules):
    spec = load_model(model)
    if spec.heads % tp:
        pytest.skip("tp does not divide the heads")
    plan = ParallelPlan(
        tp=tp, pp=1, dp=1, mbs=mbs, gbs=mbs, seq=SEQ, dtype="fp16",
        sequence_parallel=sp, dropout=0.1, recompute=policy,
        recompute_modules=modules or ("core_attn",),
    )
    plan = validate_plan(spec, plan, tp)
    ctx = L.SlotContext(spec, plan, float(mbs * SEQ), {}, {}, False)
    items = _unfused(L.layer_items(ctx, 0), ctx, impl)
    input_bytes = mbs * SEQ * spec.hidden * 2 / (tp if sp else 1)
    got = L.activation_bytes(items, policy, plan.recompute_modules, input_bytes)
    want = megatron_activation_bytes(SEQ, mbs, spec.hidden, spec.heads, tp, sp, policy)
    assert got == pytest.approx(want, rel=0.10)


def test_formula_hand_values():
    # GPT-3 175B, s=2048, b=1, t=8 with SP: 34/8 + 5*96*2048/(12288*8) = 4.25 + 10 sbh.
    sbh = 2048 * 12288
    assert megatron_activation_bytes(2048, 1, 12288, 96, 8, True) == pytest.approx(14.25 * sbh)
    assert megatron_activation_bytes(2048, 1, 12288, 96, 8, True, "selective") == 4.25 * sbh
    assert megatron_activation_bytes(2048, 1, 12288, 96, 1, False, "full") == 2 * sbh
    assert megatron_activation_bytes(2048, 1, 12288, 96, 8, False) == pytest.approx(23 * sbh)


def test_flash_attention_keeps_no_scores_and_selective_equals_none():
    spec = load_model("gpt3-175b")
    plan = validate_plan(
        spec,
        ParallelPlan(tp=8, pp=1, dp=1, mbs=1, gbs=1, seq=SEQ, dtype="fp16",
                     sequence_parallel=True, dropout=0.1),
        8,
    )
    ctx = L.SlotContext(spec, plan, float(SEQ), {}, {}, False)
    items = L.layer_items(ctx, 0)  # the fused kernel: no S x S tensor is kept
    none = L.activation_bytes(items, "none", (), 0.0)
    sel = L.activation_bytes(items, "selective", ("core_attn",), 0.0)
    assert none == sel == pytest.approx(34 / 8 * SEQ * 12288)
