"""The network of a system profile as directed links with capacities and latencies.

Both collective backends read this one description, so they price the same links:

* ``die_to_die`` — on-package link between the dies of one package (Ascend 910C SIO).
  Device ids of one package are consecutive (``d // dies_per_package``).
* ``intra_node`` — the server fabric. ``full_mesh`` (HCCS): one directed link per
  ordered device pair; a device's ``links_per_device`` links are spread evenly over its
  peers, so each pair gets ``intra_link.bandwidth * links_per_device / (devices - 1)``.
  ``switch`` (NVLink/NVSwitch, UB switch) and ``pcie``: each device has one up-port and
  one down-port of ``intra_link.bandwidth`` into a non-blocking switch. A ``pcie``
  system with a ``pcie_tree`` adds NCCL's transport per pair (``sim/network/pcie``):
  an SHM flow also crosses the receiver's ``shm_rx``, a P2P flow between CPU sockets
  its own ``xsock`` link.
* ``inter_node`` — NIC ports. With at least one NIC per device a device owns
  ``nics_per_node / devices_per_node`` NICs' bandwidth; with fewer NICs than devices,
  ``devices / nics`` neighbouring devices share one NIC (contention). The device-to-NIC
  hop (PCIe) is not modelled. For ``supernode`` the NIC stands for the device's port
  into the supernode fabric (CloudMatrix UB) *beyond its server*; the device has one
  UB port bundle for all its traffic (CM384 paper, arXiv:2506.12708: 392 GB/s one
  way per 910C, in-server and cross-server together), so a cross-node flow also
  crosses the device's server port (``up``/``down``) and shares it with in-server
  flows.
* ``spine`` — only when ``oversubscription > 1``: a leaf's pooled uplink of
  ``sum(NIC bandwidth on the leaf) / oversubscription`` each way. With
  ``rail_optimized`` NIC *i* of every node sits on leaf (rail) *i* and only traffic
  between different rails climbs to the spine; with ``fat_tree`` and ``supernode``
  each node's NICs share one leaf and all inter-node traffic climbs.

Every capacity is the link peak times the profile's collective efficiency
(``intra_node`` for die-to-die and server links, ``inter_node`` for NIC and spine):
the protocol / chunking share that NCCL and HCCL lose (see ``CollectiveEfficiency``).
Latency is charged once per path and per algorithm round (not per link) by the
algorithms; ``path_latency`` gives it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from xpusim.hwprofiles.spec import System
from xpusim.sim.errors import InputError
from xpusim.sim.network import pcie

# Link classes, used as keys of CollectiveResult.link_bytes.
DIE_TO_DIE = "die_to_die"
INTRA = "intra_node"
INTER = "inter_node"
SPINE = "spine"
LINK_CLASSES = (DIE_TO_DIE, INTRA, INTER, SPINE)

# A link id is a tuple whose first item is its kind; kinds map to classes.
_KIND_CLASS = {
    "d2d": DIE_TO_DIE,
    "mesh": INTRA,
    "up": INTRA,
    "down": INTRA,
    "nic_tx": INTER,
    "nic_rx": INTER,
    "spine_up": SPINE,
    "spine_down": SPINE,
    "shm_rx": INTRA,
    "xsock": INTRA,
}

# A link: its kind (a key of _KIND_CLASS) and then its endpoints (device, node or NIC
# indices; descriptive strings where a report names a representative link).
LinkId = tuple[Any, ...]


@dataclass(frozen=True)
class Topology:
    """Directed links of ``system`` (all its nodes) and the path between two devices."""

    system: System

    def __post_init__(self) -> None:
        s = self.system
        if s.dies_per_package > 1 and s.devices_per_node % s.dies_per_package:
            raise InputError(
                f"system '{s.name}': devices_per_node ({s.devices_per_node}) must be a "
                f"multiple of package.dies ({s.dies_per_package})"
            )

    # -- placement -------------------------------------------------------------------
    @property
    def dpn(self) -> int:
        return self.system.devices_per_node

    def node_of(self, dev: int) -> int:
        return dev // self.dpn

    def local_of(self, dev: int) -> int:
        return dev % self.dpn

    def package_of(self, dev: int) -> int:
        return dev // max(1, self.system.dies_per_package)

    def same_package(self, a: int, b: int) -> bool:
        return (
            self.system.dies_per_package > 1
            and self.system.die_to_die is not None
            and self.package_of(a) == self.package_of(b)
        )

    def nic_index(self, local: int) -> int:
        """The NIC (within its node) a device at ``local`` uses; also its rail."""
        s = self.system
        if s.nics_per_node >= s.devices_per_node:
            return local
        return local * s.nics_per_node // s.devices_per_node

    def devices_per_nic(self) -> int:
        s = self.system
        return max(1, -(-s.devices_per_node // s.nics_per_node))

    def leaf_of(self, dev: int) -> int:
        """The leaf switch a device's NIC plugs into (rail for rail_optimized, else node)."""
        if self.system.inter_topology == "rail_optimized":
            return self.nic_index(self.local_of(dev))
        return self.node_of(dev)

    def crosses_spine(self, a: int, b: int) -> bool:
        return self.system.oversubscription > 1.0 and self.leaf_of(a) != self.leaf_of(b)

    # -- capacities (bytes/s per direction, after collective efficiency) ----------------
    def intra_capacity(self) -> float:
        s = self.system
        eff = s.collective_efficiency.intra_node
        if s.intra_topology == "full_mesh":
            peers = max(1, s.devices_per_node - 1)
            return s.intra_link.bandwidth * s.links_per_device / peers * eff
        return s.intra_link.bandwidth * eff

    def d2d_capacity(self) -> float:
        s = self.system
        assert s.die_to_die is not None
        return s.die_to_die.bandwidth * s.collective_efficiency.intra_node

    def nic_capacity(self) -> float:
        """One NIC port (or a device's share of several NICs)."""
        s = self.system
        per_nic = s.nic.bandwidth * s.collective_efficiency.inter_node
        if s.nics_per_node >= s.devices_per_node:
            return per_nic * s.nics_per_node / s.devices_per_node
        return per_nic

    def nics_on_leaf(self) -> int:
        """NIC ports (as counted by ``nic_capacity``) that share one leaf's uplink."""
        s = self.system
        ports_per_node = min(s.nics_per_node, s.devices_per_node)
        if s.inter_topology == "rail_optimized":
            return s.nodes
        return ports_per_node

    def spine_capacity(self) -> float:
        return self.nic_capacity() * self.nics_on_leaf() / self.system.oversubscription

    def capacity(self, link: LinkId) -> float:
        kind = link[0]
        if kind == "d2d":
            return self.d2d_capacity()
        if kind in ("mesh", "up", "down"):
            return self.intra_capacity()
        if kind in ("nic_tx", "nic_rx"):
            return self.nic_capacity()
        if kind == "shm_rx":
            return pcie.shm_capacity(self.system)
        if kind == "xsock":
            return pcie.cross_socket_capacity(self.system)
        return self.spine_capacity()

    @staticmethod
    def link_class(link: LinkId) -> str:
        return _KIND_CLASS[link[0]]

    # -- latency ----------------------------------------------------------------------
    def class_latency(self, cls: str) -> float:
        s = self.system
        if cls == DIE_TO_DIE:
            return s.die_to_die.latency if s.die_to_die else 0.0
        if cls == INTRA:
            return s.intra_link.latency
        if cls in (INTER, SPINE):
            return s.nic.latency
        raise KeyError(cls)

    def path_latency(self, a: int, b: int, via_nic: bool = False) -> float:
        """One-hop latency between two devices: that of the slowest link class crossed."""
        if a == b:
            return 0.0
        if self.node_of(a) != self.node_of(b) or (via_nic and not self.shared_port):
            return self.system.nic.latency
        if self.same_package(a, b):
            return self.class_latency(DIE_TO_DIE)
        return self.system.intra_link.latency

    # -- paths ------------------------------------------------------------------------
    @property
    def has_pcie_tree(self) -> bool:
        """The node's PCIe tree is declared (transports per pair: ``sim/network/pcie``).
        Its extra links are priced flow by flow (no numpy or symmetry shortcut)."""
        return self.system.pcie_tree is not None and self.system.intra_topology == "pcie"

    @property
    def shared_port(self) -> bool:
        """Cross-node flows share the device's server port (one UB port bundle)."""
        return self.system.inter_topology == "supernode"

    def path(self, a: int, b: int, via_nic: bool = False) -> tuple[LinkId, ...]:
        """The directed links a flow from device ``a`` to device ``b`` crosses.

        ``via_nic``: a same-node flow leaves through ``a``'s NIC and enters through
        ``b``'s (RDMA loopback through the rail switches, as DeepEP's pure-RDMA
        low-latency kernels send); on a supernode the server fabric *is* the RDMA
        domain, so the flag changes nothing there.
        """
        if a == b:
            return ()
        na, nb = self.node_of(a), self.node_of(b)
        if na == nb and via_nic and not self.shared_port:
            tx = ("nic_tx", na, self.nic_index(self.local_of(a)))
            rx = ("nic_rx", nb, self.nic_index(self.local_of(b)))
            return (tx, rx)
        if na == nb:
            if self.same_package(a, b):
                return (("d2d", a, b),)
            if self.system.intra_topology == "full_mesh":
                return (("mesh", a, b),)
            return (("up", a), ("down", b), *pcie.extra_links(self.system, a, b))
        tx = ("nic_tx", na, self.nic_index(self.local_of(a)))
        rx = ("nic_rx", nb, self.nic_index(self.local_of(b)))
        ports: tuple[LinkId, ...] = (("up", a), ("down", b)) if self.shared_port else ()
        mid: tuple[LinkId, ...]
        if self.crosses_spine(a, b):
            mid = (tx, ("spine_up", self.leaf_of(a)), ("spine_down", self.leaf_of(b)), rx)
        else:
            mid = (tx, rx)
        return ports[:1] + mid + ports[1:]

    def check_group(self, group: tuple[int, ...]) -> None:
        total = self.system.num_devices
        bad = [g for g in group if not 0 <= g < total]
        if bad:
            raise InputError(
                f"group holds device ids {bad[:4]} outside 0..{total - 1} of system "
                f"'{self.system.name}' ({self.system.nodes} node(s) x {self.dpn}); "
                "raise --nodes"
            )
        if len(set(group)) != len(group):
            raise InputError("group lists a device more than once")
