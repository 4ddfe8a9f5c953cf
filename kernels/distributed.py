"""Run a function on N local processes joined by ``torch.distributed`` over gloo.

Used by the expert-parallel MoE kernel and its tests (and available to any kernel
that needs a small CPU process group): ``run_distributed(fn, world_size, *args)``
spawns ``world_size`` processes, initialises a gloo process group in each, calls
``fn(rank, world_size, *args)`` and returns the per-rank results in rank order.

Processes are started with the ``spawn`` method (a forked child of a process whose
torch thread pools already run can deadlock), the rendezvous is a file store in a
fresh temporary directory (no TCP port to pick or to collide on), and an exception
in any rank is re-raised in the parent with that rank's traceback.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import queue
import tempfile
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist


def _worker(
    rank: int,
    world_size: int,
    store_path: str,
    fn: Callable[..., Any],
    args: tuple,
    results: mp.Queue,
    threads: int,
) -> None:
    # Each rank gets a share of the cores; N ranks x all cores would oversubscribe.
    torch.set_num_threads(threads)
    try:
        dist.init_process_group(
            "gloo", init_method=f"file://{store_path}", rank=rank, world_size=world_size
        )
        try:
            value = fn(rank, world_size, *args)
        finally:
            dist.destroy_process_group()
        # Plain pickle copies tensor data; torch's multiprocessing pickler would pass
        # shared-memory handles that die with this process.
        results.put((rank, True, pickle.dumps(value)))
    except BaseException:  # report every failure to the parent, then exit
        results.put((rank, False, traceback.format_exc()))


def run_distributed(
    fn: Callable[..., Any],
    world_size: int,
    *args: Any,
    timeout_s: float = 600.0,
) -> list[Any]:
    """Call ``fn(rank, world_size, *args)`` on ``world_size`` gloo ranks; return results by rank.

    ``fn`` must be importable by name (a module-level function) and its arguments and
    return value picklable, because the children are spawned. Raises ``RuntimeError``
    with the failing rank's traceback if any rank raises, or if the ranks do not all
    report within ``timeout_s``. The limit only guards against a hung rank: spawning
    the children and importing torch took over 120 s on a loaded 2-core machine (four
    ranks at once, nineteenth session), so the default leaves room for that.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    ctx = mp.get_context("spawn")
    results: mp.Queue = ctx.Queue()
    threads = max(1, (os.cpu_count() or 1) // world_size)
    with tempfile.TemporaryDirectory(prefix="xpusim-gloo-") as tmp:
        store = os.path.join(tmp, "store")
        procs = [
            ctx.Process(target=_worker, args=(r, world_size, store, fn, args, results, threads))
            for r in range(world_size)
        ]
        for p in procs:
            p.start()
        collected: dict[int, Any] = {}
        failures: list[str] = []
        try:
            for _ in range(world_size):
                rank, ok, value = results.get(timeout=timeout_s)
                if ok:
                    collected[rank] = pickle.loads(value)
                else:
                    failures.append(f"rank {rank} failed:\n{value}")
                    break  # the other ranks may now hang in a collective
        except queue.Empty:
            failures.append(f"not all ranks reported within {timeout_s} s")
        finally:
            for p in procs:
                p.join(timeout=5 if not failures else 0.5)
            for p in procs:
                if p.is_alive():
                    p.terminate()
                    p.join()
    if failures:
        raise RuntimeError("\n".join(failures))
    return [collected[r] for r in range(world_size)]
