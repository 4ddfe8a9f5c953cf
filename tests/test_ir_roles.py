"""Typed op shapes and op roles (issue 12, item 6).

Memory and recompute rules read an op's role, never its name: renaming every op of a
layer changes neither its saved activations nor its parameters. The cost cache keys on
what the cost depends on (shape included, name and role excluded).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from xpusim.hwprofiles import load_device
from xpusim.sim import ops
from xpusim.sim.cost import CachedCostModel, RooflineModel
from xpusim.sim.ir import GemmShape, Op, OpKind, Role, Saved, Weight
from xpusim.sim.models.hf_config import load_model
from xpusim.sim.parallel import ParallelPlan, validate_plan
from xpusim.sim.training import layers as L


def _ctx(model: str, **plan) -> L.SlotContext:
    spec = load_model(model)
    p = validate_plan(spec, ParallelPlan(**plan), plan.get("tp", 1) * plan.get("ep", 1))
    return L.SlotContext(spec, p, float(p.mbs * p.seq / p.cp), {}, {}, False)


def _renamed(items: list) -> list:
    return [replace(it, name=f"op{i}") if isinstance(it, Op) else it
            for i, it in enumerate(items)]


@pytest.mark.parametrize("model,plan", [
    ("gpt3-1.7b", dict(tp=2, seq=2048, sequence_parallel=True, dropout=0.1, dtype="fp16")),
    ("mixtral-8x7b", dict(tp=2, ep=2, seq=2048, sequence_parallel=True, tp_extend_ep=False)),
    ("deepseek-v3", dict(tp=4, seq=4096, sequence_parallel=True, dtype="fp8")),
])
@pytest.mark.parametrize("policy,modules", [
    ("none", ()), ("selective", ("norm", "attn", "act")), ("selective", ("core_attn",)),
])
def test_renaming_ops_changes_no_memory(model, plan, policy, modules):
    ctx = _ctx(model, **plan)
    items = L.layer_items(ctx, ctx.spec.layers - 1)
    renamed = _renamed(items)
    assert L.activation_bytes(renamed, policy, modules, 0.0) == L.activation_bytes(
        items, policy, modules, 0.0)
    assert L.weight_params(renamed) == L.weight_params(items)
    kept = [getattr(it, "role", None) for it in L.recompute_items(items, policy, modules)]
    assert kept == [getattr(it, "role", None)
                    for it in L.recompute_items(renamed, policy, modules)]


def test_every_training_gemm_reads_a_weight():
    ctx = _ctx("deepseek-v3", tp=4, seq=4096, sequence_parallel=True)
    items = L.embedding_items(ctx) + L.layer_items(ctx, 5) + L.mtp_items(ctx, 0)
    gemms = [it for it in items if isinstance(it, Op) and it.kind == OpKind.GEMM]
    assert gemms and all(g.role.weight != Weight.NONE for g in gemms)
    assert all(g.role.weight_elements == g.shape.k * g.shape.n * g.shape.batch for g in gemms)


def test_a_tensor_read_by_several_ops_is_kept_once():
    shared = Saved(100.0, "norm", tensor="ffn_norm")
    a = ops.gemm("a", 10, 4, 10, "bf16", role=Role("mlp", (shared,)))
    b = ops.gemm("b", 10, 4, 10, "bf16", role=Role("router", (shared,)))
    assert L.activation_bytes([a, b], "none", (), 0.0) == 200.0  # 100 bf16 elements, once
    assert L.activation_bytes([a, b], "selective", ("norm",), 0.0) == 0.0


def test_sequence_parallel_keeps_the_local_shard():
    full = _ctx("gpt3-1.7b", tp=4, seq=2048)
    sp = _ctx("gpt3-1.7b", tp=4, seq=2048, sequence_parallel=True)
    qkv_full = next(it for it in L.layer_items(full, 0) if isinstance(it, Op)
                    and it.kind == OpKind.GEMM)
    qkv_sp = next(it for it in L.layer_items(sp, 0) if isinstance(it, Op)
                  and it.kind == OpKind.GEMM)
    assert qkv_full.role.saves[0].shard == 1 and qkv_sp.role.saves[0].shard == 4
    assert qkv_sp.role.saves[0].nbytes("bf16") * 4 == qkv_full.role.saves[0].nbytes("bf16")


def test_cache_key_ignores_name_and_role_not_shape():
    gemm = ops.gemm("x", 128, 256, 512)
    other = replace(gemm, name="y", role=Role("mlp", (Saved(1.0),), Weight.DENSE, 5.0))
    assert gemm.cache_key() == other.cache_key()
    assert isinstance(gemm.shape, GemmShape)
    reshaped = replace(gemm, shape=replace(gemm.shape, m=256, n=128))  # same FLOPs and bytes
    assert reshaped.cache_key() != gemm.cache_key()
    model = CachedCostModel(RooflineModel(load_device("h100-sxm5-80gb")))
    model.time(gemm)
    model.time(other)
    assert len(model._cache) == 1  # the renamed, re-roled op hits the cache


def test_shapes_are_typed_not_mappings():
    op = ops.fused_attention("attn", 2, 8, 128, 128, 64, kv_heads=2, v_head_dim=32)
    assert op.shape.kv_heads == 2 and op.shape.v_head_dim == 32
    with pytest.raises(AttributeError):
        op.shape.kv_head  # noqa: B018  (a misspelt field is an error, not a silent miss)
    with pytest.raises(TypeError):
        op.shape["kv_heads"]  # noqa: B018
