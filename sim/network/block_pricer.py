"""``CollectivePricer.time`` for a block of sizes at once, to the bit.

A serving run prices the TP all-reduce of every decode batch size it meets: ~116,000
distinct sizes over ``validate --published``'s serving rows at ~60 µs each, 7 % of its CPU
(docs/performance.md, twenty-second session). The decode skeletons are priced by blocks of
256 batch sizes (``inference.batched_step``), and a collective's buffer there is
``v(1) + (B - 1)·step``; ``block_times`` prices such a block of sizes in one numpy pass.

Why the floats are the ones ``api._fastest`` and ``api.summed_with_copy`` give, not
merely close: every size-dependent number is the same IEEE operation on the same
operands in the same order, elementwise. The phases are built by ``algorithms.build``
itself with the sizes as a numpy array (ring, tree, NVLS and the two-level forms do
only ``+ - * /`` on the buffer); the loads are ``planned_phase_times``' sums over the
same load plans (kept in the pricer); ``max`` / ``min`` of non-NaN floats are
``np.maximum`` / ``np.minimum`` (the same value in any order); ``protocols``'
``int(math.log2(...))`` (the tree's medium-size correction) is taken per element by
``math.log2`` itself; the size-independent terms (NCCL's latency, the shares of it, the
bandwidth caps) are the scalar functions' own floats; the fastest (algorithm, protocol)
is the first with the smallest time, as ``_fastest``'s strict ``<`` keeps it.

Covered: NCCL systems, ``auto``, kinds other than send/recv and all-to-all (whose
protocol choice depends on the size), groups of 2 to ``GC_PAUSE_FROM`` - 1 ranks whose
phases are listed flows priced by the loop (``analytical._loop_priced``), sizes > 0.
Elsewhere ``block_times`` returns None and the caller prices per size.
``tests/test_block_pricer.py`` compares every size of several blocks with
``CollectivePricer.time`` (``==``).
"""

from __future__ import annotations

import math
from typing import Any, cast

import numpy as np
from xpusim.hwprofiles.spec import System
from xpusim.sim.ir import CollectiveKind
from xpusim.sim.network import analytical, api
from xpusim.sim.network import protocols as proto
from xpusim.sim.network.algorithms import build
from xpusim.sim.network.phases import Phase
from xpusim.sim.network.pricer import CollectivePricer

_UNCOVERED_KINDS = (CollectiveKind.SEND_RECV, CollectiveKind.ALL_TO_ALL,
                    CollectiveKind.ALL_TO_ALLV)
# Per phase: (transfer seconds per size, latency seconds).
_Terms = list[tuple[np.ndarray, float]]


def block_times(pricer: CollectivePricer, kind: CollectiveKind | str, group: tuple[int, ...],
                sizes: np.ndarray, algorithm: str = "auto") -> np.ndarray | None:
    """``pricer.time(kind, group, s, algorithm)`` for each size ``s`` of ``sizes`` (float64),
    the same floats; None where this module does not cover the request."""
    system = pricer.system
    if (not proto.is_nccl(system) or algorithm != "auto" or not sizes.size
            or not bool(np.all(sizes > 0))):
        return None
    checked, members, names, nodes = pricer.static(kind, group, algorithm)
    n = len(members)
    if n <= 1 or n >= api.GC_PAUSE_FROM or checked in _UNCOVERED_KINDS:
        return None
    if any(name not in proto._TUNED for name in names):
        return None
    best: tuple[np.ndarray, np.ndarray] | None = None
    for name in names:
        phases = build(checked, name, pricer.topo, members, cast(Any, sizes), checked=True)
        terms = [_phase_terms(pricer, ph, sizes) for ph in phases]
        if any(t is None for t in terms):
            return None
        listed = cast(_Terms, terms)
        if not bool(np.all(sum(t for t, _ in listed) > 0)):
            return None  # a zero transfer: the scalar path's own edge cases
        rounds = [ph.rounds for ph in phases]
        # For these algorithms the protocols do not depend on the size (``_default_protocols``).
        for p in proto.protocols(system, checked, name, float(sizes[0]), n):
            times = _protocol_times(pricer, checked, name, p, listed, rounds, sizes, n, nodes)
            t = cast(np.ndarray, sum(times))  # 0 + ... : the scalar path's own sum
            final = _summed_with_copy(system, checked, name, p, sizes, n, nodes, times, t)
            if best is None:
                best = (t, final)
            else:
                better = t < best[0]
                best = (np.where(better, t, best[0]), np.where(better, final, best[1]))
    return None if best is None else np.asarray(best[1], dtype=np.float64)


