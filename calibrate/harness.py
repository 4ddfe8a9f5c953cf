"""Time a callable robustly: synchronise, warm up, repeat until the spread is small.

The harness reports the median (robust to outliers: a preempted run on a shared
machine lands in the tail, not in the median) and the interquartile range. It
keeps repeating until the relative IQR ``(q3 - q1) / median`` drops below a
target or the time budget is spent, and it *flags* measurements whose spread
stays above a threshold instead of hiding them: ``noisy=True`` and the noise
score ``rel_iqr`` go into every CSV row and the fit summary.

Timers: on CUDA/NPU device events around the call, after a synchronise, so queued
work from earlier calls is not billed to this one. On a CPU with one torch thread,
the calling thread's CPU time (``time.thread_time``, CLOCK_THREAD_CPUTIME_ID): the
kernel runs entirely in that thread, and CPU time excludes the slices in which other
processes held the core, so a shared machine slows the wall clock but not this
number. The wall time is recorded too; ``contention = wall / cpu`` (1 on a quiet
machine) is reported per case. With several threads the worker threads' CPU time is
invisible to ``thread_time``, so the wall clock is the measure. A test passes a fake
timer with injected noise.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

# One timed call of fn -> seconds, or (seconds, wall seconds) when the measure is not
# the wall clock (CPU thread time).
Timer = Callable[[Callable[[], object]], "float | tuple[float, float]"]


@dataclass(frozen=True)
class HarnessConfig:
    """How hard to try for a steady number.

    ``target_rel_iqr``: stop repeating once (q3 - q1) / median is at most this.
    ``noisy_rel_iqr``: flag the measurement as noisy above this spread.
    ``budget_s``: stop after this much timed work even if the spread is still large.
    """

    warmup: int = 2
    warmup_budget_s: float = 0.2
    min_reps: int = 5
    max_reps: int = 200
    budget_s: float = 1.0
    target_rel_iqr: float = 0.03
    noisy_rel_iqr: float = 0.10
    # Extra warm-up calls, where the caller can count page faults, until a call faults no
    # more than the model prices (``settle``): at most this many calls or this long.
    settle_calls: int = 16
    settle_budget_s: float = 1.0

    @classmethod
    def quick(cls) -> HarnessConfig:
        return cls(warmup=1, warmup_budget_s=0.05, min_reps=5, max_reps=60, budget_s=0.25,
                   settle_budget_s=0.5)


@dataclass(frozen=True)
class Measurement:
    """Summary of repeated timings of one case (seconds)."""

    median_s: float
    q1_s: float
    q3_s: float
    min_s: float
    reps: int
    rel_iqr: float  # (q3 - q1) / median: the noise score
    outlier_fraction: float  # samples above q3 + 1.5 IQR (Tukey fence)
    noisy: bool
    wall_median_s: float = 0.0  # median wall time (== median_s for wall-clock timers)
    contention: float = 1.0  # wall_median_s / median_s: > 1 means the core was shared

    def as_dict(self) -> dict:
        return {
            "median_s": self.median_s,
            "q1_s": self.q1_s,
            "q3_s": self.q3_s,
            "min_s": self.min_s,
            "reps": self.reps,
            "rel_iqr": self.rel_iqr,
            "outlier_fraction": self.outlier_fraction,
            "noisy": self.noisy,
            "wall_median_s": self.wall_median_s,
            "contention": self.contention,
        }


def summarise(
    samples: Sequence[float], noisy_rel_iqr: float = 0.10, wall: Sequence[float] | None = None
) -> Measurement:
    """Median, quartiles and noise flags of a list of timings (``wall``: the wall times)."""
    if not samples:
        raise ValueError("no samples to summarise")
    arr = np.asarray(samples, dtype=float)
    q1, med, q3 = (float(v) for v in np.percentile(arr, [25, 50, 75]))
    iqr = q3 - q1
    rel = iqr / med if med > 0 else math.inf
    fence = q3 + 1.5 * iqr
    outliers = float(np.mean(arr > fence)) if iqr > 0 else float(np.mean(arr > q3 * 1.5))
    wall_med = float(np.median(wall)) if wall else med
    return Measurement(
        med,
        q1,
        q3,
        float(arr.min()),
        len(arr),
        rel,
        outliers,
        rel > noisy_rel_iqr,
        wall_med,
        wall_med / med if med > 0 else 1.0,
    )


def wall_timer(sync: Callable[[], None] = lambda: None, clock=time.perf_counter) -> Timer:
    """Host wall-clock timer; ``sync`` waits for the device (a no-op on CPU)."""

    def timed(fn: Callable[[], object]) -> float:
        sync()
        t0 = clock()
        fn()
        sync()
        return clock() - t0

    return timed


def thread_cpu_timer() -> Timer:
    """CPU time of the calling thread (and the wall time): single-threaded CPU kernels."""

    def timed(fn: Callable[[], object]) -> tuple[float, float]:
        w0, c0 = time.perf_counter(), time.thread_time()
        fn()
        c1, w1 = time.thread_time(), time.perf_counter()
        return c1 - c0, w1 - w0

    return timed


def event_timer(kind: str) -> Timer:
    """CUDA / NPU event timer: device-side start/end events, not host time."""
    import torch

    backend = torch.cuda if kind == "cuda" else torch.npu  # torch.npu exists once torch_npu imports

    def timed(fn: Callable[[], object]) -> float:
        backend.synchronize()
        start = backend.Event(enable_timing=True)
        end = backend.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) * 1e-3  # elapsed_time is in milliseconds

    return timed


def timer_for(kind: str, threads: int = 1) -> Timer:
    if kind in ("cuda", "npu"):
        return event_timer(kind)
    return thread_cpu_timer() if threads == 1 else wall_timer()


def thread_minor_faults() -> Callable[[], int] | None:
    """Counter of the calling thread's minor page faults (``getrusage(RUSAGE_THREAD)``,
    Linux), or None where the platform has none."""
    try:
        import resource
    except ImportError:  # not POSIX
        return None
    who = getattr(resource, "RUSAGE_THREAD", None)
    if who is None:
        return None
    return lambda: int(resource.getrusage(who).ru_minflt)


# Faults per call a settled case may take beyond its modelled ones: the interpreter's own
# small allocations (measured: 0-2.4 per FastAttention call once settled, 2026-12-07).
SETTLE_SLACK_FAULTS = 32
# Calls in a row within that: one clean call is not enough, the same add output faulted
# again after a clean call (4,114, 0, then 4,096 on each of the next 7 calls).
SETTLE_CLEAN_CALLS = 3


def settle(
    fn: Callable[[], object],
    faults: Callable[[], int],
    expected_faults: float,
    config: HarnessConfig,
    clock: Callable[[], float] = time.perf_counter,
) -> int:
    """Call ``fn`` until ``SETTLE_CLEAN_CALLS`` calls in a row take no more minor page faults
    than ``expected_faults`` (the model's: the pages of its fresh >= 32 MiB outputs) plus a
    small slack, or the settle budget is spent; returns the calls made.

    glibc's ``posix_memalign`` hands back a block a little smaller than the chunk it carved
    for an aligned request, so the freed block does not fit the next call's request until
    freed neighbours coalesce: a 16 MiB ``torch.add`` output grew the heap by 16 MiB and
    faulted all 4,096 pages on each of its first 5-9 calls in a fresh process, then none
    (strace: one ``brk`` per call, then none; 2026-12-07, docs/calibration_notes.md,
    twenty-third session). A warm-up of one or two calls times that transient, not the
    steady state the model prices.
    """
    start = clock()
    clean = 0
    for n in range(1, config.settle_calls + 1):
        before = faults()
        fn()
        clean = clean + 1 if faults() - before <= expected_faults + SETTLE_SLACK_FAULTS else 0
        if clean >= SETTLE_CLEAN_CALLS or clock() - start > config.settle_budget_s:
            return n
    return config.settle_calls


def measure(
    fn: Callable[[], object],
    timer: Timer | None = None,
    config: HarnessConfig | None = None,
    clock: Callable[[], float] = time.perf_counter,
    faults: Callable[[], int] | None = None,
    expected_faults: float = 0.0,
) -> Measurement:
    """Warm ``fn`` up (then, given a fault counter, ``settle`` it), then time it until the
    spread is small or the budget is spent.

    ``clock`` only tracks the budget; the timings themselves come from ``timer``
    (so a fake timer can drive the whole loop in a test).
    """
    cfg = config or HarnessConfig()
    timer = timer or wall_timer()
    start = clock()
    for i in range(max(cfg.warmup, 1)):
        timer(fn)
        if i + 1 >= cfg.warmup and clock() - start > cfg.warmup_budget_s:
            break
    if faults is not None:
        settle(fn, faults, expected_faults, cfg, clock)
    samples: list[float] = []
    walls: list[float] = []
    spent = 0.0
    while len(samples) < cfg.max_reps:
        got = timer(fn)
        t, w = got if isinstance(got, tuple) else (got, got)
        samples.append(t)
        walls.append(w)
        spent += w
        if len(samples) < cfg.min_reps:
            continue
        if spent >= cfg.budget_s:
            break
        # Check the spread only every few samples: cheap, and lets outliers dilute.
        if len(samples) % cfg.min_reps == 0:
            m = summarise(samples, cfg.noisy_rel_iqr)
            if m.rel_iqr <= cfg.target_rel_iqr:
                break
    return summarise(samples, cfg.noisy_rel_iqr, walls)


def noise_score(measurements: Sequence[Measurement]) -> dict:
    """Machine-level noise: the cases' relative IQR (median, p90), the share flagged noisy,
    and the wall/CPU contention ratio (median, max)."""
    if not measurements:
        return {
            "median_rel_iqr": 0.0,
            "p90_rel_iqr": 0.0,
            "noisy_fraction": 0.0,
            "median_contention": 1.0,
            "max_contention": 1.0,
        }
    rel = np.array([m.rel_iqr for m in measurements])
    cont = np.array([m.contention for m in measurements])
    return {
        "median_rel_iqr": float(np.median(rel)),
        "p90_rel_iqr": float(np.percentile(rel, 90)),
        "noisy_fraction": float(np.mean([m.noisy for m in measurements])),
        "median_contention": float(np.median(cont)),
        "max_contention": float(cont.max()),
    }
