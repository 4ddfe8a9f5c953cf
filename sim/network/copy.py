"""Direct memory copies between devices: ``send-recv`` with ``api="memcpy"``.

cudaMemcpy between peers, nvbandwidth's copy-engine (CE) tests, Ascend's
aclrtMemcpy / ascend-dmi p2p: one DMA stream per pair, driven by the copy engine,
not by a collective library's kernel. What differs from the library's send/recv
(``sim/network/protocols.py``):

* **no channels and no protocol**: the copy engine streams the whole buffer; the
  only latency is the hop's (the profile's link latency), no per-step handshake;
* **the link's payload efficiency**: NVLink carries data in packets with a fixed
  overhead. SMs (NCCL's kernels) write 128-byte payloads, which NCCL counts as
  20 of NVLink 3's 25 GB/s per link (the profiles' ``collective_efficiency.intra_node``,
  SM80_NVLINK_BW / 25); copy engines use 256-byte payloads (sjeaugey,
  NVIDIA/nccl-tests#149: "SMs are limited to 128B payload size, when Copy Engines
  can use 256B"). With the per-packet overhead ``h = 128 (1/e - 1)`` that the
  128-byte figure ``e`` implies, a 256-byte payload keeps ``256 / (256 + h)``:
  8/9 = 0.889 of the line rate on A100 (e = 0.80), 0.904 on H100/H200 (e = 0.824).
* Other fabrics (HCCS, UB, PCIe) publish no packet overhead for their DMA engines:
  the copy runs at the link's line rate, an upper bound (docs/collective.md).

A copy between nodes is not a copy-engine transfer (it goes through the NIC with
RDMA, i.e. a library), so ``api="memcpy"`` is refused for groups across nodes.
"""

from __future__ import annotations

from dataclasses import replace

from xpusim.hwprofiles.spec import System
from xpusim.sim.network.protocols import is_nccl

APIS = ("library", "memcpy")

NCCL_SM_PAYLOAD = 128  # bytes per NVLink write from an SM (nccl-tests#149)
CE_PAYLOAD = 256  # bytes per NVLink write from a copy engine (nccl-tests#149)


def copy_efficiency(system: System) -> float:
    """The fraction of the intra-node line rate a copy-engine transfer keeps."""
    if not (is_nccl(system) and system.intra_topology == "switch"):
        return 1.0  # no published DMA overhead on this fabric: the line rate
    e = system.collective_efficiency.intra_node
    overhead = NCCL_SM_PAYLOAD * (1.0 / e - 1.0)
    return CE_PAYLOAD / (CE_PAYLOAD + overhead)


def copy_system(system: System) -> System:
    """``system`` as a copy engine sees it: intra-node links at the copy efficiency, no
    per-step overhead (one DMA stream, no library handshake)."""
    eff = replace(
        system.collective_efficiency,
        intra_node=copy_efficiency(system),
        step_overhead_s=0.0,
    )
    return replace(system, collective_efficiency=eff)
