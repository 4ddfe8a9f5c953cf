"""Protocols and per-step latencies: NCCL's tuning model as the library uses it.

NCCL prices every (algorithm, protocol) pair with ``time = latency + bytes / algbw``
and runs the cheapest (src/graph/tuning.cc, ``ncclTopoTuneModel`` and
``ncclTopoGetAlgoTime``); its constants live in ``sim/data/nccl_tuning.toml``.
Here the *bandwidth* side comes from the topology (the phases of
``xpusim.sim.network.algorithms`` priced link by link, at NCCL's effective per-link rate);
this module adds what the link loads do not show:

* the **protocol fraction** of that bandwidth: LL moves 4 data bytes per 8-byte
  word (a flag in the other half), 0.5; LL128 keeps 120 of 128 bytes, NCCL uses
  0.92; Simple 1.0; trees lose more (x0.92, LL x1/3.8, LL128 x7/9 on one node);
  capped by NCCL's absolute LL ceiling and per-channel LL128/tree ceilings;
* the **latency**: NCCL's base latency of the (algorithm, protocol) plus one
  hardware latency per step (NVLink, PCIe or network, per protocol), with the
  step counts of ring (2(n-1) for all-reduce, n-1 for reduce-scatter/all-gather),
  tree (2 x (chain inside the node + log2 nodes)) and NVLS (one switch round);
* NCCL's medium-size **tree correction** (trees under-run the model there).

Systems whose library is "hccl" or "generic" keep one protocol ("Simple") whose
steps each cost a hop latency plus the profile's ``step_overhead`` (HCCL publishes
no protocol or tuning model; see docs/collective.md).
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from xpusim.hwprofiles.spec import System
from xpusim.sim.ir import CollectiveKind

PROTOCOLS = ("LL", "LL128", "Simple")
_P = {p: i for i, p in enumerate(PROTOCOLS)}

# Algorithms the NCCL tuner knows (NCCL's names, lower case). ``pairwise``/``direct``
# (send/recv based all-to-all, p2p) are priced with the ring's per-step latencies.
_TUNED = ("ring", "tree", "nvls", "nvls_tree", "collnet")

# NCCL p2p (send/recv, all-to-all) uses LL up to NCCL_P2P_LL_THRESHOLD bytes per peer.
P2P_LL_THRESHOLD = 16384


@dataclass(frozen=True)
class NvlsTuning:
    """NCCL's NVLS chunk pipeline (nccl_tuning.toml [nvls]; sim/network/nvls.py)."""

    channels: int
    max_chunk_bytes: int
    chunk_rules: tuple[tuple[int, int], ...]  # (multiple of concurrentOps x chunk, ceiling)
    step_overhead_us: float
    pipeline_fill_loops: float


@dataclass(frozen=True)
class Tuning:
    base: dict[str, list[float]]
    hw: dict[str, dict[str, list[float]]]
    ll_max_bw: dict[str, list[float]]
    ring_ll128_per_ch: dict[str, list[float]]
    tree_per_ch: dict[str, list[float]]
    tree_ll128_per_ch: dict[str, list[float]]
    fraction: dict[str, list[float]]
    tree_correction: dict[str, list[float]]
    plateau: float
    plateau_pre_ampere: float
    net_overhead_us: float
    p2p: dict[str, float]
    nvls: NvlsTuning


@cache
def tuning() -> Tuning:
    text = (resources.files("xpusim.sim") / "data" / "nccl_tuning.toml").read_text(encoding="utf-8")
    d = tomllib.loads(text)
    misc = d["misc"]
    return Tuning(
        base=d["base_latency_us"],
        hw=d["hw_latency_us"],
        ll_max_bw=d["ll_max_bw"],
        ring_ll128_per_ch=d["ring_ll128_max_bw_per_channel"],
        tree_per_ch=d["tree_max_bw_per_channel"],
        tree_ll128_per_ch=d["tree_ll128_max_bw_per_channel"],
        fraction=d["protocol_fraction"],
        tree_correction=d["tree_correction"],
        plateau=misc["ring_plateau"],
        plateau_pre_ampere=misc["ring_plateau_pre_ampere"],
        net_overhead_us=misc["net_overhead_us"],
        p2p={k: float(v) for k, v in d["p2p"].items()},
        nvls=_nvls_tuning(d["nvls"]),
    )


