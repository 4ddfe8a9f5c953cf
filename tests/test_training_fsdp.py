"""ZeRO-3 / FSDP lowered per slot (layer) with one-ahead prefetch (sim/training/lowering.py).

Hand checks: the per-slot gathers sum to the chunk's parameters; each slot gathers
twice (forward and backward) and reduce-scatters once, so with DP traffic blocking
(--no-overlap-dp) the DP busy time is the sum of those collectives' network times;
with overlap (FSDP2 prefetch) the compute stream only waits for the first gather and
the last reduce-scatter, so the exposed communication drops and the step is never
shorter than its compute.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from xpusim.hwprofiles import load_system
from xpusim.sim.ir import Collective, CollectiveKind
from xpusim.sim.models.spec import ModelSpec
from xpusim.sim.network import comm_time_fn
from xpusim.sim.parallel import Layout, ParallelPlan
from xpusim.sim.training import simulate_training
from xpusim.sim.training.lowering import build_chunks, fsdp_comms, slot_context

DENSE = ModelSpec("tiny-dense", "llama", hidden=1024, layers=4, heads=16, kv_heads=4,
                  head_dim=64, ffn=2816, vocab=4096)
PLAN = ParallelPlan(tp=1, pp=1, dp=16, mbs=1, gbs=16, seq=2048, zero=3, dtype="bf16")


@pytest.fixture(scope="module")
def system():
    return load_system("dgx-a100", nodes=2)


def _chunk(system, plan):
    layout = Layout(plan)
    comp, _ = slot_context(DENSE, plan, system, layout, 0, False)
    (chunk,) = build_chunks(DENSE, plan, comp, 0)
    return chunk


def test_per_slot_gathers_sum_to_chunk_params(system):
    chunk = _chunk(system, PLAN)
    total = sum(c.nbytes for i in range(len(chunk.slots))
                for c in fsdp_comms(chunk, i, CollectiveKind.ALL_GATHER, 2.0))
    assert total == pytest.approx(2.0 * chunk.dense_params)
    # a layer: q, k, v, o and the SwiGLU GEMMs (norms left out, as the lowering does)
    layer = next(i for i, (name, _) in enumerate(chunk.slots) if name == "L0")
    attn = 1024 * 1024 * 2 + 1024 * 256 * 2  # q, o: h x h; k, v: h x kv_heads*head_dim
    mlp = 3 * 1024 * 2816
    assert chunk.slot_params[layer] == (pytest.approx(attn + mlp), 0.0)


def test_blocking_dp_time_is_the_sum_of_per_slot_collectives(system):
    plan = replace(PLAN, overlap_dp=False)
    chunk = _chunk(system, plan)
    comm = comm_time_fn(system)
    group = tuple(range(16))
    expected = 0.0
    for i in range(len(chunk.slots)):
        for kind, b, times in ((CollectiveKind.ALL_GATHER, 2.0, 2),
                               (CollectiveKind.REDUCE_SCATTER, 4.0, 1)):
            for c in fsdp_comms(chunk, i, kind, b):
                expected += times * comm(Collective(c.name, kind, group, c.nbytes))
    # + the gradient-clipping norm: one fp32 all-reduced over every rank
    expected += comm(Collective("norm", CollectiveKind.ALL_REDUCE, group, 4.0))
    r = simulate_training(DENSE, system, plan)
    assert r.breakdown()["comm_dp"] == pytest.approx(expected, rel=1e-6)


def test_prefetch_hides_the_gathers(system):
    blocking = simulate_training(DENSE, system, replace(PLAN, overlap_dp=False))
    overlap = simulate_training(DENSE, system, PLAN)
    assert overlap.exposed_comm_s < blocking.exposed_comm_s
    assert overlap.step_time_s < blocking.step_time_s
    compute = sum(overlap.breakdown().get(k, 0.0) for k in ("fwd", "bwd", "recompute"))
    assert overlap.step_time_s >= compute
