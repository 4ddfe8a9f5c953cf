"""Decode skeletons priced a block of batch sizes at once (``sim/inference/batched_step.py``)
equal the per-step lowering and pricing (``StepSimulator._lowered_step``) to the bit, at
every batch size of a range that crosses blocks and the CUDA-graph limit, on devices with
and without the epilogue overlap and the operand-feed bound, 16- and 8-bit weights, TP 1
to 8; configurations the fast path does not cover keep the per-step path."""

from __future__ import annotations

import pytest
from xpusim.hwprofiles import load_system
from xpusim.sim.inference import batched_step
from xpusim.sim.inference.engine_profile import load_engine
from xpusim.sim.inference.lowering import StepBatch, StepSimulator
from xpusim.sim.inference.priced_step import clear_memos, step_memo
from xpusim.sim.models.hf_config import load_model
from xpusim.sim.parallel import ParallelPlan
from xpusim.sim.workloads.transformer import CommNeed

CASES = [  # (model, system, plan, dtype, engine)
    ("llama-3.1-70b", "dgx-h100", ParallelPlan(tp=8), "fp8", "trtllm-0.17"),
    ("llama-3.1-8b", "dgx-b200", ParallelPlan(1), "fp8", "trtllm-1.0"),
    ("llama-3.1-70b", "dgx-a100", ParallelPlan(tp=4), "fp16", "trtllm-0.17"),
    ("mistral-7b", "pcie-l40s", ParallelPlan(1), "fp8", "trtllm-0.17"),
    ("qwen2-0.5b", "dgx-a100", ParallelPlan(1), "bf16", "vllm-0.6"),
    ("gpt-j-6b", "hgx-h200", ParallelPlan(1), "fp8", "trtllm-0.10"),
]


def _sim(model, system, plan, dtype, engine) -> StepSimulator:
    clear_memos()  # a memo of its own: every skeleton priced here
    return StepSimulator(load_model(model), load_system(system), plan, load_engine(engine),
                         dtype)


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_every_batch_size_equals_the_lowered_step(case):
    sim = _sim(*case)
    top = max(600, int(sim.engine.cuda_graph_max_batch) + 40)
    for b in [*range(1, 600), *range(top - 80, top)]:
        batch = StepBatch(b, 1, 1000.5, "decode")
        assert sim._priced_step(batch) == sim._lowered_step(batch), b
    assert not sim._batched.off and len(sim._batched.blocks) >= 3  # the fast path ran


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_block_sums_equal_the_lowered_steps_sums(case):
    """``DecodeTemplate.sums`` (a block's device sums at one context, numpy) equals the
    lowered step's ``PricedStep.sums`` at every batch size, on both sides of the
    CUDA-graph limit, at grid and off-grid contexts."""
    sim = _sim(*case)
    top = max(300, int(sim.engine.cuda_graph_max_batch) + 20)
    for context in (128, 1000.5, 65536):
        for b in [*range(1, 300), *range(top - 40, top)]:
            batch = StepBatch(b, 1, context, "decode")
            got = sim._batched.sums(sim, batch)
            assert got is not None and got == sim._lowered_step(batch).sums(), (b, context)
    assert all(t is not None for t in sim._batched.sums_at.values())


def test_contexts_and_repricings_through_the_fast_path_equal_fresh_pricing():
    """``time_s`` over batch sizes and contexts (skeletons from blocks, re-pricings from
    them) equals a simulator whose fast path is turned off."""
    case = CASES[0]
    fast = _sim(*case)
    got = [fast.time_s(StepBatch(b, 1, c, "decode")) for b in (1, 5, 300, 301, 2000)
           for c in (128, 4000.25, 70_000)]
    slow = _sim(*case)
    slow._batched.off = True
    want = [slow.time_s(StepBatch(b, 1, c, "decode")) for b in (1, 5, 300, 301, 2000)
            for c in (128, 4000.25, 70_000)]
    assert got == want
    assert len(fast._batched.blocks) >= 2 and not slow._batched.blocks


MOE_CASES = [  # the MoE items after the router built and priced per step (``_moe_items``)
    ("mixtral-8x7b", "dgx-h100", ParallelPlan(tp=2), "fp8", "trtllm-0.10"),
    ("mixtral-8x22b", "dgx-a100", ParallelPlan(tp=8), "fp16", "trtllm-0.17"),
    ("qwen3-235b-a22b", "dgx-b200", ParallelPlan(tp=8), "fp8", "trtllm-1.0"),
    ("deepseek-v3", "hgx-h200", ParallelPlan(tp=8), "fp8", "sglang-0.4"),  # dense layers, shared experts
]