def _nvls_tuning(d: dict[str, Any]) -> NvlsTuning:
    return NvlsTuning(
        channels=int(d["channels"]),
        max_chunk_bytes=int(d["max_chunk_bytes"]),
        chunk_rules=tuple((int(m), int(c)) for m, c in d["chunk_rules"]),
        step_overhead_us=float(d["step_overhead_us"]),
        pipeline_fill_loops=float(d["pipeline_fill_loops"]),
    )


def is_nccl(system: System) -> bool:
    return system.collective_library.name == "nccl"


def protocols(system: System, kind: CollectiveKind, algorithm: str, nbytes: float, n: int) -> list[str]:
    """Protocols NCCL would consider for ``algorithm`` (the auto choice picks among them),
    among those the profile's ``collective_library.protocols`` enables (NCCL_PROTO)."""
    if not is_nccl(system):
        return ["Simple"]
    enabled = system.collective_library.protocols
    return [p for p in _default_protocols(system, kind, algorithm, nbytes, n) if p in enabled] or [
        "Simple"
    ]


def _default_protocols(
    system: System, kind: CollectiveKind, algorithm: str, nbytes: float, n: int
) -> list[str]:
    if algorithm in ("nvls", "nvls_tree", "collnet"):
        return ["Simple"]  # NCCL runs NVLS and CollNet with Simple only
    if algorithm in ("pairwise", "direct", "hierarchical") or kind == CollectiveKind.SEND_RECV:
        per_peer = nbytes / max(1, n) if kind != CollectiveKind.SEND_RECV else nbytes
        return ["LL"] if per_peer <= P2P_LL_THRESHOLD else ["Simple"]
    # LL128 is enabled by default only over NVLink (tuning.cc: "Enable LL128 by default
    # only on Volta/Ampere/Hopper+NVLink"); PCIe systems get LL and Simple.
    if system.intra_topology != "switch":
        return ["LL", "Simple"]
    return list(PROTOCOLS)


def _scale(nodes: int) -> int:
    return 0 if nodes <= 1 else 1 if nodes == 2 else 2


def bandwidth_fraction(
    system: System,
    kind: CollectiveKind,
    algorithm: str,
    protocol: str,
    nodes: int,
    simple_busbw: float,
    nbytes: float,
    n: int = 2,
) -> float:
    """The share of the Simple-protocol bandwidth that ``protocol`` reaches.

    ``simple_busbw`` (bytes/s) is the bus bandwidth the link model gives with Simple;
    NCCL's absolute caps (LL ceiling, per-channel LL128 and tree ceilings) are bus
    bandwidths too, so the fraction is min(protocol share, cap / simple_busbw). A
    send/recv inside a node is also capped by the channels it runs on
    (``p2p_bandwidth``; ``n`` is the communicator's size).
    """
    if not is_nccl(system):
        return 1.0
    if kind == CollectiveKind.SEND_RECV and nodes <= 1 and protocol == "Simple":
        return min(1.0, p2p_bandwidth(system, n, nbytes) / max(simple_busbw, 1.0))
    t = tuning()
    lib = system.collective_library
    p = _P[protocol]
    s = _scale(nodes)
    # LL: for one node NCCL looks up the GPU architecture, across nodes the host CPU
    # (Intel assumed: the first row).
    ll_row = lib.arch if nodes <= 1 else "volta"
    ll_cap = t.ll_max_bw[ll_row][s] * 1e9
    busbw = max(simple_busbw, 1.0)
    if algorithm == "tree":
        return _tree_fraction(system, kind, protocol, nodes, busbw, ll_cap, nbytes)
    if algorithm in _TUNED or algorithm in ("pairwise", "direct", "hierarchical"):
        frac = t.fraction["ring"][p]
        if protocol == "LL":
            frac = min(frac, ll_cap / busbw)
        elif protocol == "LL128":
            frac = min(frac, lib.channels * t.ring_ll128_per_ch[lib.arch][s] * 1e9 / busbw)
        return frac
    return 1.0


