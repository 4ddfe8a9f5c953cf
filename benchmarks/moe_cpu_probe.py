"""MoE layer probe on a CPU (docs/calibration_notes.md, twenty-second session; data in
calibrate/data/cpu-host/moe-probe/). Needs torch; not part of the simulator. One torch
thread, thread CPU time.

  python benchmarks/moe_cpu_probe.py cycle K N M1,M2,.. W1,W2,..
      torch.mm(x, w.t()) at each m (x: m x K, w: N x K), the weight repeated back to back
      (W = 1: it stays in L2) or cycled over W distinct weights (footprint W x K x N x 4 B).
  python benchmarks/moe_cpu_probe.py split t16 t64 t256 t100
      the calibration suite's MoE layer against its GEMM calls alone (same weights, same
      order, same shapes, preallocated outputs): layer - GEMMs = every other op + Python.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import torch

SPLIT_SHAPES = {
    "t16": dict(tokens=16, hidden=256, expert_ffn=512, experts=8, top_k=2, shared_experts=0),
    "t64": dict(tokens=64, hidden=256, expert_ffn=512, experts=8, top_k=2, shared_experts=0),
    "t256": dict(tokens=256, hidden=256, expert_ffn=512, experts=8, top_k=2, shared_experts=0),
    "t100": dict(tokens=100, hidden=512, expert_ffn=1024, experts=16, top_k=4, shared_experts=1),
}


def cycle(k: int, n: int, ms: list[int], counts: list[int]) -> None:
    with torch.no_grad():
        for nw in counts:
            ws = [torch.randn(n, k) for _ in range(nw)]
            for m in ms:
                x, out = torch.randn(m, k), torch.empty(m, n)
                reps = max(nw, 24)
                per_call = []
                for _ in range(7):
                    t0 = time.thread_time()
                    for i in range(reps):
                        torch.mm(x, ws[i % nw].t(), out=out)
                    per_call.append((time.thread_time() - t0) / reps)
                per_call.sort()
                print(f"k={k} n={n} m={m} weights={nw} ({nw * k * n * 4 / 2**20:.1f} MiB): "
                      f"min {per_call[0] * 1e6:.1f} med {per_call[3] * 1e6:.1f} us", flush=True)


def _min_med(f: Callable[[], object], n: int) -> tuple[float, float]:
    ts = []
    for _ in range(n):
        t0 = time.thread_time()
        f()
        ts.append(time.thread_time() - t0)
    ts.sort()
    return ts[0] * 1e6, ts[len(ts) // 2] * 1e6


def _split_one(name: str) -> None:
    from xpusim.calibrate.kernel_runners import moe_layer_and_input

    layer, x = moe_layer_and_input(SPLIT_SHAPES[name], "fp32", "cpu")
    with torch.no_grad():
        _, stats = layer(x, return_stats=True)
        h, f = layer.hidden, layer.expert_ffn
        calls = [(x, layer.gate.weight.t(), torch.empty(x.shape[0], layer.num_experts))]
        for e, rows in enumerate(stats.kept_per_expert):
            if rows:
                xs, hs = torch.randn(rows, h), torch.randn(rows, f)
                calls += [(xs, layer.w_gate[e].t(), torch.empty(rows, f)),
                          (xs, layer.w_up[e].t(), torch.empty(rows, f)),
                          (hs, layer.w_down[e].t(), torch.empty(rows, h))]
        if layer.shared_experts:
            width = layer.shared_gate.weight.shape[0]
            hs = torch.randn(x.shape[0], width)
            calls += [(x, layer.shared_gate.weight.t(), torch.empty(x.shape[0], width)),
                      (x, layer.shared_up.weight.t(), torch.empty(x.shape[0], width)),
                      (hs, layer.shared_down.weight.t(), torch.empty(x.shape[0], h))]

        def forward() -> None:
            layer(x)

        def gemms() -> None:
            for a, b, out in calls:
                torch.mm(a, b, out=out)

        for _ in range(10):
            forward()
            gemms()
        for rnd in range(3):
            lay, gm = _min_med(forward, 60), _min_med(gemms, 60)
            print(f"{name} round {rnd}: layer min/med {lay[0]:.0f}/{lay[1]:.0f} us; GEMMs "
                  f"alone {gm[0]:.0f}/{gm[1]:.0f} us; rest {lay[0] - gm[0]:.0f} us", flush=True)


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    if len(argv) == 5 and argv[0] == "cycle":
        cycle(int(argv[1]), int(argv[2]), [int(v) for v in argv[3].split(",")],
              [int(v) for v in argv[4].split(",")])
        return 0
    if len(argv) >= 2 and argv[0] == "split" and all(a in SPLIT_SHAPES for a in argv[1:]):
        for name in argv[1:]:
            _split_one(name)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
