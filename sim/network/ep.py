"""Expert-parallel dispatch/combine: traffic from routing, priced on the network.

The EP group is devices 0..P-1 (filling nodes in order); the E routed experts are
spread evenly, E/P consecutive experts per device. Each device holds T tokens of
``hidden`` elements; a token goes to its top-k experts. Traffic is computed as
*expected* bytes from the routing distribution (deterministic, no sampling):

* ``pi_e`` — probability that a token picks expert e among its k. Uniform routing:
  k/E exactly. Zipf(s) (``p_e`` proportional to 1/rank^s over a seeded permutation of
  experts) or a measured histogram: ``pi_e = 1 - (1 - p_e)^k`` (k independent draws),
  rescaled so the pi sum to k.
* ``P(set A hit)`` — probability that at least one of a token's k experts lies in A
  (a device's or a node's experts). Uniform: exactly ``1 - C(E-|A|, k) / C(E, k)``
  (hypergeometric). Otherwise ``1 - prod_{e in A}(1 - pi_e)`` (independent experts).

Dispatch modes (combine sends the same bytes back along the reverse paths):

* ``flat`` — one all-to-allv over the EP group; a token is sent once per destination
  *expert*: ``T * sum_{e on d} pi_e`` tokens from each device to device d (copies for
  experts on the sender itself stay local). Pairwise: P-1 latency steps.
* ``hierarchical`` — Pangu Ultra MoE's hierarchical EP all-to-all: an inter-node
  stage sends each token once per destination *node* to the same-rail peer there,
  then an intra-node all-to-all delivers it once per destination *device*. Two
  sequential phases.
* ``deepep`` — the DeepEP normal kernels. Across nodes (deepseek-ai/DeepEP
  README, csrc/kernels/internode.cu): the same de-duplicated bytes as
  ``hierarchical``, but RDMA to the same-rail peer and NVLink forwarding run
  concurrently (one pipelined phase, nodes-1 latency steps). Inside one node, and
  on a supernode whose whole fabric is one load/store domain (DeepEP-Ascend on
  CloudMatrix384 runs its *intranode* kernel over the full UB mesh,
  sgl-kernel-npu README), a token goes straight to every destination *device*
  holding one of its experts, once per device: ``T * P(d hit)`` tokens from each
  device to device d, priced as a pairwise all-to-allv (P-1 latency steps).
* ``low-latency`` — DeepEP's low-latency kernels (csrc/kernels/internode_ll.cu):
  one RDMA message per (token, expert) copy, sent straight to the expert's device
  with no de-duplication and no forwarding; all messages are posted at once
  (IBGDA), so one latency step. ``ll_intranode`` picks the path of same-node copies:
  ``nic`` (default), NIC to NIC (pure RDMA, NVSHMEM_DISABLE_P2P=1, as the V1 README @
  ebfe47e measured them); ``fabric``, a store over NVLink/xGMI (DeepEP #173's
  ``allow_nvlink_for_low_latency_mode``, UCCL-EP's IPC path), alongside the RDMA. On a
  supernode the UB fabric carries every copy either way. DeepEP's combine and
  DeepEP-Ascend's dispatch then make a local pass that waits for every copy first
  (``local_pass_s``), added to their time.
  DeepEP-Ascend's *normal* kernels on a supernode send one row per (token, expert),
  stage the dispatch before the transfer and reduce the combine after it
  (ep_ascend.py).

``deepep_bytes_per_rank`` is the byte count DeepEP's own benchmarks divide by the
kernel time to print their "bottleneck bandwidth" (tests/test_internode.py,
test_intranode.py, test_low_latency.py; sgl-kernel-npu's tests copy them):
internode, ``num_rdma_token_sent`` = (token, destination node) pairs *including
the sender's own node*; intranode, the tokens a rank receives including those from
itself; low-latency, every (token, expert) copy. It is a logical count: the local
share never crosses the link it is named after.

DeepEP's messages carry more than ``hidden x dtype`` bytes per token copy, and its
benchmarks count the extra bytes too (``message_sizes``): a 1-byte (FP8 / INT8)
token carries one float32 scale per 128 elements (``per_token_cast_to_fp8`` in
tests/utils.py; test_internode.py's ``fp8_factor = (1 + 4 / 128) / 2``), and a
low-latency *dispatch* message adds a 16-byte header, the token's source index
(csrc/kernels/internode_ll.cu: ``num_bytes_per_msg = sizeof(int4) + hidden +
num_scales * sizeof(float)``; test_low_latency.py counts ``hidden + hidden / 128 *
4 + 16``). The low-latency BF16 combine sends bare ``hidden x 2`` bytes. On Huawei
devices (DeepEP-Ascend, sgl-kernel-npu) the low-latency dispatch runs CANN's
MoeDistributeDispatchV2, whose message is the token padded to 32 B plus a 32-B scale
slot and a 12-B index triple (7212 B for an INT8 7168-wide token), while the
benchmark still counts DeepEP's 7408 B; its normal INT8 dispatch carries one float
scale per token. The flat and hierarchical modes keep ``hidden x dtype``.

With a capacity factor ``cf`` each expert keeps at most ``cf * P*T*k/E`` tokens
(drop-and-pad); the kept share of a device's tokens scales every byte sent to it.

Dedup analysis (uniform routing, N nodes of the EP group): flat sends a token
``k (N-1)/N`` times across nodes on average; hierarchical sends it once per remote
node hit, ``(N-1) (1 - C(E - E/N, k) / C(E, k))`` times. Their ratio is the predicted
inter-node byte saving that ``EPResult.dedup`` reports next to the simulated one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from xpusim.hwprofiles.spec import System
from xpusim.sim.cost.roofline import stream_time_s
from xpusim.sim.errors import InputError
from xpusim.sim.network.api import cost_network
from xpusim.sim.network.ep_ascend import reduce_bytes, staging_bytes
from xpusim.sim.network.ep_routing import (  # noqa: F401  (re-exported: the EP API)
    expert_probabilities,
    inclusion_probabilities,
    predicted_dedup_ratio,
    prob_hit,
)
from xpusim.sim.network.phases import NetworkCost, Phase
from xpusim.sim.network.topology import DIE_TO_DIE, INTER, INTRA

DISPATCH_MODES = ("flat", "hierarchical", "deepep", "low-latency")
DEEPEP_MODES = ("deepep", "low-latency")
# Path of a low-latency copy between two devices of one node (module doc, docs/ep.md).
LL_INTRANODE = ("nic", "fabric")

# DeepEP's per-token message layout (module doc): a float32 scale per 128 elements of
# a 1-byte token (tests/utils.py per_token_cast_to_fp8; internode_ll.cu kNumPerChannels
# = 128), and a 16-byte source-index header on low-latency dispatch messages
# (internode_ll.cu: sizeof(int4)).
DEEPEP_SCALE_BLOCK = 128
DEEPEP_SCALE_BYTES = 4
DEEPEP_LL_HEADER_BYTES = 16
# DeepEP-Ascend's low-latency dispatch (CANN MoeDistributeDispatchV2, the kernel
# sgl-kernel-npu's test_low_latency.py times): a token padded to 32 B, a 32-B slot for
# its float scale and a 12-B (rank, token, k) triple ("token_align32B + 32B(float) +
# 3*4B", ops-transformer mc2/moe_distribute_dispatch_v2/op_kernel/
# moe_distribute_dispatch_v2.h, Init).
ASCEND_LL_ALIGN = 32
ASCEND_LL_SCALE_SLOT = 32
ASCEND_LL_TRIPLE = 12
# DeepEP-Ascend's normal INT8 dispatch: one float scale per token (sgl-kernel-npu
# csrc/deepep deep_ep.cpp: dynamic_scales_out has one float per received token; its
# test_intranode.py counts quant_scale_bytes = num_recv_tokens * 4).
ASCEND_TOKEN_SCALE = 4


@dataclass(frozen=True)
class Messages:
    """Bytes of one token copy: on the wire, and as the benchmark counts them."""

    dispatch: float
    combine: float
    dispatch_counted: float
    combine_counted: float


@dataclass(frozen=True)
class EPConfig:
    hidden: int
    top_k: int
    experts: int
    ep: int
    tokens_per_device: float  # an expected count: fractional from an inference step
    dtype_bytes: float = 2.0
    dispatch: str = "flat"
    routing: str = "uniform"  # "uniform" | "zipf:S" | "hist:FILE"
    capacity_factor: float | None = None  # None: dropless
    overlap_compute_s: float = 0.0
    seed: int = 0
    ll_intranode: str = "nic"  # LL_INTRANODE: path of same-node low-latency copies

    @property
    def token_bytes(self) -> float:
        return self.hidden * self.dtype_bytes


def message_sizes(cfg: EPConfig, vendor: str) -> Messages:
    """Per token copy, DeepEP's message layout for its two modes (module doc); DeepEP-
    Ascend's on Huawei devices; bare ``hidden x dtype`` for flat and hierarchical."""
    tb = cfg.token_bytes
    if cfg.dispatch not in ("deepep", "low-latency"):
        return Messages(tb, tb, tb, tb)
    one_byte = cfg.dtype_bytes == 1.0  # FP8 / INT8 carry scales
    scales = math.ceil(cfg.hidden / DEEPEP_SCALE_BLOCK) * DEEPEP_SCALE_BYTES if one_byte else 0
    header = DEEPEP_LL_HEADER_BYTES if cfg.dispatch == "low-latency" else 0
    if vendor != "Huawei":  # DeepEP: its tests count exactly what it sends
        return Messages(tb + scales + header, tb + scales, tb + scales + header, tb + scales)
    if cfg.dispatch == "low-latency":
        wire = math.ceil(tb / ASCEND_LL_ALIGN) * ASCEND_LL_ALIGN + ASCEND_LL_SCALE_SLOT
        wire += ASCEND_LL_TRIPLE
        # sgl-kernel-npu's test_low_latency.py counts DeepEP's FP8 message for its INT8
        # run (num_fp8_bytes = hidden + hidden // 128 * 4 + 16); the BF16 combine bare.
        counted = tb + scales + header if one_byte else wire
        return Messages(wire, tb, counted, tb)
    token = tb + (ASCEND_TOKEN_SCALE if one_byte else 0)
    return Messages(token, token, token, token)


