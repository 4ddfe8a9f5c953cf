"""Memory estimates build no schedule order: ``rank_state`` reads each stage's peak in
flight from the analytical closed form (``memory.analytical.in_flight``). It must be
``peak_in_flight`` of the order ``rank_plans`` builds, item for item and in the same order
(the order of the items is the order the activations are summed in)."""

from __future__ import annotations

import itertools

from xpusim.hwprofiles import load_system
from xpusim.sim.models.spec import ModelSpec
from xpusim.sim.parallel import ParallelPlan, validate_plan
from xpusim.sim.placement import job_devices
from xpusim.sim.schedules import peak_in_flight, stage_order
from xpusim.sim.training.memory import in_flight, rank_state
from xpusim.sim.training.simulate import rank_plans, resolve_attention


def test_closed_form_items_in_the_orders_order():
    # Wider than test_memory_analytical's dict check: deeper pipelines, more chunks.
    for p, v, m, interleaved, extra in itertools.product(
        (1, 2, 4, 8, 16), (1, 2, 4, 8), (1, 2, 8, 24, 48), (False, True), (0, 1)
    ):
        if v > 1 and not interleaved or interleaved and p > 1 and m % p:
            continue
        for s in range(p):
            want = list(peak_in_flight(stage_order(s, p, v, m, interleaved, extra)).items())
            assert list(in_flight(s, p, v, m, interleaved, extra).items()) == want


def test_rank_state_is_the_built_orders_peak():
    # The parameters rank_state passes (stage, pp, vpp, micro-batches, merged F/B) are those
    # rank_plans builds its order from; a wrong one changes the count at some stage.
    spec = ModelSpec(name="hand-dense", family="llama", hidden=1024, layers=8, heads=8,
                     kv_heads=4, head_dim=128, ffn=4096, vocab=32000)
    system = load_system("dgx-h100")
    for plan in (ParallelPlan(tp=2, pp=4, vpp=2, dp=1, mbs=1, gbs=32, seq=512),
                 ParallelPlan(tp=2, pp=4, dp=1, mbs=1, gbs=24, seq=512),
                 ParallelPlan(tp=1, pp=8, dp=1, mbs=2, gbs=12, seq=512)):
        plan = resolve_attention(validate_plan(spec, plan, job_devices(plan, system)), system)
        _, built = rank_plans(spec, system, plan)
        _, bare = rank_plans(spec, system, plan, orders=False)
        assert all(rp.order for rp in built) and not any(rp.order for rp in bare)
        for b, rp in zip(built, bare, strict=True):
            want = list(peak_in_flight(b.order).items())
            assert list(rank_state(rp, plan).in_flight.items()) == want
