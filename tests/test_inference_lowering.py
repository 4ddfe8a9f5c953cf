"""Inference lowering: memory accounting, routing, step times from the engine."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from xpusim.hwprofiles import load_system
from xpusim.sim.errors import InputError, NegativeVerdict
from xpusim.sim.inference.engine_profile import NO_ENGINE, EngineProfile, load_engine
from xpusim.sim.inference.kvcache import (
    kv_bytes_per_token,
    plan_memory,
    require_fit,
    weights_per_rank,
)
from xpusim.sim.inference.lowering import StepBatch, StepSimulator, flatten, step_blocks
from xpusim.sim.inference.routing import Routing, experts_touched, moe_load
from xpusim.sim.ir import CollectiveKind, Op
from xpusim.sim.models.hf_config import load_model
from xpusim.sim.models.spec import MLASpec, ModelSpec, MoESpec
from xpusim.sim.parallel import ParallelPlan
from xpusim.sim.workloads.transformer import expected_active_experts

TINY_MOE = ModelSpec(
    "tiny-moe",
    "test",
    hidden=256,
    layers=2,
    heads=4,
    kv_heads=2,
    head_dim=64,
    ffn=512,
    vocab=1000,
    moe=MoESpec(num_experts=8, top_k=2, expert_ffn=128, shared_experts=1, shared_ffn=256),
)


@pytest.fixture(scope="module")
def a100():
    return load_system("dgx-a100")


@pytest.fixture(scope="module")
def a800():
    return load_system("hgx-a800")


def test_kv_bytes_gqa_and_mla():
    llama = load_model("llama-2-7b")  # 32 layers x 2 (K,V) x 32 heads x 128 x 2 bytes
    assert kv_bytes_per_token(llama) == 32 * 2 * 32 * 128 * 2
    assert kv_bytes_per_token(llama, tp=2) == 32 * 2 * 16 * 128 * 2
    qwen = load_model("qwen2-57b-a14b")  # 4 KV heads: TP=8 replicates, 1 head per rank
    assert kv_bytes_per_token(qwen, tp=8) == 28 * 2 * 1 * 128 * 2
    mla = replace(TINY_MOE, mla=MLASpec(None, 512, 128, 64, 128))
    # MLA caches one latent (kv_lora + rope) per token per layer, replicated over TP.
    assert kv_bytes_per_token(mla, tp=4) == 2 * (512 + 64) * 2


def test_weights_per_rank_split_experts_over_ep():
    qwen = load_model("qwen2-57b-a14b")
    one = weights_per_rank(qwen, 1, 1)
    assert one == pytest.approx(57.4e9, rel=0.01)
    # Routed experts (the bulk) split over tp*ep; the rest over tp only.
    assert weights_per_rank(qwen, 2, 1) == pytest.approx(one / 2)
    assert weights_per_rank(qwen, 1, 4) < one / 2


def test_memory_plan_and_oom_verdict():
    llama = load_model("llama-2-7b")
    plan = plan_memory(llama, 80e9, 1, 1, memory_utilization=0.9, max_batched_tokens=4096)
    assert plan.weights == pytest.approx(6.738e9 * 2, rel=0.01)
    assert plan.kv_cache == pytest.approx(72e9 - plan.weights - plan.activations)
    assert plan.kv_tokens == pytest.approx(plan.kv_cache / (32 * 2 * 32 * 128 * 2))
    big = plan_memory(load_model("qwen2-57b-a14b"), 80e9, 1, 1)
    with pytest.raises(NegativeVerdict):
        require_fit(big, "qwen on one GPU")


def test_expected_experts_closed_form_and_sampled_routing():
    # Uniform: N(t) = E (1 - (1 - k/E)^t); Qwen2 E=64, k=8 (MoESD notes: N(4) = 26.5).
    assert expected_active_experts(64, 8, 4) == pytest.approx(26.5, abs=0.05)
    qwen = load_model("qwen2-57b-a14b")
    assert experts_touched(qwen, 1) == pytest.approx(8.0)
    # Zipf routing concentrates tokens: fewer distinct experts than uniform, never > E.
    zipf = Routing("zipf", zipf_s=1.2, seed=3, samples=8)
    z = experts_touched(qwen, 16, zipf)
    assert 8 <= z < experts_touched(qwen, 16)
    assert experts_touched(qwen, 16, zipf) == z  # seeded: deterministic
    # The busiest EP rank under skew receives more than its uniform share.
    load = moe_load(qwen, 64, 4, zipf)
    assert load.tokens > 64 * 8 * 1.05
    with pytest.raises(InputError, match="histogram"):
        moe_load(qwen, 4, 1, Routing("histogram", histogram=(1.0, 2.0)))


def test_llama_decode_batch1_is_bound_by_reading_weights(a100):
    """Decode of llama-2-7b at batch 1 on one A100-80GB: ~13.2 GB of matmul weights at
    2.04 TB/s (x the profile's achievable fraction) plus per-kernel and host overheads."""
    spec = load_model("llama-2-7b")
    device = a100.device
    sim = StepSimulator(spec, a100, ParallelPlan(1), NO_ENGINE)
    r = sim.run(StepBatch(1, 1, 512))
    # Matmul weights: everything but the input embedding (looked up, not read).
    assert r.weight_bytes_read == pytest.approx((6.738e9 - 32000 * 4096) * 2, rel=0.005)
    floor = r.weight_bytes_read / device.hbm_bandwidth
    assert floor == pytest.approx(6.5e-3, rel=0.03)
    assert r.bound == "memory"
    assert r.memory_s >= floor
    # Step = memory-bound op bodies + one launch overhead per kernel, nothing else.
    assert r.time_s == pytest.approx(r.device_s)
    assert r.memory_s + r.overhead_s >= r.time_s * 0.97
    # Upper bound: weights + KV at the profile's best achievable bandwidth, +15 % for the
    # lower efficiency of small ops (saturating curve) and the norms/activations.
    streamed = (r.weight_bytes_read + r.kv_bytes_read) / (
        device.hbm_bandwidth * device.efficiency.memory_max
    )
    assert r.time_s < streamed * 1.15 + r.overhead_s
    # With the engine profile, host delays add exactly the profile's terms.
    eng = load_engine("vllm-0.6")
    with_host = StepSimulator(spec, a100, ParallelPlan(1), eng).run(StepBatch(1, 1, 512))
    assert with_host.host_s == pytest.approx(eng.step_host_time(1) + eng.sampling_time(1))


def test_step_items_kinds_and_tp_collectives(a800):
    spec = load_model("qwen2-57b-a14b")
    items = flatten(step_blocks(spec, StepBatch(8, 1, 100), ParallelPlan(2)))
    ops = [i for i in items if isinstance(i, Op)]
    comms = [i for i in items if not isinstance(i, Op)]
    # Two TP all-reduces per layer plus the embedding's, and the logits' all-gather.
    assert len(comms) == 2 * spec.layers + 2
    assert [c.kind for c in comms].count(CollectiveKind.ALL_GATHER) == 1
    assert any(op.name == "experts_up" for op in ops)
    r = StepSimulator(spec, a800, ParallelPlan(2), NO_ENGINE).run(StepBatch(8, 1, 100))
    assert r.by_kind["all-reduce"] > 0
    assert sum(r.by_kind.values()) == pytest.approx(r.time_s)


def test_plan_errors(a800):
    spec = load_model("qwen2-57b-a14b")
    with pytest.raises(InputError, match="heads"):
        StepSimulator(spec, a800, ParallelPlan(3))
    with pytest.raises(InputError, match="devices"):
        StepSimulator(spec, a800, ParallelPlan(tp=8, ep=2))
    with pytest.raises(InputError, match="dense"):
        StepSimulator(load_model("llama-2-7b"), a800, ParallelPlan(tp=1, ep=2))


def test_ep_groups_split_the_batch(a800):
    spec = load_model("qwen2-57b-a14b")
    sim = StepSimulator(spec, a800, ParallelPlan(tp=1, ep=4), NO_ENGINE)
    r = sim.run(StepBatch(16, 1, 256))
    assert r.by_kind.get("all-to-all", 0) > 0
    assert r.experts_loaded == pytest.approx(expected_active_experts(64, 8, 16))


def test_cuda_graphs_change_kernel_overhead(a800):
    spec = load_model("qwen2-0.5b")
    eng = EngineProfile("t", kernel_overhead_graph_s=1e-6, kernel_overhead_eager_s=9e-6)
    sim = StepSimulator(spec, a800, ParallelPlan(1), eng)
    decode = sim.run(StepBatch(4, 1, 64))
    assert decode.overhead_s == pytest.approx(decode.kernels * 1e-6)
    prefill = sim.run(StepBatch(4, 64, 0, "prefill"))
    assert prefill.overhead_s == pytest.approx(prefill.kernels * 9e-6)


@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 64), ctx=st.integers(0, 4096), extra=st.integers(1, 32))
def test_more_work_never_takes_less_time(b, ctx, extra):
    system = load_system("hgx-a800")
    sim = _tiny_sim(system)
    base = sim.run(StepBatch(b, 1, ctx)).time_s
    assert sim.run(StepBatch(b, 1, ctx + extra * 64)).time_s >= base
    assert sim.run(StepBatch(b + extra, 1, ctx)).time_s >= base * (1 - 1e-9)


