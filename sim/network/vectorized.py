"""Listed flows priced with numpy, bit-identical to the per-flow loop of ``analytical``.

A ring or tree over thousands of ranks lists tens of thousands of flows (a 4-byte
all-reduce over Pangu's 6,144 NPUs: 49,152 ring flows and 24,572 tree flows), and the
per-flow Python loop of ``analytical._flows_listed`` took a quarter of a second for it.
Here every flow's path is laid out as up to eight link slots, in ``Topology.path``'s
order, and the loads are summed per link with ``np.bincount``.

Why the numbers are identical, not merely close:

* ``np.bincount`` adds each weight to its bin in input order, one float64 addition at a
  time, starting from 0.0 — the loop's ``loads[link] += nbytes`` in flow order.
* The bytes per link class are accumulated with ``np.cumsum`` (sequential), not
  ``np.sum`` (pairwise summation, which rounds differently).
* The bottleneck is the first link, in order of first appearance, with the largest
  load / capacity: the loop's strict ``>`` keeps the earliest of equal links, and
  ``np.unique(..., return_index=True)`` gives each link's first appearance.
* Divisions, maxima and comparisons are the same IEEE float64 operations.

``tests/test_network_vectorized.py`` compares both paths on random topologies, groups
and flows, field by field with ``==``.
"""

from __future__ import annotations

import numpy as np
from xpusim.sim.network.phases import Flow, Phase
from xpusim.sim.network.topology import DIE_TO_DIE, INTER, INTRA, SPINE, LinkId, Topology

# Slot order inside one flow's path, as Topology.path lists the links: the source's
# server port (switch or supernode), the one in-node link (d2d or mesh), the NIC out,
# the spine up and down, the NIC in, the destination's server port.
_KINDS = ("up", "d2d", "mesh", "nic_tx", "spine_up", "spine_down", "nic_rx", "down")
_UP, _D2D, _MESH, _TX, _SPUP, _SPDOWN, _RX, _DOWN = range(len(_KINDS))
_PAIR_KINDS = (_D2D, _MESH)  # links named by (source device, destination device)


