"""First-touch bytes of a CPU kernel graph: priced at the main-memory rate.

Without it an op's main-memory traffic is priced by the op's size: at most
``cache_bytes`` (the last-level cache) streams at ``cache_speedup`` x the main-memory
rate, the rate the microbenchmarks identify, each timed back to back (every call
re-touches what the previous call touched). Inside a kernel that holds for the bytes an
earlier op of the call left in the caches, not for the rest: the kernel's inputs and
output slices and a buffer's first touch in the call. A graph builder that describes its
data flow (sim/workloads/data_flow.py) states those bytes per op
(``Op.first_touch_bytes``); on a CPU calibrated with it they stream at the main-memory
rate, as a weight too large for the tier (``roofline.cold_bytes``), the rest of the op's
bytes by its size as before. No new parameter: both rates are the fitted ones.

Source (docs/calibration_notes.md, twenty-second session, FastAttention at seq 128 on the
dev VM): the ops that touch the kernel's inputs and outputs or fresh memory ran slower
than their back-to-back microbenchmark, Q's scale after a 4 MiB sweep at 8.6-9.8 GB/s and
the output store at 15-19 GB/s, at or below the main-memory stream rate (19.7 GB/s
fitted): a short pass over data not in the core's caches pays the prefetchers' ramp, TLB
misses and the write-allocate of a fresh output. (The other half of that diagnosis, a
faster L2 rate for chained ops, was built and fitted in the twenty-sixth session and not
identified: its fitted rate sat at its bound on 16 of 20 runs; removed.)

Off (every price as before) unless the device is a CPU whose calibration set
``Efficiency.first_touch`` (``calibrate/fit.py`` sets it on a CPU): every GPU / NPU
profile and every CPU overlay written before it; and only for ops whose builder states
first touches (today FastAttention's).
"""

from __future__ import annotations

from xpusim.hwprofiles.spec import Device
from xpusim.sim.ir import Op


def first_touch_bytes(op: Op, device: Device, nbytes: float) -> float:
    """Bytes of ``op``'s ``nbytes`` of main-memory traffic priced at the main-memory rate
    because no earlier op of its graph touched them; 0 where the rule is off."""
    if device.arch != "cpu" or not device.efficiency.first_touch:
        return 0.0
    return max(0.0, min(op.first_touch_bytes, nbytes))
