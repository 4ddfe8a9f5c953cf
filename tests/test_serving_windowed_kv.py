"""KV cache of sliding-window layers per serving engine (``[kv_cache] sliding_window_kv``).

gpt-oss-20b: 24 layers alternating sliding (window 128) and full, 8 KV heads x 64 dims, so
a token's KV is 24 x 2 x 8 x 64 x 2 B = 49,152 B (bf16) on every layer. Block 16 tokens.
Under "window" (vLLM V1's hybrid manager) the 12 sliding and 12 full layers form two
groups of 12 layers sharing one pool: a block of one group is half a whole-model block,
and a sliding layer keeps at most ceil(128 / 16) + 1 = 9 blocks. Under "uniform" (vLLM
V0) and "full" every layer caches the whole context.
"""

from __future__ import annotations

import dataclasses

import pytest
from xpusim.hwprofiles import load_system
from xpusim.sim.inference.engine_profile import load_engine
from xpusim.sim.inference.kvcache import KVLayout, kv_bytes_per_token, kv_layout
from xpusim.sim.inference.lowering import StepBatch, StepSimulator, require_memory
from xpusim.sim.inference.serving import Server
from xpusim.sim.inference.stepcosts import StepCosts
from xpusim.sim.inference.workload import LengthDist, Workload, make_requests
from xpusim.sim.models.hf_config import load_model
from xpusim.sim.parallel import ParallelPlan


@pytest.fixture(scope="module")
def oss():
    return load_model("gpt-oss-20b")


def test_gpt_oss_layout_per_rule(oss):
    assert kv_layout(oss, "window") == KVLayout(block=16, full=1, sliding=1, cap=9, group=12)
    # Interleaved windows are not a V0 block-manager window: whole context everywhere.
    assert kv_layout(oss, "uniform") == KVLayout(block=16, group=24)
    assert kv_layout(oss, "full") == KVLayout(block=16, group=24)


def test_uniform_window_caps_a_model_windowed_on_every_layer(oss):
    # Mistral-7B-v0.1-like: every layer windowed at 4096 -> one group, cap 257 blocks.
    every = dataclasses.replace(oss, layer_windows=(4096,) * oss.layers)
    assert kv_layout(every, "uniform") == KVLayout(16, full=0, sliding=1, cap=257, group=24)
    assert kv_layout(every, "window").units(10_000) == 257  # ceil(10000 / 16) = 625 > 257
    assert kv_layout(every, "full").units(10_000) == 625


def test_blocks_per_request_and_capacity_hand_computed(oss):
    window, full = kv_layout(oss, "window"), kv_layout(oss, "full")
    # 1,000 tokens: 63 blocks; windowed: 63 full-group + min(63, 9) sliding-group units.
    assert full.units(1000) == 63
    assert window.units(1000) == 72
    # Below the window both hold the same share of the pool: 7 of 10,000 vs 14 of 20,000.
    assert window.units(100) == 14 and full.units(100) == 7
    # A cache sized for 160,000 tokens of whole-model KV: 10,000 blocks, 20,000 units.
    assert full.total_units(160_000) == 10_000
    assert window.total_units(160_000) == 20_000
    # Requests of 1,000 tokens it holds: 10,000 // 63 = 158 vs 20,000 // 72 = 277, so
    # 158,000 vs 277,000 tokens of context.
    assert full.total_units(160_000) // full.units(1000) == 158
    assert window.total_units(160_000) // window.units(1000) == 277


def test_engine_profiles_rules():
    rules = {n: load_engine(n).sliding_window_kv for n in (
        "vllm-nightly", "vllm-0.5", "vllm-0.6", "vllm-ascend-0.9", "sglang-0.4",
        "trtllm-1.0", "trtllm-0.10", "gpt-fast")}
    assert rules == {
        "vllm-nightly": "window", "vllm-0.5": "uniform", "vllm-0.6": "uniform",
        "vllm-ascend-0.9": "uniform", "sglang-0.4": "full", "trtllm-1.0": "full",
        "trtllm-0.10": "full", "gpt-fast": "full",
    }
    assert "kv_cache" in load_engine("vllm-nightly").sources


def _serve(oss, rule: str):
    engine = dataclasses.replace(load_engine("vllm-nightly"), sliding_window_kv=rule)
    system, plan = load_system("dgx-h100"), ParallelPlan(1)
    memory = require_memory(oss, system, plan, engine, "bf16")
    sim = StepSimulator(oss, system, plan, engine, "bf16")
    w = Workload(300, 1000.0, LengthDist("uniform", 2000, 4000), LengthDist("uniform", 200, 400), 0)
    server = Server(StepCosts(sim), memory.kv_tokens, engine.max_num_seqs,
                    engine.max_batched_tokens, layout=kv_layout(oss, rule))
    return server.run(make_requests(w)), sim


def test_windowed_engine_serves_a_larger_batch_with_the_same_decode_reads(oss):
    """gpt-oss-20b on one H100, 300 requests of 2-4k prompt tokens at once: with every
    layer caching the whole context the cache (578 k tokens, about 190 such requests)
    caps the batch below max_num_seqs = 256; freeing the sliding layers' blocks nearly halves each request's
    share, so more requests run together. A step's KV reads do not change: the cost model
    already reads only the window's keys, whatever the cache holds."""
    windowed, sim = _serve(oss, "window")
    full, _ = _serve(oss, "full")
    assert windowed.metrics()["completed"] == full.metrics()["completed"] == 300
    assert windowed.mean_batch > full.mean_batch
    # The whole-context cache outgrows its room and preempts; the windowed one does not.
    assert full.preemptions > 0 == windowed.preemptions
    assert kv_bytes_per_token(oss) == 24 * 2 * 8 * 64 * 2
    full_engine = dataclasses.replace(sim.engine, sliding_window_kv="full")
    other = StepSimulator(oss, sim.system, sim.plan, full_engine, "bf16")
    step = StepBatch.for_phase("decode", 64, 3000)
    assert sim.run(step).kv_bytes_read == other.run(step).kv_bytes_read > 0
