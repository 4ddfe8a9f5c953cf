"""Performance figure for ``xpusim bench``: wall time to cost a 4,096-rank all-to-all."""

from __future__ import annotations

import time

from xpusim.hwprofiles import load_system
from xpusim.hwprofiles.spec import System
from xpusim.sim.ir import CollectiveKind
from xpusim.sim.network.api import cost_collective


def bench_collective_4096(system: System | None = None) -> float:
    """Wall seconds to cost a 4,096-rank all-to-all (auto algorithm, analytical backend).

    Default system: 512 Atlas 800T A2 nodes. The uniform all-to-all is priced by
    symmetry (one representative per local index), never by listing its 16.8M flows.
    """
    if system is None:
        system = load_system("atlas-800t-a2", nodes=4096 // 8)
    start = time.perf_counter()
    cost_collective(system, CollectiveKind.ALL_TO_ALL, range(4096), 2**30, "auto")
    return time.perf_counter() - start
