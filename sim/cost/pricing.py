"""The pricing pass: durations of lowered IR on one system.

Lowering says what work runs (ops, segments of ops, collectives on concrete ranks) and
never how long it takes; ``Pricing`` turns work into seconds and the engine schedules
with them:

* an ``Op`` by the device's cost model (``CachedCostModel(KernelCostModel(device))``:
  the roofline with attention priced by its implementation);
* a ``Collective`` by the system's network (``sim.network.comm_time_fn``);
* a ``Segment`` as the sum of its ops' times and, when the framework issues its ops one
  by one on the host (``Segment.host``), at least ``len(ops) x host_op_s``: n ops cannot
  finish before the host has launched them (the excess is the exposed host time), plus
  one ``host_op_s`` per host sync in it (``Segment.host_syncs``: the device idles while
  the host issues the first op after the wait); a segment's ``host_extra_s`` (host work
  beyond one op per op, measured on a reference host) adds to the host side, scaled by
  ``host_scale``; the host's lead over the device from the unit's earlier runs
  (``Segment.after``) is subtracted;
* a ``Delay`` is its own duration (work with no hardware model behind it).

``comm_share`` and ``contended_rate`` describe SM contention (``overlap_compute_share``):
the fraction of a compute task's rate left while a collective is in flight on its rank;
the engine applies it to the overlapping interval.

A what-if that changes hardware (device bandwidths, peaks, efficiencies; system links)
prices the same lowered graphs with another ``Pricing`` instead of lowering again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from xpusim.hwprofiles.spec import Device, System
from xpusim.sim.cost.attention_impl import KernelCostModel
from xpusim.sim.cost.base import CachedCostModel
from xpusim.sim.ir import Collective, Delay, Op, Segment, Work
from xpusim.sim.network import comm_time_fn

OpTime = Callable[[Op], float]
CommTime = Callable[[Collective], float]
OpBound = Callable[[Op], str]


def overlap_compute_share(system: System) -> float:
    """Fraction of the device's SMs left to compute kernels while an NCCL collective
    runs on the same GPU: (SMs - c) / SMs with c the collective's channels.

    Why: NCCL launches a collective as one kernel whose grid is one thread block (CTA)
    per channel (NVIDIA/nccl ``src/enqueue.cc``: the launch grid is ``nChannels``), and
    each block stays resident on its SM for the whole collective, so kernels on other
    streams are scheduled on the remaining SMs. Measured: on an H100 (132 SMs) a GEMM
    of one 132-block wave run beside an ncclAllGather of 24 blocks took nearly twice
    its time (NVIDIA developer forums, "Compute-Communication Overlap Causes Severe GEMM
    Performance Degradation because of Tail Effect", nsys trace); overlap designs treat
    this interference as a cost to avoid (FlashOverlap, arXiv 2504.19519: "interference-
    free computation"); DeepSeek-V3's report dedicates 20 of 132 SMs to
    communication; TransformerEngine's userbuffers overlap gives the comm kernels a
    fixed ``num_sm``. The share taken here is the proportional one, a lower bound of
    the slowdown (a GEMM's wave quantisation can make it larger, as measured above).
    c is the system's ``[collective_library] channels`` (an estimate
    from NCCL INFO logs, see the system profile's source), capped below the SM count.
    1.0 (no contention) off NVIDIA/NCCL. HCCL on Ascend: both of its communication
    engines, Host CPU+TS (Atlas A2) and AI CPU+TS (Atlas A3), "do not occupy compute
    cores" (CANN 8.5 HCCL user guide, "通信引擎": 不占用计算核; the task scheduler runs
    the transfers on DMA engines); only the opt-in HCCL_OP_EXPANSION_MODE=AIV runs
    collectives on the vector cores, not modelled. AMD: RCCL has NCCL's launch
    structure, but no channel count is sourced for the AMD profiles."""
    if system.device.arch != "nvidia" or system.collective_library.name != "nccl":
        return 1.0
    sms = system.device.matrix_cores
    if sms <= 1:
        return 1.0
    c = min(system.collective_library.channels, sms - 1)
    return (sms - c) / sms


@dataclass(frozen=True)
class SegmentCost:
    """A segment's time and its parts: each op's device time in order, their sum, and the
    host time the device waits for on top (0 unless the segment is host-bound)."""

    op_s: tuple[float, ...]
    device_s: float
    host_s: float

    @property
    def time_s(self) -> float:
        return self.device_s + self.host_s


# Recently used device cost models, newest first: (device, attention_impl, model).
_MODELS: list[tuple[Device, str | None, CachedCostModel]] = []
_KEEP_MODELS = 4


def cost_model(device: Device, attention_impl: str | None = None) -> CachedCostModel:
    """The device's kernel cost model (attention by ``attention_impl``), memoised on op
    content. Shared by the steps priced on an equal device in this process (a study's
    plans, a worker's tasks): an op's cost is a pure function of the frozen ``Device``
    and the implementation, so equal devices give equal costs; a what-if device with
    other values is another key."""
    for known, impl, model in _MODELS:
        if impl == attention_impl and (known is device or known == device):
            return model
    model = CachedCostModel(KernelCostModel(device, attention_impl))
    _MODELS.insert(0, (device, attention_impl, model))
    del _MODELS[_KEEP_MODELS:]
    return model


class Pricing:
    """Durations of IR work: ``op_time`` prices an op, ``comm_time`` a collective;
    ``host_op_s`` is the framework's host cost per op a segment issues.

    Segment costs are memoised by identity: lowering shares one segment object among
    every unit that runs the same ops, so each is priced once per ``Pricing``.
    """

    def __init__(self, op_time: OpTime, comm_time: CommTime, host_op_s: float = 0.0,
                 comm_share: float = 1.0, op_bound: OpBound | None = None,
                 host_scale: float = 1.0) -> None:
        self.op_time = op_time
        self.comm_time = comm_time
        self.host_op_s = host_op_s
        # Factor on a segment's ``host_extra_s`` (measured on a reference host): the
        # reference's single-thread speed over this system host's; 0 = not issued.
        self.host_scale = host_scale
        # SM contention (``overlap_compute_share``): 1.0 = none. ``op_bound`` names an
        # op's roofline bound ("compute", "memory", "overhead"); without it every op
        # counts as compute-bound.
        self.comm_share = comm_share
        self.op_bound = op_bound
        self._rates: dict[Segment, float] = {}  # segment -> contended rate
        self._segments: dict[Segment, SegmentCost] = {}
        self._leads: dict[Segment, float] = {}  # segment -> host lead when it ends
        self._times: dict[Segment, float] = {}  # segment -> time_s (the engine's lookup)

    @classmethod
    def for_system(
        cls,
        system: System,
        attention_impl: str | None = None,
        host_op_s: float = 0.0,
        comm_time: CommTime | None = None,
        wrap: Callable[[OpTime], OpTime] | None = None,
        host_scale: float = 1.0,
    ) -> Pricing:
        """Pricing on ``system``: its device's kernel cost model (attention by
        ``attention_impl``, default the device's), its network. ``comm_time`` reuses a
        network pricing already built for this system; ``wrap`` adjusts op times (a
        sensitivity question such as "GEMMs 25% slower")."""
        model = cost_model(system.device, attention_impl)

        def op_time(op: Op) -> float:
            return model.time(op).time_s

        def op_bound(op: Op) -> str:
            return model.time(op).bound

        return cls(wrap(op_time) if wrap else op_time, comm_time or comm_time_fn(system),
                   host_op_s, overlap_compute_share(system), op_bound, host_scale)

    def contended_rate(self, work: Segment | Op) -> float:
        """Rate (0..1] at which ``work`` progresses while a collective is in flight on
        its rank. Compute-bound ops run on ``comm_share`` of the SMs, so their time
        stretches by 1 / comm_share. Memory-bound ops and launch overheads are taken
        not to slow: with 76-78% of the SMs left (24 of 108, 32 of 132 channels) an
        HBM-streaming kernel is still limited by HBM, and the collective's own HBM
        traffic (at NIC or NVLink rates, tens to hundreds of GB/s against 2-3 TB/s) is
        not charged (ASSUMPTION, no measurement sourced); host-bound time neither. A
        segment's rate is the work-weighted mix: stretch = 1 + f (1/share - 1) with f
        its compute-bound share of time. Memoised by identity (lowering shares one
        segment object among the units that run it)."""
        if isinstance(work, Op):
            return self._contended_rate(work)  # ops hold a dict: not hashable
        rate = self._rates.get(work)
        if rate is None:
            rate = self._rates[work] = self._contended_rate(work)
        return rate

    def _contended_rate(self, work: Segment | Op) -> float:
        share = self.comm_share
        if share >= 1.0:
            return 1.0
        if isinstance(work, Op):
            ops: tuple[Op, ...] = (work,)
            times: tuple[float, ...] = (self.op_time(work),)
            total = times[0]
        else:
            cost = self.segment(work)
            ops, times, total = work.ops, cost.op_s, cost.time_s
        if total <= 0:
            return 1.0
        bound = self.op_bound
        compute = sum(t for op, t in zip(ops, times, strict=True)
                      if bound is None or bound(op) == "compute")
        return 1.0 / (1.0 + compute / total * (1.0 / share - 1.0))

    def segment(self, seg: Segment) -> SegmentCost:
        cost = self._segments.get(seg)
        if cost is None:
            cost = self._segments[seg] = self._price_segment(seg)
        return cost

    def _price_segment(self, seg: Segment) -> SegmentCost:
        op_time = self.op_time
        times = tuple(op_time(op) for op in seg.ops)
        device = 0.0
        for t in times:  # in program order (not math.fsum: the engine's sums are plain)
            device += t
        host = lead = 0.0
        if seg.host and self.host_op_s > 0:
            # The framework's extra host time (per-expert launches of TransformerEngine's
            # grouped experts, sim.training.te_moe_host), scaled to this system's host.
            issue = len(seg.ops) * self.host_op_s + seg.host_extra_s * self.host_scale
            ahead = self._lead_in(seg)
            exposed = issue - device - ahead
            if exposed > 0:
                host = exposed
            # The host keeps issuing while the device works: it leaves this run ahead by
            # the slack, unless it waited on the device here (a sync drains the queue).
            lead = 0.0 if seg.host_syncs else max(0.0, ahead + device - issue)
            # After a host sync the device queue is empty: the device idles while the
            # host issues the next op (the wake-up itself is not priced: no source).
            host += seg.host_syncs * self.host_op_s
        self._leads[seg] = lead
        return SegmentCost(times, device, host)

    def _lead_in(self, seg: Segment) -> float:
        """How far ahead of the device the host is when ``seg`` starts: what it gained
        over the unit's earlier runs since the last sync (``Segment.after``; the
        collectives between them are not counted, so a lower bound). Earlier runs are
        priced oldest first, so the chain is walked without recursion."""
        prev = seg.after
        if prev is None:
            return 0.0
        chain: list[Segment] = []
        p: Segment | None = prev
        while p is not None and p not in self._leads:
            chain.append(p)
            p = p.after
        for s in reversed(chain):
            self.segment(s)
        return self._leads[prev]

    def segment_time(self, seg: Segment) -> float:
        t = self._times.get(seg)
        if t is None:
            t = self._times[seg] = self.segment(seg).time_s
        return t

    def duration(self, work: Work) -> float | None:
        """Seconds of ``work``; None for a collective (the engine prices it where its
        members meet, or up front when no other member is simulated)."""
        if isinstance(work, Segment):
            return self.segment_time(work)
        if isinstance(work, Op):
            return self.op_time(work)
        if isinstance(work, Delay):
            return work.seconds
        return None