@pytest.mark.parametrize("case", MOE_CASES, ids=[f"{c[0]}-{c[1]}" for c in MOE_CASES])
def test_moe_decode_steps_equal_the_lowered_step(case):
    """Every batch size, small ones (fewer experts touched than there are) included."""
    sim = _sim(*case)
    for b in [*range(1, 300), *range(500, 530)]:
        batch = StepBatch(b, 1, 1000.5, "decode")
        assert sim._priced_step(batch) == sim._lowered_step(batch), b
    assert not sim._batched.off and len(sim._batched.blocks) >= 2
    assert sum(it.fresh for it in sim._batched.items) >= 4  # top-k, permute, experts, ...


def test_an_moe_layout_that_changes_keeps_the_lowered_step():
    """Fewer MoE items at a batch size than in the template (no expert GEMMs when the
    load has no tokens): that step goes through the lowering."""
    sim = _sim(*MOE_CASES[0])
    assert sim._priced_step(StepBatch(3, 1, 100, "decode")) == sim._lowered_step(
        StepBatch(3, 1, 100, "decode"))
    real = batched_step._moe_items
    try:
        batched_step._moe_items = lambda s, b: real(s, b)[:-1]
        assert sim._batched.priced(sim, StepBatch(4, 1, 100, "decode")) is None
    finally:
        batched_step._moe_items = real


@pytest.mark.parametrize("case", [
    ("deepseek-v3", "dgx-h100", ParallelPlan(tp=4, ep=2), "fp8", "sglang-0.4"),  # EP
], ids=["ep"])
def test_configurations_outside_the_fast_path_keep_the_lowered_step(case):
    sim = _sim(*case)
    for b in (1, 2, 3, 257):
        batch = StepBatch(b, 1, 1000, "decode")
        assert sim._priced_step(batch) == sim._lowered_step(batch)
    assert not sim._batched.blocks


def test_other_steps_are_not_batched():
    """Prefill, verify, padded and zero-context steps go through the lowering."""
    sim = _sim(*CASES[0])
    for batch in (StepBatch(3, 512, 0, "prefill"), StepBatch(3, 4, 100, "verify"),
                  StepBatch(3, 1, 0, "decode"), StepBatch(4, 1, 100, "decode", 1.0)):
        assert sim._batched.priced(sim, batch) is None
        assert sim._priced_step(batch) == sim._lowered_step(batch)


def test_a_block_that_disagrees_turns_the_configuration_back():
    """The check at a block's ends: a wrong price turns the fast path off for good."""
    sim = _sim(*CASES[0])
    real = batched_step._price
    try:
        batched_step._price = lambda roof, it, bs: real(roof, it, bs) * (1 + 1e-12)
        batch = StepBatch(5, 1, 1000, "decode")
        assert sim._priced_step(batch) == sim._lowered_step(batch)
    finally:
        batched_step._price = real
    assert sim._batched.off
    assert sim._batched.priced(sim, StepBatch(6, 1, 1000, "decode")) is None



def test_block_prices_kept_per_device_equal_fresh_ones():
    """A configuration priced again after its memo is dropped (``MEMO_CONFIGS``) reads its
    blocks' item prices from its device's shared table (``_priced``) and its collectives'
    from its system's (``_comm_prices``): nothing priced again, and every step still the
    lowered step."""
    case = CASES[0]
    sim = _sim(*case)
    sizes = (1, 2, 255, 256, 257, 600)
    first = [sim._priced_step(StepBatch(b, 1, 1000.5, "decode")) for b in sizes]
    step_memo.cache_clear()  # the configurations' memos only: the shared tables stay
    again = StepSimulator(load_model(case[0]), load_system(case[1]), case[2],
                          load_engine(case[4]), case[3])
    assert again._batched is not sim._batched
    real, real_comm, calls = batched_step._price, batched_step.block_times, []
    try:
        batched_step._price = lambda roof, it, bs: calls.append(it) or real(roof, it, bs)
        batched_step.block_times = lambda *a: calls.append(a) or real_comm(*a)
        for b, want in zip(sizes, first, strict=True):
            batch = StepBatch(b, 1, 1000.5, "decode")
            assert again._priced_step(batch) == want == again._lowered_step(batch), b
    finally:
        batched_step._price, batched_step.block_times = real, real_comm
    assert not calls and len(again._batched.blocks) >= 3
    # The TP all-reduces came from the system's kept block prices (``_comm_prices``).
    assert any(isinstance(it.item, CommNeed) and p is not None
               for block in again._batched.blocks.values()
               for it, p in zip(again._batched.items, block, strict=True))
