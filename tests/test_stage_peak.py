"""Memory estimates build no schedule order: ``rank_plans(orders=False)`` and
``rank_state`` read the peak of the order from ``schedules.stage_peak``, which must be
``peak_in_flight(stage_order(...))`` item for item (its order sums the activations), and
the estimate must equal one read off the built orders."""

from __future__ import annotations

import itertools

from xpusim.hwprofiles import load_system
from xpusim.sim.models.spec import ModelSpec
from xpusim.sim.parallel import ParallelPlan, validate_plan
from xpusim.sim.placement import job_devices
from xpusim.sim.schedules import peak_in_flight, stage_order, stage_peak
from xpusim.sim.training.memory.full import rank_memory
from xpusim.sim.training.simulate import rank_plans, resolve_attention


def test_stage_peak_is_the_orders_peak_in_order():
    for p, v, m, interleaved, extra in itertools.product(
        (1, 2, 3, 4, 8), (1, 2, 3), (1, 2, 4, 8, 12, 24), (False, True), (0, 1)
    ):
        if v > 1 and not interleaved or interleaved and p > 1 and m % p:
            continue
        for s in range(p):
            want = list(peak_in_flight(stage_order(s, p, v, m, interleaved, extra)).items())
            assert list(stage_peak(s, p, v, m, interleaved, extra)) == want


def test_estimate_without_orders_equals_with_them():
    spec = ModelSpec(name="hand-dense", family="llama", hidden=1024, layers=8, heads=8,
                     kv_heads=4, head_dim=128, ffn=4096, vocab=32000)
    system = load_system("dgx-h100")
    for plan in (ParallelPlan(tp=2, pp=4, vpp=2, dp=1, mbs=1, gbs=32, seq=512),
                 ParallelPlan(tp=2, pp=4, dp=1, mbs=1, gbs=24, seq=512)):
        plan = resolve_attention(validate_plan(spec, plan, job_devices(plan, system)), system)
        _, built = rank_plans(spec, system, plan)
        _, bare = rank_plans(spec, system, plan, orders=False)
        assert all(rp.order for rp in built) and not any(rp.order for rp in bare)
        cap = system.device.hbm_capacity
        assert ([rank_memory(rp, plan, cap).as_dict() for rp in bare]
                == [rank_memory(rp, plan, cap).as_dict() for rp in built])
