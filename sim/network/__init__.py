"""Network: topology from system profiles, collective algorithms, and their cost.

Public API (stable; studies and the engine use only this):

* ``cost_collective(system, kind, group, nbytes, algorithm="auto", backend="analytical")
  -> CollectiveResult`` — ``group`` holds global device ids (device d sits on node
  ``d // system.devices_per_node``); ``nbytes`` is the per-rank buffer as defined on
  ``sim.ir.Collective``.
* ``collective_time(system, kind, group, nbytes, algorithm="auto") -> float``: the
  same collective's ``time_s`` (analytical backend), without the report.
* ``comm_time_fn(system) -> Callable[[Collective], float]`` for the engine.
* ``cost_network(system, phases, backend)`` prices arbitrary phases of flows (all-to-allv).

Modules: ``topology`` (links from the profile), ``algorithms`` (collectives as phases),
``analytical`` and ``flow`` (the two backends), ``api`` (choice + dispatch), ``pricer``
(the engines' per-system collective pricer behind ``comm_time_fn``), ``block_pricer``
(that pricer's times for a block of sizes at once, the same floats), ``ep``
(the expert-parallel dispatch/combine study), ``bench``
(the 4,096-rank figure for ``xpusim bench``).
"""

from xpusim.sim.network.api import (
    CollectiveResult,
    bus_factor,
    collective_time,
    cost_collective,
    cost_network,
)
from xpusim.sim.network.bench import bench_collective_4096
from xpusim.sim.network.phases import Phase
from xpusim.sim.network.pricer import comm_time_fn

__all__ = [
    "CollectiveResult",
    "Phase",
    "bench_collective_4096",
    "bus_factor",
    "collective_time",
    "comm_time_fn",
    "cost_collective",
    "cost_network",
]
