"""An MoE decode step's device sums read from a block table (``batched_step._moe_block``,
``sim/inference/batched_moe.py``) equal the per-step lowering and pricing to the bit: at
batch 1, below and at the size from which every expert is touched, at block ends, on both
sides of the CUDA-graph limit, over several contexts; sizes below that run, sampled
routing and a non-power-of-two expert count keep the per-step path."""

from __future__ import annotations

from dataclasses import replace

import pytest
from xpusim.hwprofiles import load_system
from xpusim.sim.inference.batched_moe import affine_moe_items, moe_items, saturated_from
from xpusim.sim.inference.batched_step import BLOCK
from xpusim.sim.inference.engine_profile import load_engine
from xpusim.sim.inference.lowering import StepBatch, StepSimulator
from xpusim.sim.inference.priced_step import clear_memos
from xpusim.sim.inference.routing import UNIFORM, Routing
from xpusim.sim.models.hf_config import load_model
from xpusim.sim.parallel import ParallelPlan

CASES = [  # (model, system, plan, dtype, engine)
    ("mixtral-8x7b", "dgx-h100", ParallelPlan(tp=2), "fp8", "trtllm-0.10"),
    ("mixtral-8x22b", "dgx-a100", ParallelPlan(tp=8), "fp16", "trtllm-0.17"),
    ("mixtral-8x7b", "pcie-l40s", ParallelPlan(tp=4), "fp8", "trtllm-0.17"),
    ("qwen3-235b-a22b", "dgx-b200", ParallelPlan(tp=8), "fp8", "trtllm-1.0"),
    ("deepseek-v3", "hgx-h200", ParallelPlan(tp=8), "fp8", "sglang-0.4"),  # shared experts
]
# Mixtral's 8 experts at top-2: 1 - (3/4)^t rounds to 1 from t = 131 (computed in
# ``saturated_from``); block ends and the sizes around that point.
SIZES = [1, 2, 3, 129, 130, 131, 132, 133, 200, 255, 256, 257, 258, 511, 512, 513, 768,
         769, 1024, 1025, 1100, 1178, 1179, 1180, 1280, 1281]


def _sim(model, system, plan, dtype, engine, routing=UNIFORM) -> StepSimulator:
    clear_memos()  # a memo of its own: every skeleton priced here
    return StepSimulator(load_model(model), load_system(system), plan, load_engine(engine),
                         dtype, routing)


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_moe_block_sums_equal_the_lowered_steps_sums(case):
    sim = _sim(*case)
    top = int(sim.engine.cuda_graph_max_batch)
    read = 0
    for context in (128, 1000.5, 65536):
        for b in [*SIZES, top - 1, top, top + 1, top + 2]:
            batch = StepBatch(b, 1, context, "decode")
            got = sim._batched.sums(sim, batch)
            if got is not None:
                read += 1
                assert got == sim._lowered_step(batch).sums(), (b, context)
    assert read > 0 and any(fit is not None for fit in sim._batched.moe_fits.values())


def test_the_table_starts_where_every_expert_is_touched():
    """Mixtral (8 experts, top-2): block 0's table holds 131..256, the per-step path the
    sizes below; the next blocks are whole."""
    sim = _sim(*CASES[0])
    assert sim._batched.sums(sim, StepBatch(130, 1, 500, "decode")) is None
    assert sim._batched.sums(sim, StepBatch(131, 1, 500, "decode")) is not None
    assert sim._batched.sums(sim, StepBatch(BLOCK + 1, 1, 500, "decode")) is not None
    starts = {k: fit[0] for k, fit in sim._batched.moe_fits.items() if fit is not None}
    assert starts == {0: 131, 1: BLOCK + 1}
    assert saturated_from(sim, StepBatch(5, 1, 500, "decode"), 1, BLOCK) == 131


def test_affine_numbers_equal_the_built_items_at_every_size():
    """Every number of every MoE item from the affine law equals the item built at each
    size of a block (not only at the three sizes the law is fitted on)."""
    sim = _sim(*CASES[1])
    batch = StepBatch(1, 1, 500, "decode")
    fitted = affine_moe_items(sim, batch, 131, 256)
    assert fitted is not None
    for b in range(131, 257):
        built = moe_items(sim, StepBatch(b, 1, 500, "decode"))
        for (op, grows), it in zip(fitted, built, strict=True):
            want = {"flops": it.flops, "bytes": it.main_bytes}
            if "m" in grows:
                want["m"] = it.shape.m
            got = {n: base + (b - 1) * step for n, (base, step) in grows.items()}
            assert got == want and op.name == it.name, b


def test_a_non_dyadic_load_keeps_the_per_step_path():
    """Six experts at top-2: T·2/6 rows per expert are not exact binary fractions, so no
    block table; every size still prices as the lowered step."""
    sim = _sim(*CASES[0])
    sim.spec = replace(sim.spec, moe=replace(sim.spec.moe, num_experts=6))
    for b in (1, 100, 200, 300):
        batch = StepBatch(b, 1, 500, "decode")
        assert sim._batched.sums(sim, batch) is None
        assert sim._priced_step(batch) == sim._lowered_step(batch)
    assert all(fit is None for fit in sim._batched.moe_fits.values())
    assert not sim._batched.off and sim._batched.blocks  # the dense part still batched


def test_sampled_routing_keeps_the_per_step_path():
    sim = _sim(*CASES[0], routing=Routing("zipf", zipf_s=1.2, samples=2))
    batch = StepBatch(300, 1, 500, "decode")
    assert saturated_from(sim, batch, 257, 512) is None
    assert sim._batched.sums(sim, batch) is None