class FlowLoads:
    """Per-link loads, per-class bytes and hop latency of listed flows (and port bytes)."""

    def __init__(self, topo: Topology, phase: Phase, flows: list[Flow]) -> None:
        self.topo = topo
        # Devices and link indices are ints below num_devices^2; a link key is
        # kind * stride + index, so every key is unique and decodable.
        n_dev = max(2, topo.system.num_devices)
        self.n_dev = n_dev
        self.stride = n_dev * n_dev
        # A NIC index is below nics_per_node, or is the local index when every device
        # has its own NIC(s): below both bounds' maximum.
        self.nic_stride = max(1, topo.system.nics_per_node, topo.dpn)
        if flows:
            src, dst, nbytes = zip(*flows, strict=True)
        else:
            src, dst, nbytes = (), (), ()
        a = np.fromiter(src, dtype=np.int64, count=len(flows))
        b = np.fromiter(dst, dtype=np.int64, count=len(flows))
        w = np.fromiter(nbytes, dtype=np.float64, count=len(flows))
        keys, mask, crossed, hop = self._slots(a, b, phase.via_nic)
        flat_keys = keys.ravel()[mask.ravel()]
        flat_w = np.repeat(w, mask.sum(axis=1))
        port_keys, port_w, port_bytes = self._port_slots(phase)
        self.keys = np.concatenate([flat_keys, port_keys])
        self.weights = np.concatenate([flat_w, port_w])
        self.hop = hop
        if port_bytes.size:
            self.hop = max(self.hop, topo.class_latency(INTRA))
        self.by_class = self._class_bytes(w, crossed, port_bytes)

    def _slots(
        self, a: np.ndarray, b: np.ndarray, via_nic: bool
    ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], float]:
        """Link keys (flows x 8 slots), which slots each flow uses, the classes each
        flow crosses, and the largest hop latency (``Topology.path_latency``)."""
        topo, s = self.topo, self.topo.system
        dpn = topo.dpn
        na, nb = a // dpn, b // dpn
        la, lb = a % dpn, b % dpn
        same_node = na == nb
        shared = topo.shared_port
        loop = same_node & (via_nic and not shared)
        cross = ~same_node
        nic_path = loop | cross
        if s.dies_per_package > 1 and s.die_to_die is not None:
            dies = s.dies_per_package
            same_pkg = (a // dies) == (b // dies)
        else:
            same_pkg = np.zeros(a.shape, dtype=bool)
        in_node = same_node & ~loop
        d2d = in_node & same_pkg
        mesh = in_node & ~same_pkg & (s.intra_topology == "full_mesh")
        switch = in_node & ~same_pkg & (s.intra_topology != "full_mesh")
        spine = cross & (self._leaf(na, la) != self._leaf(nb, lb))
        if not s.oversubscription > 1.0:
            spine = np.zeros(a.shape, dtype=bool)
        ports = switch | (cross & shared)
        nics = self._nic(la), self._nic(lb)
        nic_stride = self.nic_stride
        index = np.stack(
            [
                a,
                a * self.n_dev + b,
                a * self.n_dev + b,
                na * nic_stride + nics[0],
                self._leaf(na, la),
                self._leaf(nb, lb),
                nb * nic_stride + nics[1],
                b,
            ],
            axis=1,
        )
        keys = index + np.arange(len(_KINDS), dtype=np.int64) * self.stride
        mask = np.stack([ports, d2d, mesh, nic_path, spine, spine, nic_path, ports], axis=1)
        crossed = {DIE_TO_DIE: d2d, INTRA: mesh | ports, INTER: nic_path, SPINE: spine}
        return keys, mask, crossed, self._hop(cross | loop, same_pkg, len(a))

    def _hop(self, via_nic_latency: np.ndarray, same_pkg: np.ndarray, n: int) -> float:
        """The largest ``Topology.path_latency`` over the flows (0.0 with none)."""
        if not n:
            return 0.0
        topo = self.topo
        in_node = np.where(
            same_pkg, topo.class_latency(DIE_TO_DIE), topo.system.intra_link.latency
        )
        lat = np.where(via_nic_latency, topo.system.nic.latency, in_node)
        return max(0.0, float(lat.max()))

    def _nic(self, local: np.ndarray) -> np.ndarray:
        s = self.topo.system
        if s.nics_per_node >= s.devices_per_node:
            return local
        return local * s.nics_per_node // s.devices_per_node

    def _leaf(self, node: np.ndarray, local: np.ndarray) -> np.ndarray:
        if self.topo.system.inter_topology == "rail_optimized":
            return self._nic(local)
        return node

    def _port_slots(self, phase: Phase) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """In-switch (NVLS) traffic: the up then the down port of each listed device."""
        if not phase.port_bytes:
            empty = np.zeros(0)
            return empty.astype(np.int64), empty, empty
        dev = np.array([d for d, _ in phase.port_bytes], dtype=np.int64)
        nbytes = np.array([nb for _, nb in phase.port_bytes], dtype=np.float64)
        keys = np.stack([dev + _UP * self.stride, dev + _DOWN * self.stride], axis=1)
        per_port = nbytes / phase.port_scale
        return keys.ravel(), np.repeat(per_port, 2), nbytes

    def _class_bytes(
        self, w: np.ndarray, crossed: dict[str, np.ndarray], port_bytes: np.ndarray
    ) -> dict[str, float]:
        """Bytes that crossed each class, once per flow, summed in flow order."""
        out: dict[str, float] = {}
        for cls in (DIE_TO_DIE, INTRA, INTER, SPINE):
            parts = [w[crossed[cls]]]
            if cls == INTRA:
                parts.append(port_bytes)
            vals = np.concatenate(parts)
            out[cls] = float(np.cumsum(vals)[-1]) if vals.size else 0.0
        return out

    def bottleneck(self) -> tuple[float, LinkId | None, float, bool]:
        """(transfer time, busiest link, its load, whether any link is loaded)."""
        if not self.keys.size:
            return 0.0, None, 0.0, False
        uniq, first, inverse = np.unique(self.keys, return_index=True, return_inverse=True)
        loads = np.bincount(inverse.ravel(), weights=self.weights, minlength=uniq.size)
        kinds = uniq // self.stride
        caps = np.empty(uniq.size)
        # The kinds present, in order, by bincount: np.unique without its index outputs
        # calls np.ma.is_masked, whose first use imports numpy.ma (~11 ms a process).
        for k in np.flatnonzero(np.bincount(kinds)):
            caps[kinds == k] = self.topo.capacity((_KINDS[int(k)],))
        times = loads / caps
        best = float(times.max())
        if not best > 0.0:
            return 0.0, None, 0.0, True
        tied = np.flatnonzero(times == best)
        i = int(tied[np.argmin(first[tied])])
        return best, self._link(int(uniq[i])), float(loads[i]), True

    def _link(self, key: int) -> LinkId:
        """The ``Topology.path`` link tuple that ``key`` encodes."""
        kind, index = divmod(key, self.stride)
        name = _KINDS[kind]
        if kind in _PAIR_KINDS:
            return (name, *divmod(index, self.n_dev))
        if kind in (_TX, _RX):
            return (name, *divmod(index, self.nic_stride))
        return (name, index)