def _tree_fraction(
    system: System,
    kind: CollectiveKind,
    protocol: str,
    nodes: int,
    busbw: float,
    ll_cap: float,
    nbytes: float,
) -> float:
    """``bandwidth_fraction`` of a tree: NCCL's tree shares, per-channel caps and its
    medium-size correction."""
    t = tuning()
    lib = system.collective_library
    p = _P[protocol]
    s = _scale(nodes)
    frac = (t.fraction["tree"] if nodes <= 1 else t.fraction["tree_multi_node"])[p]
    if protocol == "Simple":
        frac = min(frac, lib.channels * t.tree_per_ch[lib.arch][s] * 1e9 / busbw)
    elif protocol == "LL128":
        frac = min(frac, lib.channels * t.tree_ll128_per_ch[lib.arch][s] * 1e9 / busbw)
    else:
        frac = min(frac, ll_cap / busbw)
    if kind == CollectiveKind.ALL_REDUCE and nbytes >= 64:
        log_size = int(math.log2(nbytes / 64))
        table = t.tree_correction[protocol]
        if 0 <= log_size < len(table):
            frac *= table[log_size]
    return frac


def _pow2_up(x: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, x))))


def p2p_channels(system: System, n: int, nbytes: float) -> int:
    """Channels NCCL runs one intra-node send (or receive) of ``nbytes`` on, in a
    communicator of ``n`` ranks (the rules are in sim/data/nccl_tuning.toml, [p2p])."""
    return p2p_parts(system, n, nbytes)[0]


def p2p_parts(system: System, n: int, nbytes: float) -> tuple[int, float]:
    """(parts, bytes of the largest) of one intra-node send of ``nbytes``: NCCL cuts the
    operation into parts of ``calcP2pChunkSize`` bytes, one channel each (enqueue.cc,
    NCCL 2.18-2.21: size = max(minSize, ceil(bytes / nChannelsMin)), doubled channels while
    size > maxSize, then alignUp(size, minSize)), so the parts are equal but the last, and
    64 KiB + 1 byte over NVLink is a 64 KiB part and a 1-byte part, not two halves."""
    p = tuning().p2p
    lib = system.collective_library
    nvlink = system.intra_topology == "switch"
    p2p_n = _pow2_up(min(lib.channels, int(p["max_channels"])))
    # ncclTopoGetNchannels: 2 x the NVLinks to the peer (2 over PCIe).
    links = system.links_per_device if nvlink else 1
    per_peer = min(_pow2_up(min(p2p_n, 2 * max(1, links))), p2p_n)
    ch_min = ch_max = per_peer
    while ch_min * n > p2p_n and ch_min > 1:
        ch_min //= 2
    if p["cap_max_channels_by_ranks"]:
        while ch_max * n > 4 * p2p_n and ch_max > 1:
            ch_max //= 2
    chunk = p["nvl_chunk_bytes"] if nvlink else p["pci_chunk_bytes"]
    min_part, max_part = chunk / 8, chunk * 32
    size = max(min_part, math.ceil(nbytes / ch_min))
    nch = ch_min
    while size > max_part and nch <= ch_max // 2:
        nch *= 2
        size = math.ceil(nbytes / nch)
    part = math.ceil(size / min_part) * min_part  # alignUp(size, minSize)
    return max(1, math.ceil(nbytes / part)), min(float(nbytes), part)


def p2p_bandwidth(system: System, n: int, nbytes: float) -> float:
    """Bytes/s one direction of an intra-node NCCL send/recv reaches on its channels:
    each part on its own channel at half a CTA's Simple rate (NCCL's per-channel Simple
    ceiling, perChMaxTreeBws one node; send and receive share the CTA's warps), so the
    send lasts as long as its largest part (``p2p_parts``)."""
    t = tuning()
    per_channel = t.tree_per_ch[system.collective_library.arch][0] * 1e9 * t.p2p["channel_share"]
    _, largest = p2p_parts(system, n, nbytes)
    return per_channel * nbytes / largest if largest > 0 else per_channel