@dataclass(frozen=True)
class EPResult:
    config: EPConfig
    nodes: int
    dispatch_time_s: float
    combine_time_s: float
    inter_node_bytes: float  # dispatch, bytes that crossed NICs
    intra_node_bytes: float  # dispatch, bytes on server fabric and die-to-die links
    slowest_rank: int
    slowest_rank_recv_bytes: float
    mean_rank_recv_bytes: float
    bottleneck: str
    hidden_share: float  # of dispatch+combine time hidden behind overlap_compute_s
    exposed_s: float
    dropped_fraction: float
    dedup: dict[str, Any] = field(default_factory=dict)
    deepep_bytes_per_rank: float | None = None  # DeepEP's benchmark numerator (module doc)
    deepep_combine_bytes_per_rank: float | None = None  # the same for combine
    messages: Messages | None = None  # bytes per token copy (message_sizes)
    local_pass_s: tuple[float, float] = (0.0, 0.0)  # in the times above (local_pass_s)
    phases: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        c = self.config
        return {
            "dispatch": c.dispatch,
            "ll_intranode": c.ll_intranode,
            "ep": c.ep,
            "nodes": self.nodes,
            "tokens_per_device": c.tokens_per_device,
            "hidden": c.hidden,
            "top_k": c.top_k,
            "experts": c.experts,
            "routing": c.routing,
            "capacity_factor": c.capacity_factor,
            "token_bytes": c.token_bytes,
            "dispatch_message_bytes": self.messages.dispatch if self.messages else c.token_bytes,
            "combine_message_bytes": self.messages.combine if self.messages else c.token_bytes,
            "dispatch_time_s": self.dispatch_time_s,
            "combine_time_s": self.combine_time_s,
            "total_time_s": self.dispatch_time_s + self.combine_time_s,
            "inter_node_bytes": self.inter_node_bytes,
            "intra_node_bytes": self.intra_node_bytes,
            "slowest_rank": self.slowest_rank,
            "slowest_rank_recv_bytes": self.slowest_rank_recv_bytes,
            "mean_rank_recv_bytes": self.mean_rank_recv_bytes,
            "imbalance": (
                self.slowest_rank_recv_bytes / self.mean_rank_recv_bytes
                if self.mean_rank_recv_bytes
                else 1.0
            ),
            "bottleneck": self.bottleneck,
            "overlap_compute_s": c.overlap_compute_s,
            "hidden_share": self.hidden_share,
            "exposed_s": self.exposed_s,
            "dropped_fraction": self.dropped_fraction,
            "deepep_bytes_per_rank": self.deepep_bytes_per_rank,
            "deepep_combine_bytes_per_rank": self.deepep_combine_bytes_per_rank,
            "dispatch_local_pass_s": self.local_pass_s[0],
            "combine_local_pass_s": self.local_pass_s[1],
            "dedup": self.dedup,
            "phases": self.phases,
        }