def _phase_terms(pricer: CollectivePricer, phase: Phase,
                 sizes: np.ndarray) -> tuple[np.ndarray, float] | None:
    """``analytical.planned_phase_times`` of a phase built on the block's sizes: (transfer
    per size, latency), or None where that function would take another path."""
    topo = pricer.topo
    if phase.a2a_groups or phase.a2a_bytes:
        return None
    flows = [f for f in phase.flows if f[0] != f[1]]  # ``Phase.expand`` without a2a pairs
    if not all(bool(np.all(np.asarray(f[2]) > 0)) for f in flows):
        return None
    if not analytical._loop_priced(topo, phase, flows):
        return None
    key = (phase.via_nic, tuple((src, dst) for src, dst, _ in flows),
           tuple(dev for dev, _ in phase.port_bytes))
    plan = pricer._plans.get(key)
    if plan is None:
        plan = pricer._plans[key] = analytical._load_plan(topo, phase, flows)
    links, hop, loaded = plan
    values = [f[2] for f in flows]
    values += [nbytes / phase.port_scale for _, nbytes in phase.port_bytes]
    transfer: Any = 0.0
    for capacity, parts in links:
        load: Any = 0.0
        for i in parts:
            load = load + values[i]
        transfer = np.maximum(transfer, load / capacity)
    latency = analytical.phase_latency(topo, phase, hop) if loaded else 0.0
    return np.broadcast_to(np.asarray(transfer, dtype=np.float64), sizes.shape), latency


def _protocol_times(pricer: CollectivePricer, kind: CollectiveKind, name: str, protocol: str,
                    terms: _Terms, rounds: list[int], sizes: np.ndarray, n: int,
                    nodes: int) -> list[np.ndarray]:
    """``api._protocol_parts``' (transfer + latency share) of each phase, NCCL branch."""
    system = pricer.system
    transfer = sum(t for t, _ in terms)  # > 0 (checked by the caller)
    simple_busbw = sizes * api.bus_factor(kind, n) / transfer
    frac = _fraction(system, kind, name, protocol, nodes, simple_busbw, sizes)
    weights = [max(1, r) for r in rounds]
    latency = pricer._latency_s(system, kind, name, protocol, n, nodes, sum(rounds))
    times = []
    for (transfer_s, _), w in zip(terms, weights, strict=True):
        share: Any = latency * w / sum(weights)
        t = transfer_s / frac
        if name == "nvls" and nodes == 1:
            share = share + _nvls_pipeline(sizes, n, t)
        times.append(t + share)
    return times