def read_mode_copy_s(
    system: System,
    kind: CollectiveKind,
    algorithm: str,
    protocol: str,
    nbytes: float,
    n: int,
    nodes: int,
) -> float:
    """The serial local copy of an out-of-place ring all-gather under P2P *read*.

    NCCL reads, not writes, over NVLink between two SM80 GPUs (src/graph/paths.cc,
    ncclTopoCheckP2p: "Enable P2P Read for Ampere/NVLink only"), for the Simple
    protocol. The ring all-gather's step 0 is then ``directCopySend`` of the rank's
    own chunk (src/device/all_gather.h): the kernel copies input to output in its
    own memory and the next rank pulls it later, so that copy (nbytes / n, read and
    written once each in HBM) runs in series with the n - 1 NVLink reads instead of
    riding on a write to the peer. Reduce-scatter and all-reduce have no such step:
    their local writes happen as the reads arrive. The copy is priced at the HBM's
    line rate (an upper bound: no per-CTA copy rate is published). Rings across
    nodes are left out: their step 0 may go to the network, not over NVLink.
    """
    if not is_nccl(system) or system.collective_library.arch != "ampere":
        return 0.0
    if (kind, algorithm, protocol) != (CollectiveKind.ALL_GATHER, "ring", "Simple"):
        return 0.0
    if nodes > 1 or system.intra_topology != "switch" or n < 2:
        return 0.0
    return 2 * (nbytes / n) / system.device.hbm_bandwidth


def _intra_hw(system: System) -> str:
    return "nvlink" if system.intra_topology == "switch" else "pci"


def latency_s(
    system: System,
    kind: CollectiveKind,
    algorithm: str,
    protocol: str,
    n: int,
    nodes: int,
    rounds: int,
) -> float:
    """NCCL's latency of (algorithm, protocol) on ``n`` ranks over ``nodes`` nodes.

    ``rounds``: the latency steps of the phases (used for the p2p algorithms, which
    NCCL's tuner does not price).
    """
    t = tuning()
    p = _P[protocol]
    intra_hw = _intra_hw(system)
    table = "ring" if algorithm not in _TUNED else algorithm
    base = t.base[table][p]
    intra = t.hw[intra_hw][table][p]
    # One network step: NCCL's hwLat[NET] plus the graph's network latency (the NIC's),
    # charged twice with Simple (the data and the flush of the receive buffer).
    nic = system.nic.latency * 1e6
    inter = t.hw["net"][table][p] + nic * (2 if protocol == "Simple" else 1)
    ppn = max(1, n // max(1, nodes))
    if algorithm in ("pairwise", "direct", "hierarchical") or kind == CollectiveKind.SEND_RECV:
        step = inter if nodes > 1 else intra
        return (base + rounds * step) * 1e-6
    if algorithm == "ring":
        if kind == CollectiveKind.BROADCAST:
            # Not the same channels both ways: NCCL adds a chunk latency per step,
            # the tree's Simple latency ("waiting for proper chunk modeling").
            hw = "net" if nodes > 1 else intra_hw
            step = t.hw[hw]["tree"][p] if protocol == "Simple" else t.hw[hw]["ring"][p]
            return (base + n * step) * 1e-6
        nsteps = 2 * (n - 1) if kind == CollectiveKind.ALL_REDUCE else n - 1
        n_inter = 0
        if nodes > 1:
            n_inter = 2 * (nodes - 1) if kind == CollectiveKind.ALL_REDUCE else nodes - 1
            overhead = t.net_overhead_us * (3 if protocol == "Simple" else 1)
            intra = max(intra, overhead)
        lat = base + (nsteps - n_inter) * intra + n_inter * inter
        if nodes > 1 and kind == CollectiveKind.ALL_REDUCE and protocol == "Simple":
            pre = system.collective_library.arch == "volta"
            lat *= t.plateau_pre_ampere if pre else t.plateau  # "plateau effect of ring"
        return lat * 1e-6
    levels = int(math.log2(nodes)) if nodes > 1 else 0
    if algorithm == "tree":
        return (base + 2 * ((ppn - 1) * intra + levels * inter)) * 1e-6
    if algorithm == "nvls":
        return (intra + (inter if nodes > 1 else 0.0)) * 1e-6
    if algorithm == "nvls_tree":
        return (base + intra + 2 * levels * inter) * 1e-6
    # collnet (chain): the chain inside the node, one trip through the switch tree.
    return (base + 2 * (ppn - 1) * intra + inter) * 1e-6
