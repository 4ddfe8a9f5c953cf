"""A step's ops priced through ``priced_step.StepOpTimes`` (the uncached model, one memo
per step) give the floats the simulator's ``CachedCostModel`` gives: every distinct item
of fresh skeletons and re-priced attention cores, over dense, MoE, MLA and
sliding-window models, TP and EP, FP8, decode / verify / prefill."""

from __future__ import annotations

import pytest
from test_priced_step import CASES, _sim
from xpusim.sim.cost import CachedCostModel
from xpusim.sim.cost.base import OpCost
from xpusim.sim.inference.lowering import StepBatch, step_blocks
from xpusim.sim.inference.priced_step import StepOpTimes, block_layers
from xpusim.sim.ir import Collective, Op
from xpusim.sim.ops import norm
from xpusim.sim.workloads.transformer import CommNeed

BATCHES = (StepBatch(7, 1, 300, "decode"), StepBatch(300, 1, 4096, "decode"),
           StepBatch(16, 4, 1000, "verify"), StepBatch(2, 512, 0, "prefill"))


def _reference_entries(sim, batch):
    """The skeleton's entries as priced before ``StepOpTimes``: each distinct item once,
    ops by the simulator's cached cost model."""
    blocks = step_blocks(sim.spec, batch, sim.plan, sim.dtype, sim.routing, sim.fc_in,
                         sim.engine.lm_head_16bit, sim.engine.vocab_parallel, sim.layers)
    model = CachedCostModel(sim._cost_model(batch).inner)
    counts, distinct = {}, {}
    for (block, repeat), _ in zip(blocks, block_layers(blocks, sim.layers[0]), strict=True):
        for item in block:
            counts[id(item)] = counts.get(id(item), 0) + repeat
            distinct.setdefault(id(item), item)
    entries = []
    for key, item in distinct.items():
        if isinstance(item, CommNeed):
            group = sim.plan.tp_group() if item.group == "tp" else sim.plan.ep_group()
            t = sim._comm(Collective(item.name, item.kind, group, item.nbytes))
            entries.append((counts[key], t, False))
        else:
            entries.append((counts[key], model.time(item).time_s, str(item.kind) == "attention"))
    return tuple(entries)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_skeletons_and_repricings_equal_cached_model(case):
    sim = _sim(*case)
    for batch in BATCHES:
        priced = sim._priced_step(batch)
        assert priced.entries == _reference_entries(sim, batch)
        other = StepBatch(batch.sequences, batch.q_len, batch.context + 777, batch.phase)
        if batch.context > 0:
            assert sim._repriced(priced, other).entries == _reference_entries(sim, other)


class _Counting:
    """A cost model that counts its calls: 1 us per FLOP."""

    name = "counting"

    def __init__(self) -> None:
        self.calls = 0

    def time(self, op: Op) -> OpCost:
        self.calls += 1
        return OpCost(op.flops * 1e-6, op.flops * 1e-6, 0.0, 0.0, "compute")


def test_equal_content_priced_once_per_step():
    """Two norms of one shape under different names: one call, the same time (5 FLOPs
    per element x 4 x 8 elements = 160 FLOPs -> 160 us); another shape is priced."""
    model = _Counting()
    times = StepOpTimes(model)
    a, b, c = norm("input_norm", 4, 8), norm("post_norm", 4, 8), norm("final", 4, 16)
    assert times(a) == times(b) == pytest.approx(160e-6)
    assert model.calls == 1
    assert times(c) == pytest.approx(320e-6)
    assert model.calls == 2
    assert StepOpTimes(model)(a) == times(a) and model.calls == 3  # a new step: afresh


def test_kinds_that_do_not_repeat_skip_the_memo():
    """A GEMM (not in ``REPEATED_KINDS``) goes to the model every time, with the time it
    gives; the norms keep their memo."""
    from xpusim.sim.inference.priced_step import REPEATED_KINDS
    from xpusim.sim.ir import OpKind
    from xpusim.sim.ops import gemm

    assert OpKind.GEMM not in REPEATED_KINDS and OpKind.ATTENTION not in REPEATED_KINDS
    model = _Counting()
    times = StepOpTimes(model)
    g = gemm("up", 4, 8, 16)
    assert times(g) == times(gemm("down", 4, 8, 16)) == model.time(g).time_s
    assert model.calls == 3  # two through StepOpTimes, one here
    assert not times.seen
