"""Engine throughput: simulated ops per second on a realistic multi-stream graph."""

from __future__ import annotations

import time

from xpusim.sim.engine import Engine
from xpusim.sim.ir import Collective, CollectiveKind, RankGraph, Stream
from xpusim.sim.ops import elementwise, gemm


def build_graphs(ranks: int, layers: int) -> list[RankGraph]:
    """Each rank: per layer 4 compute ops and one all-reduce on the comm stream that
    the next layer's first op waits for — the shape of a tensor-parallel forward."""
    ops = [gemm("qkv", 4096, 6144, 4096), elementwise("act", 4096 * 4096),
           gemm("up", 4096, 16384, 4096), gemm("down", 4096, 4096, 16384)]
    group = tuple(range(ranks))
    graphs = []
    for r in range(ranks):
        g = RankGraph(r)
        wait: tuple[int, ...] = ()
        for layer in range(layers):
            last = -1
            for i, op in enumerate(ops):
                last = g.add(op, Stream.COMPUTE, wait if i == 0 else ())
            coll = Collective("ar", CollectiveKind.ALL_REDUCE, group, 32e6, tag=layer)
            wait = (g.add(coll, Stream.COMM, (last,)),)
        graphs.append(g)
    return graphs


def bench_engine(ops_target: int = 200_000, records: bool = False) -> dict[str, float]:
    """Simulated ops per CPU second of this process (one core: the engine is
    single-threaded, and CPU time does not count other work on a shared machine).
    ``records=False`` is the default simulation path (streamed breakdown);
    ``records=True`` also builds one Record per task (traces and timelines)."""
    ranks = 4
    layers = max(1, ops_target // (ranks * 5))
    graphs = build_graphs(ranks, layers)
    n_tasks = sum(len(g.tasks) for g in graphs)
    start, cpu = time.perf_counter(), time.process_time()
    result = Engine(graphs, lambda op: 1e-4, lambda c: 5e-5).run(records=records)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    assert result.makespan_s > 0
    return {"tasks": n_tasks, "wall_s": wall, "cpu_s": cpu, "ops_per_s": n_tasks / cpu}