def _fraction(system: System, kind: CollectiveKind, name: str, protocol: str, nodes: int,
              simple_busbw: np.ndarray, sizes: np.ndarray) -> Any:
    """``protocols.bandwidth_fraction`` (not send/recv) per size."""
    t = proto.tuning()
    lib = system.collective_library
    p = proto._P[protocol]
    s = proto._scale(nodes)
    ll_row = lib.arch if nodes <= 1 else "volta"
    ll_cap = t.ll_max_bw[ll_row][s] * 1e9
    busbw = np.maximum(simple_busbw, 1.0)
    frac: Any
    if name == "tree":
        frac = (t.fraction["tree"] if nodes <= 1 else t.fraction["tree_multi_node"])[p]
        if protocol == "Simple":
            frac = np.minimum(frac, lib.channels * t.tree_per_ch[lib.arch][s] * 1e9 / busbw)
        elif protocol == "LL128":
            frac = np.minimum(frac, lib.channels * t.tree_ll128_per_ch[lib.arch][s] * 1e9
                              / busbw)
        else:
            frac = np.minimum(frac, ll_cap / busbw)
        if kind == CollectiveKind.ALL_REDUCE:
            frac = frac * _tree_correction(t.tree_correction[protocol], sizes)
        return frac
    frac = t.fraction["ring"][p]
    if protocol == "LL":
        frac = np.minimum(frac, ll_cap / busbw)
    elif protocol == "LL128":
        frac = np.minimum(frac, lib.channels * t.ring_ll128_per_ch[lib.arch][s] * 1e9 / busbw)
    return frac


def _tree_correction(table: Any, sizes: np.ndarray) -> np.ndarray:
    """The factor ``_tree_fraction`` multiplies by at each size (1.0 where it does not:
    ``x * 1.0 == x``), its index ``int(math.log2(size / 64))`` as there. For x = size / 64
    >= 1 that is ``frexp``'s exponent less one (x = m·2**e, 0.5 <= m < 1): ``log2`` is
    within an ulp of e + log2(m), which lies at least 1.3e-12 below e (> 5 ulps of e for
    e < 1,024) unless m > 1 - 2**-40, and a power of two's log2 is exact; those few sizes
    take ``math.log2`` itself (a per-size Python loop was ~20 % of a block's pricing)."""
    out = np.ones(sizes.shape)
    if not len(table):
        return out
    big = sizes >= 64
    m, e = np.frexp(sizes / 64)
    log_size = e.astype(np.int64) - 1
    for i in np.flatnonzero(big & (m > 1.0 - 2.0 ** -40)).tolist():
        log_size[i] = int(math.log2(float(sizes[i]) / 64))
    ok = big & (log_size >= 0) & (log_size < len(table))
    values = np.asarray(table, dtype=np.float64)
    return np.where(ok, values[np.clip(log_size, 0, len(table) - 1)], out)


def _nvls_pipeline(sizes: np.ndarray, heads: int, transfer_s: np.ndarray) -> Any:
    """``nvls.pipeline_s(nbytes, heads, transfer_s)`` per size (sizes > 0)."""
    if heads < 2:
        return 0.0
    cfg = proto.tuning().nvls
    tau = heads * cfg.step_overhead_us * 1e-6
    ops = cfg.channels * heads
    chunk = np.full(sizes.shape, cfg.max_chunk_bytes, dtype=np.int64)  # ``nvls.chunk_bytes``
    for mult, ceiling in cfg.chunk_rules:
        chunk = np.where((sizes < mult * ops * chunk) & (chunk > ceiling), ceiling, chunk)
    loop = cfg.channels * heads * chunk
    loop_max = cfg.channels * heads * cfg.max_chunk_bytes
    per_byte = np.maximum(0.0, transfer_s / sizes - tau / loop_max)
    fill = cfg.pipeline_fill_loops
    added = sizes * tau * (1 / loop - 1 / loop_max) + fill * (loop * per_byte + tau)
    return np.where(transfer_s > 0, added, 0.0)


def _summed_with_copy(system: System, kind: CollectiveKind, name: str, protocol: str,
                      sizes: np.ndarray, n: int, nodes: int, times: list[np.ndarray],
                      total: np.ndarray) -> np.ndarray:
    """``api.summed_with_copy``: ``total`` (``sum(times)``) where no read-mode copy applies."""
    copy_s = proto.read_mode_copy_s(system, kind, name, protocol, cast(Any, sizes), n, nodes)
    if isinstance(copy_s, float):  # 0.0: not a ring all-gather under P2P read
        return total
    return cast(np.ndarray, sum([times[0] + copy_s, *times[1:]]))
