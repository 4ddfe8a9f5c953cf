"""The text of a MoE routing setting (``ParallelPlan.moe_routing``, ``--routing``).

'uniform' (every expert equally likely), 'zipf:S' (expert i's share ~ i^-S) or 'hist:c1,c2,...'
(measured tokens per expert). Parsed here, below both the plan checks (sim/parallel.py) and
the training routing model that turns it into per-expert loads (sim/training/routing.py).
"""

from __future__ import annotations

import math

from xpusim.sim.errors import InputError
from xpusim.sim.limits import check_zipf


def parse_routing(text: str) -> tuple[str, tuple[float, ...]]:
    """'uniform' | 'zipf:1.2' | 'hist:5,3,1,...' -> (kind, parameters)."""
    kind, _, rest = text.partition(":")
    try:
        if kind == "uniform" and not rest:
            return "uniform", ()
        if kind == "zipf":
            return "zipf", (check_zipf(rest, f"moe_routing '{text}'"),)
        if kind == "hist":
            counts = tuple(float(x) for x in rest.split(","))
            if not all(math.isfinite(c) and c >= 0 for c in counts) or sum(counts) <= 0:
                raise ValueError
            return "hist", counts
    except ValueError:
        pass
    raise InputError(
        f"moe_routing '{text}' not understood; use 'uniform', 'zipf:S' (0 <= S <= 100) "
        "or 'hist:c1,c2,...' (non-negative tokens per expert)"
    )
