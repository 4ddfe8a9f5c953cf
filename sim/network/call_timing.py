"""What a benchmark's timing adds to a collective's device time (``--timing``).

``device``: calls queued back to back, elapsed time / calls (nccl-tests; the default).
``host``: one call per trial on an idle device through torch.distributed, so the timed
interval also holds the framework's per-call host path and the ranks' arrival skew.
The figure and its source are in ``sim/data/call_timing.toml``.
"""

from __future__ import annotations

import tomllib
from functools import cache
from importlib import resources

from xpusim.sim.errors import InputError

TIMINGS = ("device", "host")


@cache
def _host_call_s() -> float:
    text = (resources.files("xpusim.sim") / "data" / "call_timing.toml").read_text(
        encoding="utf-8"
    )
    return float(tomllib.loads(text)["torch_distributed"]["host_call_us"]) * 1e-6


def timing_overhead_s(timing: str) -> float:
    """Seconds a benchmark with this ``timing`` adds to each call's device time."""
    if timing not in TIMINGS:
        raise InputError(f"--timing {timing!r}: choose one of {', '.join(TIMINGS)}")
    return _host_call_s() if timing == "host" else 0.0


__all__ = ["TIMINGS", "timing_overhead_s"]
