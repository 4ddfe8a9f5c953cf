"""The lowering starts from the chunks the memory estimate built for the chosen plan
(``estimate_memory``'s store, ``steady.lower_training``): the same result as a lowering
that builds its own, on the steady-state path and the exact one, with a recompute policy
chosen (``auto``) and one given."""

from __future__ import annotations

import pytest
from xpusim.sim.api.train import TrainRequest, lower_train, prepare_train, priced_result
from xpusim.sim.training.steady import lower_training


@pytest.mark.parametrize("request_", [
    # gbs 64 on pp 2: the two steady-state runs; gbs 4: every micro-batch (exact path).
    TrainRequest(model="qwen2-0.5b", system="atlas-800t-a2", nodes=2, tp=2, pp=2, mbs=1,
                 gbs=64, seq=1024),
    TrainRequest(model="qwen2-0.5b", system="dgx-h100", tp=2, pp=2, mbs=1, gbs=4, seq=1024,
                 recompute="full"),
])
def test_reused_chunks_give_the_same_step(request_):
    setup = prepare_train(request_)
    assert setup.chunks  # the estimate kept its chunks
    reused = lower_train(setup)
    own = lower_training(setup.spec, setup.system, setup.plan, setup.options)
    assert (reused.counts is None) == (request_.gbs == 4)
    kept = {id(c) for cache in setup.chunks.values() for chunks in cache.chunks.values()
            for c in chunks}
    first = reused.steps[0].ranks[0].rank_plan.chunks
    assert all(id(c) in kept for c in first)  # not built again
    assert not any(id(c) in kept for c in own.steps[0].ranks[0].rank_plan.chunks)
    a = priced_result(setup, reused).as_dict()
    b = priced_result(setup, own).as_dict()
    assert {k: v for k, v in a.items() if k != "wall_s"} == {
        k: v for k, v in b.items() if k != "wall_s"}
