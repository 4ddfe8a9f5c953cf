"""The project's training benchmark: wall seconds to simulate one Pangu Ultra MoE step."""

from __future__ import annotations

import time

from xpusim.hwprofiles import load_system
from xpusim.sim.parallel import ParallelPlan
from xpusim.sim.training.steady import simulate_training

# The headline plan of docs/training.md: 6,144 NPUs (768 Atlas 800T A2 nodes),
# TP8 PP16 VPP2 EP4, micro-batch 2, global batch 9216 x 4096 tokens (assumed).
PANGU_PLAN = ParallelPlan(
    tp=8,
    pp=16,
    vpp=2,
    ep=4,
    mbs=2,
    gbs=9216,
    seq=4096,
    sequence_parallel=True,
    recompute="selective",
)


def bench_train_pangu() -> float:
    """Wall seconds of ``xpusim train`` on the Pangu plan (model loading excluded)."""
    from xpusim.sim.models.hf_config import load_model

    spec = load_model("pangu-ultra-moe")
    system = load_system("atlas-800t-a2", nodes=768)
    start = time.perf_counter()
    simulate_training(spec, system, PANGU_PLAN)
    return time.perf_counter() - start