_SIMS: dict = {}


def _tiny_sim(system):
    if "tiny" not in _SIMS:
        _SIMS["tiny"] = StepSimulator(TINY_MOE, system, ParallelPlan(2), NO_ENGINE)
    return _SIMS["tiny"]


def test_engine_profile_loader(tmp_path):
    eng = load_engine("vllm-0.6")
    assert eng.cuda_graphs and eng.kernel_overhead_graph_s == pytest.approx(2e-6)
    assert eng.step_host_time(10) == pytest.approx(
        eng.step_overhead_s + 10 * eng.step_overhead_per_seq_s
    )
    bad = tmp_path / "bad.toml"
    bad.write_text('kind = "engine"\nname = "x"\n[host]\nstep_overhead_ms = 1\n')
    with pytest.raises(InputError, match="host.step_overhead_ms"):
        load_engine(str(bad))
    bad.write_text('kind = "engine"\nname = "x"\n[host]\nstep_overhead_us = -1\n')
    with pytest.raises(InputError, match=">= 0"):
        load_engine(str(bad))
    with pytest.raises(InputError, match="Did you mean"):
        load_engine("vllm-0.7")


def test_one_plan_type_for_training_and_inference(a800):
    # The inference plan is sim.parallel's: tp and ep set, dp unset (read as ep).
    plan = ParallelPlan(tp=2, ep=4)
    assert plan.devices == 8
    assert plan.tp_group() == (0, 1) and plan.ep_group() == (0, 2, 4, 6)
    assert ParallelPlan(tp=2, ep=2, first_device=4).tp_group() == (4, 5)
    # A training plan's devices are its world once dp is resolved.
    assert ParallelPlan(tp=2, pp=2, dp=4, ep=2).devices == 16
    assert "first_device" not in ParallelPlan().as_dict()  # training documents unchanged
    with pytest.raises(InputError, match="tp, pp and ep only"):
        StepSimulator(load_model("llama-2-7b"), a800, ParallelPlan(tp=1, cp=2))
    # A plan with pipeline stages is priced stage by stage (sim/inference/pipeline.py).
    with pytest.raises(InputError, match="one pipeline stage"):
        StepSimulator(load_model("llama-2-7b"), a800, ParallelPlan(tp=1, pp=2))
