"""Which NCCL transport two GPUs of a PCIe server use, and what it costs them.

A PCIe server without NVLink (``System.pcie_tree``) hangs its GPUs off PCIe switches
(``devices_per_switch`` under each; 1 = every GPU on its own CPU root port) and CPU
sockets. NCCL classifies the path between two GPUs the way ``nvidia-smi topo -m``
does (NVIDIA/nccl src/graph/topo.h path types): PIX/PXB through PCIe switches only,
PHB through the CPU's host bridge (same socket), SYS across the socket link (UPI,
xGMI). ``ncclTopoCheckP2p`` (src/graph/paths.cc) uses the P2P transport (a GPU
writes straight into its peer's memory) only up to ``NCCL_P2P_LEVEL``; pairs
further apart use SHM (src/transport/shm.cc): the sender's kernel writes into a
host-memory FIFO on the receiver's NUMA node (``NCCL_SHM_LOCALITY`` default 2,
receiver side) and the receiver's kernel reads it back over its own PCIe link.
NCCL's default level: PXB on Intel x86 (paths.cc in 2.18-2.22, quoted in
NVIDIA/nccl issues #987 and #1305), SYS on AMD up to 2.22, PXB on AMD with more
than two GPUs from 2.23 (commit message quoted in pytorch/pytorch PR #142179);
``NCCL_P2P_LEVEL`` overrides it. A GPU the driver gives no P2P (GeForce RTX 4090)
always uses SHM.

What the model charges on top of the device's PCIe ports (``up``/``down``):

* an SHM flow also crosses ``("shm_rx", receiver)``: the receiving GPU's reads of
  host memory, ``shm_efficiency`` x its link peak, shared by every SHM flow into it;
* a P2P flow between sockets also crosses ``("xsock", src, dst)``: the flow's rate
  across the socket link, ``cross_socket_p2p`` x the P2P rate (a per-flow figure,
  from p2pBandwidthLatencyTest's one-flow-at-a-time matrix; how many flows the
  socket link carries at once before it saturates is not modelled).
"""

from __future__ import annotations

from xpusim.hwprofiles.spec import PcieTree, System

# NCCL's PCIe path types, nearest first (src/graph/topo.h: PATH_PIX < PATH_PXB <
# PATH_PHB < PATH_SYS).
PATH_ORDER = ("PIX", "PXB", "PHB", "SYS")


def socket_of(tree: PcieTree, local: int, devices_per_node: int) -> int:
    """The CPU socket of the device at ``local``: devices split evenly, in order."""
    return local * tree.sockets // devices_per_node


def path_type(tree: PcieTree, a: int, b: int, devices_per_node: int) -> str:
    """NCCL's path type between the devices at local indices ``a`` and ``b`` of a node."""
    if tree.devices_per_switch > 1 and a // tree.devices_per_switch == b // tree.devices_per_switch:
        return "PIX"
    if socket_of(tree, a, devices_per_node) == socket_of(tree, b, devices_per_node):
        return "PHB"
    return "SYS"


def uses_p2p(tree: PcieTree, a: int, b: int, devices_per_node: int) -> bool:
    """Whether NCCL's ``ncclTopoCheckP2p`` gives the pair the P2P transport (else SHM)."""
    if not tree.p2p:
        return False
    kind = path_type(tree, a, b, devices_per_node)
    return PATH_ORDER.index(kind) <= PATH_ORDER.index(tree.p2p_level)


def extra_links(system: System, a: int, b: int) -> tuple[tuple[object, ...], ...]:
    """The links a flow between devices ``a`` and ``b`` of one node crosses besides
    the two PCIe ports: ``("shm_rx", b)`` for SHM, ``("xsock", a, b)`` for P2P across
    sockets, nothing for P2P inside a socket or without a declared tree."""
    tree = system.pcie_tree
    if tree is None:
        return ()
    dpn = system.devices_per_node
    la, lb = a % dpn, b % dpn
    if not uses_p2p(tree, la, lb, dpn):
        return (("shm_rx", b),)
    if socket_of(tree, la, dpn) != socket_of(tree, lb, dpn):
        return (("xsock", a, b),)
    return ()


def shm_capacity(system: System) -> float:
    """Bytes/s one GPU receives through SHM (all its SHM flows together)."""
    assert system.pcie_tree is not None
    return system.intra_link.bandwidth * system.pcie_tree.shm_efficiency


def cross_socket_capacity(system: System) -> float:
    """Bytes/s of one P2P flow across the socket link."""
    assert system.pcie_tree is not None
    p2p = system.intra_link.bandwidth * system.collective_efficiency.intra_node
    return p2p * system.pcie_tree.cross_socket_p2p
