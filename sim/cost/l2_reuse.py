"""Reuse-aware memory tiers of a CPU kernel graph: the reuse distance picks each byte's tier.

Without it an op's main-memory traffic is priced by the op's size: at most
``cache_bytes`` (the last-level cache) streams at ``cache_speedup`` x the main-memory
rate, a rate the microbenchmarks identify, each timed back to back (every call
re-touches what the previous call touched). Inside a kernel that is true of some
bytes and not of others. A graph builder that describes its data flow
(sim/workloads/reuse.py) states, per op, how many of its bytes touch data an earlier op
of the call touched and how many bytes moved since (``Op.reuse``: the reuse distance,
LRU on the traffic in between). By that distance:

* at most the core's own L2 (``Efficiency.l2_bytes``, the profile's per-core ``l2``):
  the L2 tier, ``l2_speedup`` x the cache tier's rate (fitted, >= 1);
* more than the cache tier, or never touched before in the call (the kernel's inputs
  and output slices, a buffer's first touch: an infinite distance): main memory, as a
  weight too large for the tier (``roofline.cold_bytes``);
* in between: the tier of the op's size, as before.

Source (docs/calibration_notes.md, twenty-second session, FastAttention at seq 128 on the
dev VM): the ops that consume the previous op's output ran at 86-121 GB/s in the kernel
(their operands in the 2 MiB L2), priced at the fitted tier's 26-30 GB/s; the ops that
touch the kernel's inputs and outputs or fresh memory ran slower than their back-to-back
microbenchmark: Q's scale after a 4 MiB sweep at 8.6-9.8 GB/s and the output store at
15-19 GB/s, at or below the main-memory stream rate (19.7 GB/s fitted): a short pass over
data not in the core's L2 pays the prefetchers' ramp, TLB misses and the write-allocate
of a fresh output. A microbenchmark's reuse distance is its own footprint, so its price
moves only where the footprint fits the L2.

Off (every price as before) unless the device is a CPU whose calibration set
``Efficiency.l2_bytes`` (``calibrate/fit.py`` sets it on a CPU): every GPU / NPU profile
and every CPU overlay written before this tier; and only for ops whose builder states
reuse (today FastAttention's and the microbenchmarks').
"""

from __future__ import annotations

from xpusim.hwprofiles.spec import Device
from xpusim.sim.ir import MAIN_MEMORY, Op


def l2_capacity(device: Device) -> float:
    """Bytes of the per-core L2 the profile lists (a CPU's; 0 if none)."""
    level = device.level("l2")
    if device.arch != "cpu" or level is None or level.scope != "per_core":
        return 0.0
    return level.capacity_bytes


def reuse_tiers(op: Op, device: Device, nbytes: float | None = None) -> tuple[float, float]:
    """(bytes served by the core's L2, bytes from beyond the last-level cache) of ``op``'s
    main-memory traffic, by the reuse distances its builder stated (``Op.reuse``): at most
    the calibrated L2 tier's size (``Efficiency.l2_bytes``) -> L2; more than the cache
    tier's (``cache_bytes``; a first touch in the call has an infinite distance) -> main
    memory; the rest keeps the tier of the op's size. (0, 0) where the tier is off (not
    a CPU, or an overlay without it) or the op states nothing: priced as before."""
    if device.arch != "cpu":
        return 0.0, 0.0
    eff = device.efficiency
    return split_reuse(op, eff.l2_bytes, eff.cache_bytes, nbytes)


def split_reuse(
    op: Op, l2_bytes: float, cache_bytes: float, nbytes: float | None = None
) -> tuple[float, float]:
    """``reuse_tiers`` for an L2 of ``l2_bytes`` (0: off) and a cache tier of
    ``cache_bytes``, capped at ``nbytes`` (default the op's main-memory bytes)."""
    if l2_bytes <= 0 or not op.reuse:
        return 0.0, 0.0
    total = op.bytes.get(MAIN_MEMORY, 0.0) if nbytes is None else nbytes
    near = min(total, sum(b for b, distance in op.reuse if distance <= l2_bytes))
    far = sum(b for b, distance in op.reuse if distance > max(cache_bytes, l2_bytes))
    return near, min(far, total - near)


def l2_rate(device: Device, fraction: float) -> float:
    """Bytes/s of the L2 tier: ``l2_speedup`` x the cache tier's rate (main-memory
    bandwidth x ``cache_speedup`` x the op's share ``fraction``)."""
    eff = device.efficiency
    return device.hbm_bandwidth * eff.cache_speedup * eff.l2_speedup * fraction
