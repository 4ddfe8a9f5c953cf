"""Benchmark for ``xpusim bench``: wall time of the MoESD sweep (Python API, cold caches)."""

from __future__ import annotations

import time

from xpusim.hwprofiles import load_system
from xpusim.sim.inference.engine_profile import load_engine
from xpusim.sim.inference.moesd_reference import load_reference
from xpusim.sim.inference.speculative import SpeculativeModel
from xpusim.sim.models.hf_config import load_model
from xpusim.sim.parallel import ParallelPlan


def bench_sd_sweep() -> float:
    """Seconds to sweep the paper's batch sizes for Qwen2-57B-A14B and OPT-30B on 2xA800."""
    start = time.perf_counter()
    batches = load_reference().batches
    system = load_system("hgx-a800")
    engine = load_engine("vllm-0.6")
    for target, draft in (("qwen2-57b-a14b", "qwen2-0.5b"), ("opt-30b", "opt-350m")):
        model = SpeculativeModel(
            load_model(target), load_model(draft), system, ParallelPlan(tp=2), 4, 0.95, engine
        )
        model.sweep(batches)
    return time.perf_counter() - start
