"""The pricing pass: durations of lowered IR on one system.

Lowering says what work runs (ops, segments of ops, collectives on concrete ranks) and
never how long it takes; ``Pricing`` turns work into seconds and the engine schedules
with them:

* an ``Op`` by the device's cost model (``CachedCostModel(KernelCostModel(device))``:
  the roofline with attention priced by its implementation);
* a ``Collective`` by the system's network (``sim.network.comm_time_fn``);
* a ``Segment`` as the sum of its ops' times and, when the framework issues its ops one
  by one on the host (``Segment.host``), at least ``len(ops) x host_op_s``: n ops cannot
  finish before the host has launched them (the excess is the exposed host time);
* a ``Delay`` is its own duration (work with no hardware model behind it).

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

    def __init__(self, op_time: OpTime, comm_time: CommTime, host_op_s: float = 0.0) -> None:
        self.op_time = op_time
        self.comm_time = comm_time
        self.host_op_s = host_op_s
        self._segments: dict[Segment, SegmentCost] = {}
        self._times: dict[Segment, float] = {}  # segment -> time_s (the engine's lookup)

    @classmethod
    def for_system(
        cls,
        system: System,
        attention_impl: str | None = None,
        host_op_s: float = 0.0,
        comm_time: CommTime | None = None,
        wrap: Callable[[OpTime], OpTime] | None = None,
    ) -> Pricing:
        """Pricing on ``system``: its device's kernel cost model (attention by
        ``attention_impl``, default the device's), its network. ``comm_time`` reuses a
        network pricing already built for this system; ``wrap`` adjusts op times (a
        sensitivity question such as "GEMMs 25% slower")."""
        model = cost_model(system.device, attention_impl)

        def op_time(op: Op) -> float:
            return model.time(op).time_s

        return cls(wrap(op_time) if wrap else op_time, comm_time or comm_time_fn(system),
                   host_op_s)

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
        host = 0.0
        if seg.host and self.host_op_s > 0:
            exposed = len(seg.ops) * self.host_op_s - device
            if exposed > 0:
                host = exposed
        return SegmentCost(times, device, host)

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
