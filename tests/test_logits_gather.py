"""The sampled logits of a vocab-parallel LM head are gathered over TP (serving steps).

TensorRT-LLM's head is ``ColumnLinear(..., gather_output=True)`` (``allgather(x, tp_group,
gather_dim=-1)`` in tensorrt_llm/layers/linear.py); vLLM and SGLang gather their logits over
the TP group too. Expected buffers are computed by hand from the model shapes.
"""

import pytest
from xpusim.hwprofiles import load_system
from xpusim.sim.inference.lowering import StepBatch, StepSimulator, flatten, step_blocks
from xpusim.sim.ir import Collective, CollectiveKind
from xpusim.sim.models.hf_config import load_model
from xpusim.sim.parallel import ParallelPlan
from xpusim.sim.workloads.transformer import CommNeed, Sharding, logits_gather


def _gathers(batch: StepBatch, tp: int, dtype: str = "fp8", **kw) -> list[CommNeed]:
    spec = load_model("llama-3.1-70b")
    items = flatten(step_blocks(spec, batch, ParallelPlan(tp=tp), dtype, **kw))
    return [it for it in items if isinstance(it, CommNeed) and it.name == "logits_gather"]


def test_decode_step_gathers_every_rows_logits_at_16_bits() -> None:
    # 250 decode rows x vocab 128,256 x 2 bytes = 64,128,000 bytes gathered (each of
    # the 2 ranks holds 64,128 columns); one gather per step, after the LM head.
    (g,) = _gathers(StepBatch(sequences=250, q_len=1, context=1100), tp=2)
    assert g.kind == CollectiveKind.ALL_GATHER
    assert g.group == "tp"
    assert g.nbytes == pytest.approx(250 * 128_256 * 2)


def test_prefill_gathers_only_the_last_position_of_each_prompt() -> None:
    # 4 prompts of 2,048 tokens at TP8: 4 rows x 128,256 x 2 = 1,026,048 bytes, the same in
    # an FP8 and a 16-bit run, with or without a 16-bit head.
    prefill = StepBatch(sequences=4, q_len=2048, context=0, phase="prefill")
    for dtype, kw in (("fp8", {}), ("fp8", {"lm_head_16bit": True}), ("bf16", {})):
        (g,) = _gathers(prefill, tp=8, dtype=dtype, **kw)
        assert g.nbytes == pytest.approx(1_026_048)


def test_no_gather_at_tp1_or_with_a_whole_head() -> None:
    batch = StepBatch(sequences=8, q_len=1, context=64)
    assert _gathers(batch, tp=1) == []
    assert _gathers(batch, tp=4, vocab_parallel=False) == []  # gpt-fast: head whole per rank
    assert logits_gather(load_model("llama-3.1-8b"), 8.0, Sharding(tp=1)) == []


def test_the_step_prices_the_gather_on_the_tp_group() -> None:
    # A TP8 H100 decode step of 1,424 rows gathers 1,424 x 128,256 x 2 = 365,273,088 bytes:
    # the step's all-gather time is the network's price of that collective on 8 ranks.
    sim = StepSimulator(load_model("llama-3.1-70b"), load_system("dgx-h100"),
                        ParallelPlan(tp=8), dtype="fp8")
    step = sim.run(StepBatch(sequences=1424, q_len=1, context=1100))
    plan = ParallelPlan(tp=8)
    want = sim._comm(Collective("logits_gather", CollectiveKind.ALL_GATHER, plan.tp_group(),
                                1424 * 128_256 * 2))
    assert want > 0
    assert step.by_kind["all-gather"] == pytest.approx(want)
