"""Collective algorithms as phases of flows (``xpusim.sim.network.phases.Phase``).

``nbytes`` follows ``sim.ir.Collective``: the all-reduce buffer, the all-gather
*output*, the reduce-scatter *input*, the total one rank sends in an all-to-all
(``nbytes / n`` to each rank, itself included, as in nccl-tests), the send/recv message.

Algorithms (the classic decompositions used by NCCL and HCCL):

* ``ring`` — pipelined ring over the group in device order. All-reduce moves
  2(n-1)/n x S over every ring edge in 2(n-1) steps; reduce-scatter / all-gather
  (n-1)/n x S in n-1 steps; broadcast is a pipelined chain (S per edge, n-1 hops).
* ``tree`` — all-reduce on NCCL's double binary tree: two complementary binary
  trees, each carrying half the buffer up (reduce) and down (broadcast), pipelined;
  ~2S per rank, 2 log2(n) latency steps. Broadcast: one binary tree, S per edge,
  log2(n) steps.
* ``hierarchical`` — two levels for groups spanning nodes with the same devices on
  every node: all-reduce = intra-node reduce-scatter (ring) -> inter-node all-reduce
  of S/k among same-rail peers (ring) -> intra-node all-gather; reduce-scatter and
  all-gather keep the matching halves; all-to-all = RDMA to the same-rail peer of the
  destination node (S/N per remote node) then forwarding inside the node over the
  server fabric (the DeepEP / PXN shape).
* ``pairwise`` — all-to-all as n-1 exchange steps (step i: rank r sends to r+i).
* ``direct`` — every rank exchanges with all peers at once, one latency step:
  all-to-all inside one node (HCCS full mesh or NVSwitch), and on a full mesh also
  reduce-scatter / all-gather (S/n to each peer over its own link) and all-reduce as
  the two in sequence — HCCL's mesh algorithm, the only one that uses all of a
  device's HCCS links at once. The intra-node halves of ``hierarchical`` use it on a
  full mesh and a ring otherwise.
"""

from __future__ import annotations

import math
from collections import defaultdict
from functools import lru_cache
from itertools import chain, repeat

from xpusim.sim.errors import InputError
from xpusim.sim.ir import CollectiveKind
from xpusim.sim.network.phases import Flow, Phase
from xpusim.sim.network.topology import Topology
from xpusim.sim.network.trees import dtree_max_sends

ALGORITHMS = (
    "ring",
    "tree",
    "nvls",
    "nvls_tree",
    "collnet",
    "hierarchical",
    "pairwise",
    "direct",
)

_RING_KINDS = (
    CollectiveKind.ALL_REDUCE,
    CollectiveKind.REDUCE_SCATTER,
    CollectiveKind.ALL_GATHER,
    CollectiveKind.BROADCAST,
)
_A2A_KINDS = (CollectiveKind.ALL_TO_ALL, CollectiveKind.ALL_TO_ALLV)


def layout(topo: Topology, group: tuple[int, ...]) -> dict[int, list[int]]:
    """node -> group members on it, in device order."""
    return {node: list(ds) for node, ds in _layout(topo.dpn, group)}


def is_homogeneous(topo: Topology, group: tuple[int, ...]) -> bool:
    """Every node of the group holds members at the same local indices."""
    return _homogeneous(topo.dpn, group)


