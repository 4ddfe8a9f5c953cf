"""Network: topology from system profiles, collective algorithms, and their cost.

Public API (stable; studies and the engine use only this):

* ``cost_collective(system, kind, group, nbytes, algorithm="auto", backend="analytical")
  -> CollectiveResult`` — ``group`` holds global device ids (device d sits on node
  ``d // system.devices_per_node``); ``nbytes`` is the per-rank buffer as defined on
  ``sim.ir.Collective``.
* ``comm_time_fn(system) -> Callable[[Collective], float]`` for the engine.
"""

from sim.network.api import CollectiveResult, comm_time_fn, cost_collective

__all__ = ["CollectiveResult", "comm_time_fn", "cost_collective"]
