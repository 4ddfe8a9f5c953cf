"""Minor page faults and thread CPU time per call of the calibration's held-out attention
cases, with glibc's malloc left as the process finds it or pinned at its dynamic ceiling
(calibrate/allocator.py). Needs torch; not part of the simulator. One torch thread.

  python benchmarks/alloc_fault_probe.py free|pinned [SUITES]

Prints CSV rows: mode, case, median_us, faults_per_call. Data of the twenty-third session in
calibrate/data/zen4-host/probes/.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time

import torch
from xpusim.calibrate.allocator import pin_glibc_malloc
from xpusim.calibrate.suites import cases


def faults() -> int:
    return resource.getrusage(resource.RUSAGE_THREAD).ru_minflt


def main(mode: str, suites: list[str]) -> None:
    torch.set_num_threads(1)
    if mode == "pinned" and not pin_glibc_malloc():
        raise SystemExit("mallopt unavailable (not glibc)")
    print("mode,case,median_us,faults_per_call")
    for case in cases(suites, quick=True, seed=20260, dtype="fp32", device="cpu"):
        if case.split != "heldout":
            continue
        fn = case.runner("cpu")
        for _ in range(3):
            fn()
        times: list[float] = []
        counts: list[int] = []
        start = time.perf_counter()
        while len(times) < 40 and time.perf_counter() - start < 1.0:
            f0 = faults()
            t0 = time.thread_time()
            fn()
            times.append(time.thread_time() - t0)
            counts.append(faults() - f0)
        print(f'{mode},"{case.name}",{statistics.median(times) * 1e6:.1f},'
              f"{statistics.mean(counts):.1f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2].split(",") if len(sys.argv) > 2 else
         ["fastattention", "standard-attention", "moe"])