# -- traffic -----------------------------------------------------------------------------
def _check(cfg: EPConfig, system: System) -> None:
    modes = (("--dispatch", cfg.dispatch, DISPATCH_MODES),
             ("--ll-intranode", cfg.ll_intranode, LL_INTRANODE))
    if bad := [(flag, v, ok) for flag, v, ok in modes if v not in ok]:
        flag, value, choices = bad[0]
        raise InputError(f"{flag} {value}: choose one of {', '.join(choices)}")
    for name in ("hidden", "top_k", "experts", "ep"):
        if getattr(cfg, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be >= 1")
    if not cfg.tokens_per_device > 0:
        raise InputError("--tokens-per-device must be > 0")
    if cfg.experts % cfg.ep:
        raise InputError(
            f"--ep {cfg.ep} must divide the {cfg.experts} routed experts "
            "(experts are spread evenly over the EP group)"
        )
    if cfg.top_k > cfg.experts:
        raise InputError(f"--top-k {cfg.top_k} exceeds --experts {cfg.experts}")
    if cfg.capacity_factor is not None and cfg.capacity_factor <= 0:
        raise InputError("--capacity-factor must be > 0 (omit it for dropless)")
    if cfg.ep > system.num_devices:
        need = -(-cfg.ep // system.devices_per_node)
        raise InputError(
            f"--ep {cfg.ep} needs {need} node(s) of {system.devices_per_node} "
            f"devices; the system has {system.nodes}: pass --nodes {need}"
        )
    dpn = system.devices_per_node
    if cfg.ep > dpn and cfg.ep % dpn:
        raise InputError(
            f"--ep {cfg.ep} spans nodes, so it must be a multiple of the {dpn} devices per node"
        )


def _kept_fraction(cfg: EPConfig, pi: np.ndarray) -> np.ndarray:
    """Per expert: share of its routed tokens kept under the capacity factor."""
    if cfg.capacity_factor is None:
        return np.ones_like(pi)
    total_tokens = cfg.ep * cfg.tokens_per_device
    capacity = cfg.capacity_factor * total_tokens * cfg.top_k / cfg.experts
    load = total_tokens * pi
    kept: np.ndarray = np.minimum(1.0, capacity / np.maximum(load, 1e-30))
    return kept


def _all_pairs(per_dest: np.ndarray) -> tuple[tuple[int, int, float], ...]:
    """Flows from every device to every other device d of ``per_dest[d]`` bytes."""
    n = len(per_dest)
    # ``tolist``: the same Python floats as ``float(per_dest[d])``, without indexing the
    # array once per flow (n x (n - 1) flows: 65,280 at EP256).
    sizes = per_dest.tolist()
    return tuple((s, d, sizes[d]) for s in range(n) for d in range(n) if s != d)


def ascend_normal(system: System) -> bool:
    """DeepEP-Ascend's normal kernels run ``deepep`` here (a Huawei supernode)."""
    return system.device.vendor == "Huawei" and system.inter_topology == "supernode"


def dispatch_phases(cfg: EPConfig, system: System) -> tuple[list[Phase], dict[str, Any]]:
    """The dispatch traffic of ``cfg`` as phases of flows, and routing statistics."""
    p_count, per_dev = cfg.ep, cfg.experts // cfg.ep
    uniform = cfg.routing == "uniform"
    p = expert_probabilities(cfg.routing, cfg.experts, cfg.seed)
    pi = inclusion_probabilities(p, cfg.top_k, uniform)
    kept = _kept_fraction(cfg, pi)
    experts_of = [np.arange(d * per_dev, (d + 1) * per_dev) for d in range(p_count)]
    # Kept share of the copies a device receives (uniform within a device's experts).
    dev_pi = np.array([pi[ex].sum() for ex in experts_of])
    dev_kept = np.array([(pi[ex] * kept[ex]).sum() for ex in experts_of]) / np.maximum(
        dev_pi, 1e-30
    )
    dropped = 1.0 - float((pi * kept).sum() / pi.sum())
    t, tb = cfg.tokens_per_device, message_sizes(cfg, system.device.vendor).dispatch
    nodes = -(-p_count // system.devices_per_node)
    stats: dict[str, Any] = {"pi": pi, "dev_kept": dev_kept, "dropped": dropped, "nodes": nodes}

    if cfg.dispatch in ("flat", "low-latency"):
        per_dest = t * dev_pi * dev_kept * tb  # bytes each device sends to device d
        flows = _all_pairs(per_dest)
        if cfg.dispatch == "flat":
            return [Phase("flat all-to-allv", max(1, p_count - 1), flows)], stats
        # Every copy, the sender's own included, is one message of the benchmark.
        stats["deepep_bytes_per_rank"] = float(per_dest.sum())
        kept_copies = dev_pi * dev_kept  # per token, copies bound for each device
        stats["ll_own_copies"] = float(t * kept_copies.sum())  # of one rank's tokens
        stats["ll_recv_copies_max"] = float(p_count * t * kept_copies.max())  # busiest rank
        return [_ll_phase(cfg, flows)], stats

    dev_hit = np.array([prob_hit(pi, ex, cfg.top_k, uniform) for ex in experts_of]) * dev_kept
    if cfg.dispatch == "deepep" and (nodes == 1 or system.inter_topology == "supernode"):
        # DeepEP's intranode kernel: once per destination device, straight there;
        # DeepEP-Ascend's on a supernode: once per (token, expert) (ep_ascend.py).
        per_dest = t * dev_hit * tb
        if ascend_normal(system):
            per_dest = t * dev_pi * dev_kept * tb
            stats["ascend_rows"] = float(t * (dev_pi * dev_kept).sum())  # a rank's copies
        stats["deepep_bytes_per_rank"] = float(per_dest.sum())  # received, self included
        phase = Phase("deepep: direct, once per device", max(1, p_count - 1), _all_pairs(per_dest))
        return [phase], stats
    k_local = min(system.devices_per_node, p_count)
    node_devs = [list(range(b * k_local, (b + 1) * k_local)) for b in range(nodes)]
    # A node is needed when one of its experts is hit; with a capacity factor, scale by
    # the node's kept share of copies (dropped copies do not travel), an approximation.
    node_hit = np.array(
        [
            prob_hit(pi, np.concatenate([experts_of[d] for d in devs]), cfg.top_k, uniform)
            * float(np.dot(dev_pi[devs], dev_kept[devs]) / dev_pi[devs].sum())
            for devs in node_devs
        ]
    )
    # DeepEP's num_rdma_token_sent: (token, node) pairs, the sender's node included.
    stats["deepep_bytes_per_rank"] = float(t * node_hit.sum() * tb)
    return _two_level_phases(cfg, system, node_devs, node_hit, dev_hit), stats


def _ll_phase(cfg: EPConfig, flows: tuple[tuple[int, int, float], ...]) -> Phase:
    """One step, every copy posted at once; ``fabric``: same-node copies on the server
    fabric (Topology.path), cross-node ones on the NICs, the busiest link sets it."""
    if cfg.ll_intranode == "fabric":
        return Phase("low-latency: RDMA across nodes + fabric stores in the node", 1, flows)
    return Phase("low-latency: one RDMA message per (token, expert)", 1, flows, via_nic=True)


def _two_level_phases(
    cfg: EPConfig,
    system: System,
    node_devs: list[list[int]],
    node_hit: np.ndarray,
    dev_hit: np.ndarray,
) -> list[Phase]:
    """Hierarchical or DeepEP dispatch across nodes: each token goes once to every node
    it needs (``node_hit``: the probability), to the sender's same-rail peer there, which
    forwards it to every device of its node that needs it (``dev_hit``)."""
    p_count, nodes = cfg.ep, len(node_devs)
    t, tb = cfg.tokens_per_device, message_sizes(cfg, system.device.vendor).dispatch
    k_local = len(node_devs[0])
    inter: list[tuple[int, int, float]] = []
    for s in range(p_count):
        for b in range(nodes):
            if b != s // k_local:
                peer = b * k_local + s % k_local  # same-rail device on node b
                inter.append((s, peer, t * node_hit[b] * tb))
    intra: list[tuple[int, int, float]] = []
    for devs in node_devs:
        for j in devs:
            # j forwards its own tokens and those of its N-1 rail peers: N * T tokens,
            # each needed on device d with probability P(d hit).
            for d in devs:
                if d != j:
                    intra.append((j, d, nodes * t * dev_hit[d] * tb))
    if cfg.dispatch == "hierarchical":
        intra_rounds = 1 if system.intra_topology == "full_mesh" else max(1, k_local - 1)
        phases = []
        if inter:
            phases.append(Phase("inter-node: once per destination node", nodes - 1, tuple(inter)))
        phases.append(Phase("intra-node all-to-allv: once per device", intra_rounds, tuple(intra)))
        return phases
    return [
        Phase(
            "deepep: RDMA to rail peer + forwarding (pipelined)",
            max(1, nodes - 1),
            tuple(inter + intra),
        )
    ]


def combine_phases(dispatch: list[Phase], scale: float = 1.0) -> list[Phase]:
    """Combine returns every dispatched token copy along the reverse path, in reverse
    order; ``scale`` = combine / dispatch message bytes (``message_sizes``)."""
    return [
        replace(
            ph,
            name=f"combine: {ph.name}",
            flows=tuple((d, s, b * scale) for s, d, b in ph.flows),
        )
        for ph in reversed(dispatch)
    ]


def _recv_bytes(phases: list[Phase], ranks: int) -> np.ndarray:
    """Bytes each rank receives in the final hop (what lands on its experts)."""
    recv = np.zeros(ranks)
    for _src, dst, nbytes in phases[-1].flows:
        recv[dst] += nbytes
    return recv


def local_pass_s(
    cfg: EPConfig, system: System, msg: Messages, stats: dict[str, Any]
) -> tuple[float, float]:
    """Seconds of a kernel's local pass that the transfer waits for, or that waits for
    every copy, and so adds to the transfer, (dispatch, combine). DeepEP-Ascend's
    normal kernels on a supernode: the dispatch staging and the combine reduce
    (ep_ascend.py). The low-latency kernels:

    * DeepEP's combine (csrc/kernels/internode_ll.cu, combine: "Wait all ranks to
      arrive", ``cg::this_grid().sync()``, then "Reduce tokens"): a rank reads the k
      copies of each of its tokens and writes their weighted sum.
    * DeepEP-Ascend's dispatch (CANN MoeDistributeDispatchV2::Process: AlltoAllDispatch,
      SetStatus, WaitDispatch on every rank's status and SyncAll, then LocalWindowCopy):
      every received copy goes from the window to expandXOut (token, scale, triple).

    DeepEP's dispatch copies an (expert, source) block as soon as its count arrives and
    CANN's combine waits token by token: both overlap the transfer (zero here). Priced
    as a memory-bound op on the roofline's memory curve (sim/cost/roofline.py: (bytes +
    half) / (HBM bandwidth x memory_max)), a lower bound for a copy through registers/UB.
    """
    dev = system.device

    def memory_s(nbytes: float) -> float:
        return stream_time_s(dev, nbytes)

    if cfg.dispatch == "deepep" and "ascend_rows" in stats:  # ep_ascend.py
        rows = stats["ascend_rows"]
        stage = staging_bytes(rows, cfg.hidden, msg.dispatch)
        reduce = reduce_bytes(rows, cfg.tokens_per_device, msg.combine)
        return memory_s(stage), memory_s(reduce)
    if cfg.dispatch != "low-latency":
        return 0.0, 0.0
    if dev.vendor == "Huawei":
        scale = ASCEND_TOKEN_SCALE if cfg.dtype_bytes == 1.0 else 0
        out = cfg.token_bytes + scale + ASCEND_LL_TRIPLE  # expandXOut, dynamic scale, triple
        return memory_s(stats["ll_recv_copies_max"] * (msg.dispatch + out)), 0.0
    reads = stats["ll_own_copies"] * msg.combine
    return 0.0, memory_s(reads + cfg.tokens_per_device * cfg.token_bytes)


def simulate_ep(cfg: EPConfig, system: System, backend: str = "analytical") -> EPResult:
    """Cost dispatch and combine of one MoE layer for ``cfg`` on ``system``."""
    _check(cfg, system)
    phases, stats = dispatch_phases(cfg, system)
    msg = message_sizes(cfg, system.device.vendor)
    disp: NetworkCost = cost_network(system, phases, backend)
    comb_phases = combine_phases(phases, msg.combine / msg.dispatch)
    comb: NetworkCost = cost_network(system, comb_phases, backend)
    local = local_pass_s(cfg, system, msg, stats)
    link = disp.link_bytes
    recv = _recv_bytes(phases, cfg.ep)
    total = disp.time_s + comb.time_s + sum(local)
    hidden = min(total, cfg.overlap_compute_s)
    nodes = stats["nodes"]
    # stats count wire bytes; the benchmark's numerator counts its own message size
    wire_bytes = stats.get("deepep_bytes_per_rank") if cfg.dispatch in DEEPEP_MODES else None
    dedup = {
        "nodes": nodes,
        "flat_inter_copies_per_token": cfg.top_k * (nodes - 1) / nodes,
        "predicted_flat_over_hierarchical": predicted_dedup_ratio(cfg.experts, cfg.top_k, nodes),
        "valid_for": "uniform routing, dropless",
    }
    if nodes > 1:
        dedup["hierarchical_inter_copies_per_token"] = (
            dedup["flat_inter_copies_per_token"] / dedup["predicted_flat_over_hierarchical"]
        )
        flat_phases, _ = dispatch_phases(replace(cfg, dispatch="flat"), system)
        flat_inter = sum(
            b
            for s, d, b in flat_phases[0].flows
            if s // system.devices_per_node != d // system.devices_per_node
        )
        dedup["flat_inter_node_bytes"] = flat_inter
        this_inter = link.get(INTER, 0.0)
        dedup["simulated_flat_over_this"] = flat_inter / this_inter if this_inter else None
    return EPResult(
        config=cfg,
        nodes=nodes,
        dispatch_time_s=disp.time_s + local[0],
        combine_time_s=comb.time_s + local[1],
        inter_node_bytes=link.get(INTER, 0.0),
        intra_node_bytes=link.get(INTRA, 0.0) + link.get(DIE_TO_DIE, 0.0),
        slowest_rank=int(np.argmax(recv)),
        slowest_rank_recv_bytes=float(recv.max()),
        mean_rank_recv_bytes=float(recv.mean()),
        bottleneck=disp.bottleneck,
        hidden_share=hidden / total if total > 0 else 0.0,
        exposed_s=total - hidden,
        dropped_fraction=stats["dropped"],
        dedup=dedup,
        deepep_bytes_per_rank=(
            wire_bytes * msg.dispatch_counted / msg.dispatch if wire_bytes is not None else None
        ),
        deepep_combine_bytes_per_rank=(
            wire_bytes * msg.combine_counted / msg.dispatch if wire_bytes is not None else None
        ),
        messages=msg,
        local_pass_s=local,
        phases=[p.as_dict() for p in disp.phases + comb.phases],
    )


def system_for_ep(system: System, ep: int, nodes: int | None) -> tuple[System, str]:
    """The system sized for the EP group: given nodes, or ceil(ep / devices per node)."""
    need = -(-ep // system.devices_per_node)
    if nodes is None:
        note = f"nodes = ceil({ep} / {system.devices_per_node}) = {need}"
        return replace(system, nodes=need), note
    return replace(system, nodes=nodes), ""

