"""MoE routing imbalance: how much hotter the busiest expert-parallel rank is.

Experts get a share p_e of all token-expert assignments:

* ``uniform``: p_e = 1/E (every EP rank gets exactly the mean);
* ``zipf:S``: p_e proportional to 1/r^S over popularity ranks r = 1..E, with the
  experts placed on EP ranks by a seeded random permutation per layer;
* ``hist:c1,...,cE``: a measured histogram, experts placed in order (E counts).

EP rank j holds experts [j*E/n, (j+1)*E/n); its load relative to the mean is
n * sum of its p_e. The all-to-all and the expert GEMMs wait for the busiest rank,
so the simulation runs the hot rank (``hot_factors``); a full-rank run gives each
rank its own load (``rank_loads``) and the collectives make everyone wait.
"""

from __future__ import annotations

import numpy as np
from xpusim.sim.errors import InputError
from xpusim.sim.models.spec import ModelSpec
from xpusim.sim.routing_text import parse_routing


def rank_loads(spec: ModelSpec, routing: str, ep_ranks: int, layer: int, seed: int) -> np.ndarray:
    """Load of each EP rank in ``layer`` relative to the mean (mean 1)."""
    if spec.moe is None or ep_ranks <= 1:
        return np.ones(max(ep_ranks, 1))
    kind, params = parse_routing(routing)
    experts = spec.moe.num_experts
    if kind == "uniform":
        return np.ones(ep_ranks)
    if kind == "zipf":
        shares = 1.0 / np.arange(1, experts + 1, dtype=float) ** params[0]
        rng = np.random.default_rng([seed, layer])
        shares = shares[rng.permutation(experts)]
    else:
        if len(params) != experts:
            raise InputError(
                f"moe_routing histogram has {len(params)} counts; "
                f"{spec.name} has {experts} experts per layer"
            )
        shares = np.asarray(params, dtype=float)
    shares = shares / shares.sum()
    per_rank = shares.reshape(ep_ranks, experts // ep_ranks).sum(axis=1)
    return per_rank * ep_ranks


def hot_factors(spec: ModelSpec, routing: str, ep_ranks: int, seed: int) -> dict[int, float]:
    """Busiest EP rank's load / mean load, per MoE layer index."""
    return {
        i: float(rank_loads(spec, routing, ep_ranks, i, seed).max())
        for i in range(spec.layers)
        if spec.is_moe_layer(i)
    }
