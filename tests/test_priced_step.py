"""Re-pricing a step at another context (``StepSimulator``'s priced skeletons,
``sim/inference/priced_step.py``) gives the same floats as lowering and pricing the step
afresh: dense, MoE, MLA (absorbed and expanded attention) and sliding-window models, with
tensor and expert parallelism, 16- and 8-bit weights, decode, verify and prefill steps."""

from __future__ import annotations

import pytest
from xpusim.hwprofiles import load_system
from xpusim.sim.inference.batched_step import BLOCK
from xpusim.sim.inference.engine_profile import load_engine
from xpusim.sim.inference.lowering import StepBatch, StepSimulator
from xpusim.sim.inference.priced_step import clear_memos
from xpusim.sim.ir import OpKind
from xpusim.sim.models.hf_config import load_model
from xpusim.sim.parallel import ParallelPlan
from xpusim.sim.workloads.transformer import (
    Sharding,
    StepShape,
    attention_core_op,
    attention_ops,
)

CASES = [  # (model, system, plan, dtype, engine)
    ("qwen2-0.5b", "dgx-a100", ParallelPlan(1), "bf16", "vllm-0.6"),
    ("llama-2-70b", "dgx-h100", ParallelPlan(tp=4), "fp8", "trtllm-0.10"),
    ("mixtral-8x7b", "dgx-h100", ParallelPlan(tp=2), "fp8", "trtllm-0.10"),
    ("deepseek-v3", "dgx-h100", ParallelPlan(tp=4, ep=2), "fp8", "sglang-0.4"),
    ("gpt-oss-20b", "dgx-h100", ParallelPlan(1), "bf16", "vllm-0.6"),
]
# Contexts priced one after another: the first of each (context > 0 or == 0) builds the
# skeleton, the others are re-priced from it.
CONTEXTS = (0, 128, 1000.5, 4096, 0, 70_000)


def _sim(model, system, plan, dtype, engine) -> StepSimulator:
    clear_memos()  # a simulator of its own memo: priced afresh, not shared (step_memo)
    return StepSimulator(load_model(model), load_system(system), plan, load_engine(engine),
                         dtype)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("phase,sequences,q_len", [
    ("decode", 7, 1), ("decode", 300, 1), ("verify", 16, 4), ("prefill", 2, 512),
])
def test_repriced_steps_equal_fresh_pricing(case, phase, sequences, q_len):
    reused = _sim(*case)
    for context in CONTEXTS:
        batch = StepBatch(sequences, q_len, context, phase)
        fresh = _sim(*case)
        assert reused._device_sums(batch) == fresh._device_sums(batch)
        assert reused.time_s(batch) == fresh.time_s(batch)
    # The re-priced steps did reuse skeletons: one per (shape, context > 0); a decode
    # step at context > 0 is read from its block's sums instead where its row has one
    # (batched_step; an MoE block's rows below its affine run are None).
    row = (sequences - 1) % BLOCK
    read = any(t is not None and t[row] is not None for t in reused._batched.sums_at.values())
    assert len(reused._priced) == (1 if read else 2)


@pytest.mark.parametrize("model", ["qwen2-0.5b", "llama-2-70b", "deepseek-v3", "gpt-oss-20b"])
@pytest.mark.parametrize("tp", [1, 4])
@pytest.mark.parametrize("q_len,kv_len", [(1, 300), (4, 1004), (512, 512)])
def test_attention_core_op_is_the_core_of_attention_ops(model, tp, q_len, kv_len):
    """A re-pricing builds the core alone (``attention_core_op``): the same op as the one
    ``attention_ops`` builds among the projections, every layer (gpt-oss alternates
    sliding-window and full layers; DeepSeek's MLA takes the absorbed form when kv_len >
    q_len)."""
    spec = load_model(model)
    shape = StepShape(3, q_len, kv_len)
    sh = Sharding(tp=tp)
    for layer in range(min(spec.layers, 4)):
        built = attention_ops(spec, shape, sh, "bf16", layer)
        cores = [op for op in built if op.kind == OpKind.ATTENTION]
        assert len(cores) == 1
        assert attention_core_op(spec, shape, sh, "bf16", layer) == cores[0]


def test_sums_add_each_product_once_to_two_sums():
    """``PricedStep.sums`` computes count x time once per entry; the sums equal adding the
    product afresh to each, in entry order (non-integer counts and times included)."""
    import random

    from xpusim.sim.inference.priced_step import PricedStep

    rng = random.Random(7)
    for _ in range(200):
        entries = tuple((rng.choice([1, 3, 79, 80]), rng.random() * 10 ** rng.randint(-7, -2),
                         rng.random() < 0.3) for _ in range(rng.randint(1, 25)))
        total = attention = other = 0.0
        for count, t, is_attention in entries:
            total += count * t
            if is_attention:
                attention += count * t
            else:
                other += count * t
        assert PricedStep(entries, ()).sums() == (total, attention, other)
