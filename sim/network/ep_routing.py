"""Where a token's top-k routing sends it, for the EP traffic model (sim/network/ep.py).

``expert_probabilities`` gives each expert's share of routing decisions (uniform, Zipf with a
seeded placement, or a measured histogram); ``inclusion_probabilities`` and ``prob_hit`` turn
them into the chance that a token's top-k touches an expert or a group of experts (a device,
a node), which sizes the de-duplicated traffic; ``predicted_dedup_ratio`` is the closed form
of the flat / hierarchical byte ratio under uniform routing (ep.py's module docstring).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from xpusim.sim.errors import InputError
from xpusim.sim.inputs import read_text
from xpusim.sim.limits import check_zipf


def expert_probabilities(routing: str, experts: int, seed: int = 0) -> np.ndarray:
    """p_e: share of routing decisions that go to each expert (sums to 1)."""
    if routing == "uniform":
        return np.full(experts, 1.0 / experts)
    if routing.startswith("zipf:"):
        s = check_zipf(routing.split(":", 1)[1], f"--routing {routing}")
        with np.errstate(over="ignore"):  # i^S overflows to inf at large S: weight 0, as it is
            weights = 1.0 / np.arange(1, experts + 1) ** s
        # A seeded permutation places the hot experts on arbitrary devices.
        weights = weights[np.random.default_rng(seed).permutation(experts)]
        probs: np.ndarray = weights / weights.sum()
        return probs
    if routing.startswith("hist:"):
        path = Path(routing.split(":", 1)[1])
        text = read_text(path, f"--routing {routing}: histogram")  # sim.inputs checks
        words = text.replace(",", " ").split()
        try:
            counts = np.array([float(x) for x in words])
        except ValueError:
            bad = next(w for w in words if not _is_number(w))
            raise InputError(
                f"--routing {routing}: the histogram {path} must hold numbers (one token count "
                f"per expert); {bad!r} is not one"
            ) from None
        if (
            len(counts) != experts
            or not np.isfinite(counts).all()
            or counts.min() < 0
            or counts.sum() <= 0
        ):
            raise InputError(
                f"--routing {routing}: need {experts} non-negative counts "
                f"(one per expert), got {len(counts)}"
            )
        shares: np.ndarray = counts / counts.sum()
        return shares
    raise InputError(f"--routing {routing}: choose uniform, zipf:S or hist:FILE")


def inclusion_probabilities(p: np.ndarray, k: int, uniform: bool) -> np.ndarray:
    """pi_e = P(expert e among a token's top-k); sums to k."""
    if uniform:
        return np.full(len(p), k / len(p))
    pi = 1.0 - (1.0 - p) ** k
    scaled: np.ndarray = np.minimum(1.0, pi * k / pi.sum())
    return scaled


def prob_hit(pi: np.ndarray, members: np.ndarray, k: int, uniform: bool) -> float:
    """P(a token's top-k touches at least one expert in ``members``)."""
    e, m = len(pi), len(members)
    if uniform:
        return 1.0 - math.comb(e - m, k) / math.comb(e, k)
    return float(1.0 - np.prod(1.0 - pi[members]))


def predicted_dedup_ratio(experts: int, top_k: int, nodes: int) -> float:
    """Flat / hierarchical inter-node bytes under uniform routing (see module doc)."""
    if nodes <= 1:
        return 1.0
    flat = top_k * (nodes - 1) / nodes
    p_node = 1.0 - math.comb(experts - experts // nodes, top_k) / math.comb(experts, top_k)
    return flat / ((nodes - 1) * p_node)


def _is_number(word: str) -> bool:
    try:
        float(word)
    except ValueError:
        return False
    return True
