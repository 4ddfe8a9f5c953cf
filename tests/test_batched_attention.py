"""Decode attention cores priced for a block of batch sizes at once
(``sim/inference/batched_attention.py``) equal the per-step build and pricing
(``StepSimulator.attention_time``) to the bit: every batch size of ranges that cross
blocks, the CUDA-graph limit and XQA's CTA gate (masked MHA below it), at grid and
off-grid contexts, with and without a sliding window; configurations the module does not
cover keep the per-step path."""

from __future__ import annotations

import pytest
from xpusim.hwprofiles import load_system
from xpusim.sim.inference import batched_attention
from xpusim.sim.inference.engine_profile import load_engine
from xpusim.sim.inference.lowering import StepBatch, StepSimulator
from xpusim.sim.inference.priced_step import StepOpTimes, clear_memos
from xpusim.sim.models.hf_config import load_model
from xpusim.sim.parallel import ParallelPlan

CASES = [  # (model, system, plan, dtype, engine): fused, XQA-or-masked and masked kernels
    ("llama-3.1-70b", "dgx-h100", ParallelPlan(tp=8), "fp8", "trtllm-0.17"),
    ("llama-2-70b", "dgx-a100", ParallelPlan(tp=4), "fp16", "trtllm-0.10"),
    ("gpt-j-6b", "pcie-l40s", ParallelPlan(1), "fp8", "trtllm-0.10"),
    ("llama-2-70b", "dgx-a100", ParallelPlan(tp=8), "fp16", "trtllm-0.5"),
    ("mixtral-8x7b", "hgx-h200", ParallelPlan(tp=2), "fp8", "trtllm-0.17"),
    ("qwen2-0.5b", "dgx-a100", ParallelPlan(1), "bf16", "vllm-0.6"),
    ("gpt-oss-20b", "dgx-h100", ParallelPlan(1), "bf16", "vllm-0.6"),
]


def _sim(model, system, plan, dtype, engine) -> StepSimulator:
    clear_memos()  # a memo of its own: every table built here
    return StepSimulator(load_model(model), load_system(system), plan, load_engine(engine),
                         dtype)


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{c[1]}-{c[4]}" for c in CASES])
def test_every_batch_size_equals_the_per_step_core(case):
    sim = _sim(*case)
    top = int(sim.engine.cuda_graph_max_batch)
    layers = sorted({0, sim.spec.layers - 1})
    for context in (128, 1000.5, 8192):
        for b in [*range(1, 530), *range(max(530, top - 20), top + 20)]:
            batch = StepBatch(b, 1, context, "decode")
            op_time = StepOpTimes(sim._cost_model(batch).inner)
            for layer in layers:
                want = sim.attention_time(op_time, batch, layer)
                assert sim._batched.core_time(sim, op_time, batch, layer) == want, (b, context)
    tables = [t for t in sim._batched.cores.values() if t is not None]
    assert len(tables) >= 6  # the tables were used, not the fallback


def test_a_table_that_misses_its_check_keeps_the_per_step_path(monkeypatch):
    sim = _sim(*CASES[0])
    batch = StepBatch(3, 1, 256, "decode")
    op_time = StepOpTimes(sim._cost_model(batch).inner)
    want = sim.attention_time(op_time, batch, 0)
    real = batched_attention._fused_split
    monkeypatch.setattr(batched_attention, "_fused_split",
                        lambda *a: real(*a) * (1 + 1e-12))  # one ulp-scale slip
    assert sim._batched.core_time(sim, op_time, batch, 0) == want
    assert list(sim._batched.cores.values()) == [None]


def test_prefill_and_verify_calls_keep_the_per_step_path():
    sim = _sim(*CASES[0])
    for batch in (StepBatch(4, 16, 512, "prefill"), StepBatch(4, 3, 512, "verify"),
                  StepBatch(4, 1, 0, "decode"), StepBatch(4.5, 1, 512, "decode")):
        op_time = StepOpTimes(sim._cost_model(batch).inner)
        assert sim._batched.core_time(sim, op_time, batch, 0) == sim.attention_time(
            op_time, batch, 0)
    assert not sim._batched.cores


@pytest.mark.parametrize("impl", ["standard", "flash2"])
def test_other_implementations_keep_or_take_the_table_path(impl):
    """Eager attention (``standard``) is not covered: the per-step path, no table; the
    same model on FlashAttention-2 (--attention-impl) takes the tables."""
    clear_memos()
    sim = StepSimulator(load_model("llama-3.1-8b"), load_system("dgx-a100"), ParallelPlan(1),
                        load_engine("vllm-0.6"), "bf16", attention_impl=impl)
    for b in (1, 2, 255, 256, 257, 700):
        batch = StepBatch(b, 1, 512, "decode")
        op_time = StepOpTimes(sim._cost_model(batch).inner)
        assert sim._batched.core_time(sim, op_time, batch, 0) == sim.attention_time(
            op_time, batch, 0)
    tables = list(sim._batched.cores.values())
    assert tables and all((t is None) == (impl == "standard") for t in tables)