# Pricing one collective asks for its group's layout about ten times (candidates,
# build, ring orders, rails), each a pass over up to thousands of ranks; it depends
# only on the devices per node, so it is kept for the last few groups.
@lru_cache(maxsize=16)
def _layout(dpn: int, group: tuple[int, ...]) -> tuple[tuple[int, tuple[int, ...]], ...]:
    nodes: dict[int, list[int]] = defaultdict(list)
    for d in sorted(group):
        nodes[d // dpn].append(d)
    return tuple((node, tuple(ds)) for node, ds in nodes.items())


@lru_cache(maxsize=16)
def _homogeneous(dpn: int, group: tuple[int, ...]) -> bool:
    shapes = {tuple(d % dpn for d in ds) for _, ds in _layout(dpn, group)}
    return len(shapes) == 1


def candidates(kind: CollectiveKind, topo: Topology, group: tuple[int, ...]) -> list[str]:
    """Algorithms that apply to ``kind`` on this group (the auto choice picks among them)."""
    nodes = layout(topo, group)
    multi = len(nodes) > 1
    hier = multi and is_homogeneous(topo, group) and len(group) > len(nodes)
    if topo.system.collective_library.name == "nccl" and kind not in _A2A_KINDS:
        return _nccl_candidates(kind, topo, multi, hier)
    if kind == CollectiveKind.SEND_RECV:
        return ["direct"]
    if kind in _A2A_KINDS:
        out = ["pairwise"]
        if not multi:
            out.append("direct")
        if hier:
            out.append("hierarchical")
        return out
    out = ["ring"]
    if kind in (CollectiveKind.ALL_REDUCE, CollectiveKind.BROADCAST):
        out.append("tree")  # NCCL runs trees for all-reduce (and broadcast) only
    if not multi and topo.system.intra_topology == "full_mesh" and kind != CollectiveKind.BROADCAST:
        out.append("direct")
    if hier and kind != CollectiveKind.BROADCAST:
        out.append("hierarchical")
    return out


def _nccl_candidates(
    kind: CollectiveKind, topo: Topology, multi: bool, hier: bool
) -> list[str]:
    """What NCCL (2.19+) can run: trees, NVLS and CollNet for all-reduce only; rings
    for every kind; NVLS where the NVSwitch supports NVLink SHARP (multimem), the
    multi-node form (NVLS tree) and CollNet only on groups with the same devices on
    every node; CollNet only where the profile declares in-network reduction."""
    lib = topo.system.collective_library
    if kind == CollectiveKind.SEND_RECV:
        return ["direct"]
    out = ["ring"]
    if kind != CollectiveKind.ALL_REDUCE:
        return out
    out.append("tree")
    if lib.nvls and topo.system.intra_topology == "switch":
        if not multi:
            out.append("nvls")
        elif hier:
            out.append("nvls_tree")
    if lib.collnet and hier:
        out.append("collnet")
    return out


def build(
    kind: CollectiveKind, algorithm: str, topo: Topology, group: tuple[int, ...], nbytes: float,
    checked: bool = False,
) -> list[Phase]:
    """``kind`` on ``group`` by ``algorithm`` as phases of flows. ``checked``: the caller
    took ``algorithm`` from ``candidates`` of this group (skips listing them again)."""
    valid = [algorithm] if checked else candidates(kind, topo, group)
    if algorithm not in valid:
        raise InputError(
            f"algorithm '{algorithm}' does not apply to {kind} on this group "
            f"({len(group)} ranks on {len(layout(topo, group))} node(s)); "
            f"choose one of: {', '.join(valid)} or auto"
        )
    members = sorted(group)
    n = len(members)
    if kind == CollectiveKind.SEND_RECV:
        flows = tuple((members[i], members[i + 1], nbytes) for i in range(0, n - 1, 2))
        return [Phase("send-recv", 1, flows)]
    if kind in _A2A_KINDS:
        return _all_to_all(algorithm, topo, members, nbytes)
    if algorithm == "ring":
        return _ring_kind(kind, members, nbytes, _ring_orders(topo, members))
    if algorithm == "nvls":
        return [_nvls_phase(topo, [members], nbytes)]
    if algorithm in ("nvls_tree", "collnet") or (
        algorithm == "tree"
        and topo.system.collective_library.name == "nccl"
        and len(layout(topo, group)) > 1
        and is_homogeneous(topo, group)
    ):
        return [_two_level_pipelined(algorithm, topo, members, nbytes)]
    if algorithm == "tree":
        return _tree_kind(kind, members, nbytes)
    if algorithm == "direct":
        return _direct_kind(kind, members, nbytes)
    return _hierarchical(kind, topo, members, nbytes)


def ring_flows(members: list[int], nbytes: float, closed: bool = True) -> tuple[Flow, ...]:
    m = len(members)
    if m < 2:
        return ()
    # (members[i], members[(i + 1) % m], nbytes) for i < m (closed) or m - 1, by zip:
    # the same tuples without a Python-level loop (rings of thousands of ranks). An
    # open chain's nxt is one shorter: zip stops there, hence strict=False.
    nxt = members[1:] + members[:1] if closed else members[1:]
    return tuple(zip(members, nxt, repeat(nbytes, len(nxt)), strict=False))


def _ring_orders(topo: Topology, members: list[int]) -> list[list[int]]:
    """The rings a ring collective runs, each carrying an equal share of the buffer.

    One ring in device order, except on a group spanning nodes with k > 1 members on
    every node at the same local indices: there NCCL runs one ring per channel and
    spreads the channels over the node's NICs (graph/search.cc: each channel's ring
    enters and leaves a node through a different NIC), so ring j visits each node's
    members rotated by j and crosses to the next node from rail j-1 to rail j. Each
    NIC then carries 1/k of the inter-node bytes, as nccl-tests shows multi-node
    ring busbw near k x the NIC rate (validation_corpus N12: 381.8 GB/s on 4 x 8 B200
    with 8 x 50 GB/s EFA per node). A single device-order ring would push every
    inter-node byte through one NIC per node.
    """
    nodes = list(layout(topo, tuple(members)).values())
    k = len(nodes[0])
    if len(nodes) < 2 or k < 2 or not is_homogeneous(topo, tuple(members)):
        return [members]
    return [[d for ds in nodes for d in ds[j:] + ds[:j]] for j in range(k)]


def _ring_kind(
    kind: CollectiveKind, members: list[int], s: float, rings: list[list[int]] | None = None
) -> list[Phase]:
    n = len(members)
    rings = rings or [members]
    c = len(rings)

    def flows(per_ring_bytes: float, closed: bool = True) -> tuple[Flow, ...]:
        return tuple(chain.from_iterable(ring_flows(r, per_ring_bytes / c, closed) for r in rings))

    if kind == CollectiveKind.ALL_REDUCE:
        return [Phase("ring all-reduce", 2 * (n - 1), flows(2 * (n - 1) / n * s))]
    if kind == CollectiveKind.BROADCAST:
        return [Phase("chain broadcast", n - 1, flows(s, closed=False))]
    return [Phase(f"ring {kind}", n - 1, flows((n - 1) / n * s))]


def _direct_kind(kind: CollectiveKind, members: list[int], s: float) -> list[Phase]:
    n = len(members)
    group = (tuple(members),)
    rs = Phase("direct reduce-scatter", 1, a2a_groups=group, a2a_bytes=s / n)
    ag = Phase("direct all-gather", 1, a2a_groups=group, a2a_bytes=s / n)
    if kind == CollectiveKind.ALL_REDUCE:
        return [rs, ag]
    return [rs] if kind == CollectiveKind.REDUCE_SCATTER else [ag]


def _tree_edges(members: list[int]) -> tuple[tuple[int, int], ...]:
    """``_edges_of`` over ``members``, kept for the last groups: a tree depends only on
    its members, and a serving run's TP all-reduce of every new size builds the same two
    trees (about 5 % of pricing it)."""
    return _edges_of(tuple(members))


@lru_cache(maxsize=32)
def _edges_of(members: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    """(child, parent) edges of the balanced in-order binary tree over ``members``.

    In an in-order tree about half the positions are leaves and they alternate with
    inner nodes, so shifting the ranks by one (the second tree of NCCL's double binary
    tree) turns most leaves into inner nodes.
    """
    edges: list[tuple[int, int]] = []
    # The recursion subtree(lo, hi, parent) -- edge (mid, parent), then the left
    # half, then the right -- as a loop over an explicit stack (right pushed first),
    # so the edges come in the same order: 6,144-rank trees made ~12,000 calls.
    stack: list[tuple[int, int, int | None]] = [(0, len(members), None)]
    while stack:
        lo, hi, parent = stack.pop()
        if lo >= hi:
            continue
        mid = (lo + hi) // 2
        if parent is not None:
            edges.append((members[mid], parent))
        stack.append((mid + 1, hi, members[mid]))
        stack.append((lo, mid, members[mid]))
    return tuple(edges)


def _depth(n: int) -> int:
    return max(1, math.ceil(math.log2(n))) if n > 1 else 0


def _tree_kind(kind: CollectiveKind, members: list[int], s: float) -> list[Phase]:
    n = len(members)
    if kind == CollectiveKind.BROADCAST:
        down = tuple((p, c, s) for c, p in _tree_edges(members))
        return [Phase("tree broadcast", _depth(n), down)]
    # Double binary tree: the second tree is the first shifted by one rank, so the
    # leaves of one are mostly inner nodes of the other; each carries half the buffer.
    half = s / 2
    flows: list[Flow] = []
    for order in (members, members[1:] + members[:1]):
        for child, parent in _tree_edges(order):
            flows.append((child, parent, half))  # reduce up
            flows.append((parent, child, half))  # broadcast down
    return [Phase("double-binary-tree all-reduce", 2 * _depth(n), tuple(flows))]


def _nvls_port_bytes(groups: list[list[int]], s: float) -> tuple[tuple[int, float], ...]:
    """NVLS all-reduce inside each group through the switch (multimem): a device's
    reduce step reads its S/k slice reduced in the switch (the switch pulls S/k of
    every device: S out of each port, S/k back in), its broadcast step writes S/k
    that the switch copies to all k (S/k out, S in): S(k+1)/k each way per port."""
    out: list[tuple[int, float]] = []
    for g in groups:
        k = len(g)
        out.extend((d, s * (k + 1) / k) for d in g)
    return tuple(out)


def _nvls_scale(topo: Topology) -> float:
    """NVLS traffic is priced at nvls_efficiency of the port peak instead of the
    point-to-point collective efficiency."""
    s = topo.system
    return s.collective_library.nvls_efficiency / s.collective_efficiency.intra_node


def _nvls_phase(topo: Topology, groups: list[list[int]], s: float) -> Phase:
    return Phase(
        "NVLS all-reduce (in-switch reduce + multicast)",
        1,
        port_bytes=_nvls_port_bytes(groups, s),
        port_scale=_nvls_scale(topo),
    )


def _two_level_pipelined(algorithm: str, topo: Topology, members: list[int], s: float) -> Phase:
    """NCCL's multi-node all-reduce trees as one pipelined phase (every stage runs at
    once on successive chunks, so the busiest link sets the pace):

    * ``tree``: a chain through the node's devices (S up to reduce, S down to
      broadcast on each chain edge) and NCCL's double binary tree between nodes
      over the rails: the busiest node sends and receives S/k per rail at 2 nodes,
      2S/k from 4 nodes on (``trees.dtree_max_sends``);
    * ``nvls_tree``: the in-switch NVLS reduction inside the node (S(k+1)/k per port)
      and the same tree between nodes on the S/k slices;
    * ``collnet``: the chain inside the node and the in-network (SHARP) reduction:
      each node sends S/k per rail up once and receives the result once.
    """
    per_node, rails = _rails(topo, members)
    k, nn = len(per_node[0]), len(per_node)
    flows: list[Flow] = []
    # Between nodes NCCL's double binary tree (trees.dtree_max_sends): the busiest node
    # sends and receives S/k per rail at N = 2, 1.5 S/k at N = 3 and 2 S/k from N = 4 on
    # (an inner node with two children in one tree); in-network reduction sends each
    # slice up once and gets the result once.
    per_rail = s / k if algorithm == "collnet" else dtree_max_sends(nn) * (s / 2) / k
    inter = [f for r in rails for f in ring_flows(r, per_rail)]
    if algorithm == "nvls_tree":
        return Phase(
            "NVLS tree all-reduce (NVLS in node, tree across nodes; pipelined)",
            1,
            flows=tuple(inter),
            port_bytes=_nvls_port_bytes(per_node, s),
            port_scale=_nvls_scale(topo),
        )
    for g in per_node:
        for a, b in zip(g[:-1], g[1:], strict=True):
            flows.append((b, a, s))  # reduce up the chain
            flows.append((a, b, s))  # broadcast down
    name = "tree all-reduce (chain in node, tree across nodes; pipelined)"
    if algorithm == "collnet":
        name = "CollNet all-reduce (chain in node, in-network reduction; pipelined)"
    return Phase(name, 1, flows=tuple(flows + inter))


def _rails(topo: Topology, members: list[int]) -> tuple[list[list[int]], list[list[int]]]:
    """(per-node member lists, per-local-index lists across nodes)."""
    nodes = layout(topo, tuple(members))
    per_node = list(nodes.values())
    k = len(per_node[0])
    rails = [[ds[j] for ds in per_node] for j in range(k)]
    return per_node, rails


def _hierarchical(
    kind: CollectiveKind, topo: Topology, members: list[int], s: float
) -> list[Phase]:
    per_node, rails = _rails(topo, members)
    k, nn = len(per_node[0]), len(per_node)

    def rings(groups: list[list[int]], nbytes: float) -> tuple[Flow, ...]:
        return tuple(f for g in groups for f in ring_flows(g, nbytes))

    if topo.system.intra_topology == "full_mesh":  # direct: S/k to each local peer at once
        groups = tuple(tuple(g) for g in per_node)
        intra_rs = Phase(
            "intra-node reduce-scatter (direct)", 1, a2a_groups=groups, a2a_bytes=s / k
        )
        intra_ag = Phase("intra-node all-gather (direct)", 1, a2a_groups=groups, a2a_bytes=s / k)
    else:
        intra_rs = Phase(
            "intra-node reduce-scatter (ring)", k - 1, rings(per_node, (k - 1) / k * s)
        )
        intra_ag = Phase("intra-node all-gather (ring)", k - 1, rings(per_node, (k - 1) / k * s))
    if kind == CollectiveKind.ALL_REDUCE:
        inter = Phase(
            "inter-node all-reduce", 2 * (nn - 1), rings(rails, 2 * (nn - 1) / nn * s / k)
        )
        return [intra_rs, inter, intra_ag]
    if kind == CollectiveKind.REDUCE_SCATTER:
        return [
            intra_rs,
            Phase("inter-node reduce-scatter", nn - 1, rings(rails, (nn - 1) / nn * s / k)),
        ]
    return [Phase("inter-node all-gather", nn - 1, rings(rails, (nn - 1) / nn * s / k)), intra_ag]


def _all_to_all(algorithm: str, topo: Topology, members: list[int], s: float) -> list[Phase]:
    n = len(members)
    if algorithm == "pairwise":
        return [Phase("pairwise all-to-all", n - 1, a2a_groups=(tuple(members),), a2a_bytes=s / n)]
    if algorithm == "direct":
        return [Phase("direct all-to-all", 1, a2a_groups=(tuple(members),), a2a_bytes=s / n)]
    per_node, rails = _rails(topo, members)
    k, nn = len(per_node[0]), len(per_node)
    return [
        # To each remote node, the chunks for all k of its devices go to the same-rail peer.
        Phase(
            "inter-node to same-rail peer",
            nn - 1,
            a2a_groups=tuple(tuple(r) for r in rails),
            a2a_bytes=s / nn,
        ),
        # Each device forwards to every local peer what the N nodes sent for it.
        Phase(
            "intra-node forwarding",
            k - 1,
            a2a_groups=tuple(tuple(g) for g in per_node),
            a2a_bytes=s / k,
        ),
    ]
