"""The measured side of ``xpusim bench``: each figure runs in a fresh Python process,
which reports its wall and CPU seconds and its peak resident memory.

A fresh process per figure so that one figure's caches and heap do not inflate the
next one's memory or speed it up; peak memory is ``ru_maxrss`` of that process (and of
the worker processes it waited for, for the ``--jobs 2`` figures): the whole
interpreter, imports included, not only the simulation's objects.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

# What a figure function returns and a figure's process prints: "value", "detail", ...
Figure = dict[str, Any]


def _engine() -> Figure:
    from xpusim.sim.bench.engine_bench import bench_engine

    streamed = bench_engine(records=False)
    recorded = bench_engine(records=True)
    return {"value": streamed["ops_per_s"],
            "detail": f"{streamed['tasks']:.0f} tasks in {streamed['cpu_s']:.2f} s CPU; "
                      f"{recorded['ops_per_s']:,.0f} ops/s keeping per-task records (traces)"}


def _train(model: str, system: str, nodes: int, **plan: Any) -> Callable[[], Figure]:
    def run() -> Figure:
        from xpusim.hwprofiles import load_system
        from xpusim.sim.models.hf_config import load_model
        from xpusim.sim.parallel import ParallelPlan
        from xpusim.sim.training.steady import simulate_training

        spec = load_model(model)
        sysm = load_system(system, nodes=nodes)
        start = time.perf_counter()
        r = simulate_training(spec, sysm, ParallelPlan(**plan))
        wall = time.perf_counter() - start
        return {"value": wall, "detail": f"{r.devices:,} devices, step {r.step_time_s:.3f} s "
                                         f"simulated, {r.tasks:,} tasks"}

    return run


def _api(name: str, **fields: object) -> Callable[[], Figure]:
    """A study of the Python API (``xpusim.api``), as its command runs it."""

    def run() -> Figure:
        from xpusim import api

        start = time.perf_counter()
        getattr(api, name)(**fields)
        wall = time.perf_counter() - start
        return {"value": wall, "detail": f"xpusim.{name}(...)"}

    return run


def _wall(module: str, func: str) -> Callable[[], Figure]:
    def run() -> Figure:
        import importlib

        fn = getattr(importlib.import_module(module), func)
        start = time.perf_counter()
        out = fn()
        return {"value": out if isinstance(out, float) else time.perf_counter() - start,
                "detail": ""}

    return run


# The Pangu Ultra MoE headline plan of docs/training.md (sim.training.bench.PANGU_PLAN).
_PANGU = dict(tp=8, pp=16, vpp=2, ep=4, mbs=2, gbs=9216, seq=4096, sequence_parallel=True,
              recompute="selective")
# Megatron-LM's 1T GPT (Narayanan et al. 2021, Table 1): 3,072 A100s, TP8 PP64 DP6,
# global batch 3,072 (512 micro-batches per pipeline), fp16, full recompute, no SP.
_GPT_1T = dict(tp=8, pp=64, mbs=1, gbs=3072, seq=2048, dtype="fp16", recompute="full")

# name -> (function, unit, target text, target check on the value)
FIGURES: dict[str, tuple[Callable[[], Figure], str, str, Callable[[float], bool]]] = {
    "engine": (_engine, "simulated ops/s (one core, CPU time)", ">= 500,000",
               lambda v: v >= 500_000),
    "collective_4096": (_wall("xpusim.sim.network.bench", "bench_collective_4096"),
                        "s wall to cost a 4,096-rank all-to-all", "< 1 s", lambda v: v < 1.0),
    "train_pangu_6144": (_train("pangu-ultra-moe", "atlas-800t-a2", 768, **_PANGU),
                         "s wall, Pangu Ultra MoE step on 6,144 NPUs", "<= 0.5 s",
                         lambda v: v <= 0.5),
    "train_gpt3_1t_3072": (_train("gpt3-1t", "dgx-a100", 384, **_GPT_1T),
                           "s wall, Megatron 1T GPT step on 3,072 GPUs", "<= 1 s",
                           lambda v: v <= 1.0),
    "sd_sweep": (_wall("xpusim.sim.inference.bench", "bench_sd_sweep"),
                 "s wall for the 19-batch MoESD sweep", "< 30 s", lambda v: v < 30.0),
    "explore_study": (_wall("xpusim.sim.studies.bench", "bench_explore"),
                      "s wall, ~1,000-candidate study, --jobs 2", "< 300 s",
                      lambda v: v < 300.0),
    "pangu_study": (_api("explore", study=str(ROOT / "examples" / "pangu_ultra_moe_study.toml"),
                         jobs=2, no_cache=True),
                    "s wall, xpusim explore pangu_ultra_moe_study.toml --jobs 2", "<= 10 s",
                    lambda v: v <= 10.0),
    "validate_published": (_api("validate", published=True, jobs=2),
                           "s wall, xpusim validate --published --jobs 2", "<= 30 s",
                           lambda v: v <= 30.0),
}


def measure(name: str, timeout_s: float = 900.0) -> Figure:
    """Run figure ``name`` in a fresh process: its value, wall and CPU seconds, peak RSS."""
    cmd = [sys.executable, "-m", "xpusim.sim.bench.figures", name]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env,
                          cwd=ROOT)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"figure '{name}' failed: {tail[0]}")
    figure: Figure = json.loads(proc.stdout.strip().splitlines()[-1])
    return figure


def _child(name: str) -> None:
    fn = FIGURES[name][0]
    wall0, cpu0 = time.perf_counter(), time.process_time()
    out = fn()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    # ru_maxrss is KiB on Linux; the workers' CPU adds to this process's.
    out.update(
        wall_s=wall,
        cpu_s=cpu + kids.ru_utime + kids.ru_stime,
        peak_mb=max(me.ru_maxrss, kids.ru_maxrss) / 1024,
    )
    print(json.dumps(out))


if __name__ == "__main__":
    _child(sys.argv[1])
