"""What an algorithm asks of the network: phases of concurrent flows.

A collective algorithm decomposes into sequential ``Phase``s. Inside a phase all
flows run at once (a pipelined ring's n-1 steps are one phase whose flows carry the
bytes of all steps); ``rounds`` counts the latency-bound steps, each charged one hop
latency plus the profile's per-step overhead. Traffic is either an explicit list of
``(src, dst, bytes)`` flows or a *uniform all-to-all* inside disjoint subgroups, which
the analytical backend prices by symmetry without listing the n^2 flows.

``PhaseCost``/``NetworkCost`` are what a backend returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Flow = tuple[int, int, float]  # (source device, destination device, bytes)


@dataclass(frozen=True)
class Phase:
    name: str
    rounds: int
    flows: tuple[Flow, ...] = ()
    # Uniform all-to-all: every ordered pair inside each subgroup exchanges a2a_bytes.
    a2a_groups: tuple[tuple[int, ...], ...] = ()
    a2a_bytes: float = 0.0
    # In-switch traffic (NVLS multimem): bytes that cross each listed device's switch
    # port in *each* direction, at ``port_scale`` x the port's collective capacity
    # (NVLS reaches a different share of the port than point-to-point copies).
    port_bytes: tuple[tuple[int, float], ...] = ()
    port_scale: float = 1.0
    # Same-node flows go NIC to NIC (RDMA loopback) instead of over the server
    # fabric: DeepEP's pure-RDMA low-latency kernels (Topology.path).
    via_nic: bool = False

    def expand(self) -> list[Flow]:
        """All flows, listing the uniform all-to-all pairs (n^2: small groups only)."""
        flows = [f for f in self.flows if f[0] != f[1] and f[2] > 0]
        if self.a2a_bytes > 0:
            for sub in self.a2a_groups:
                flows.extend((a, b, self.a2a_bytes) for a in sub for b in sub if a != b)
        return flows

    @property
    def is_uniform_a2a(self) -> bool:
        return bool(self.a2a_groups) and not self.flows and not self.port_bytes


@dataclass(frozen=True)
class PhaseCost:
    name: str
    time_s: float
    transfer_s: float  # bandwidth term: the busiest link's bytes / capacity
    latency_s: float  # rounds x (hop latency + step overhead)
    # Bytes that crossed each link class (a flow counts once per class it crosses,
    # e.g. a NIC-to-NIC flow adds its bytes once to "inter_node").
    link_bytes: dict[str, float]
    bottleneck: str  # the link that sets transfer_s and why

    def as_dict(self) -> dict[str, object]:
        """The phase as reported in results (collective and EP breakdowns)."""
        return {
            "name": self.name,
            "time_s": self.time_s,
            "transfer_s": self.transfer_s,
            "latency_s": self.latency_s,
            "link_bytes": self.link_bytes,
            "bottleneck": self.bottleneck,
        }


@dataclass(frozen=True)
class NetworkCost:
    time_s: float
    phases: list[PhaseCost] = field(default_factory=list)

    @property
    def link_bytes(self) -> dict[str, float]:
        total: dict[str, float] = {}
        for p in self.phases:
            for cls, b in p.link_bytes.items():
                total[cls] = total.get(cls, 0.0) + b
        return total

    @property
    def bottleneck(self) -> str:
        if not self.phases:
            return ""
        slow = max(self.phases, key=lambda p: p.time_s)
        return f"{slow.name}: {slow.bottleneck}"
