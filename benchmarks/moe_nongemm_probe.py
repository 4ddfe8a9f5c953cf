"""Where the MoE layer's non-GEMM time goes on a CPU (docs/calibration_notes.md, "2026-12-07,
twenty-third session: the MoE layer's non-GEMM ops"). Needs torch; not part of the simulator.
One torch thread, thread CPU time (the calibrate harness's timer at one thread).

  python benchmarks/moe_nongemm_probe.py ops CALIBRATION.toml [t16 t64 ...]
      every ATen call of one forward of the suite's layer (hidden 256, ffn 512, 8 experts,
      top-2) captured with its arguments (TorchDispatchMode) and replayed alone, grouped by
      op name (views apart): calls per forward, min / median time of the group per forward;
      then the priced graph's GEMM and non-GEMM totals under CALIBRATION.
  python benchmarks/moe_nongemm_probe.py width CALIBRATION.toml
      the layer at hidden / ffn 8 / 8, 32 / 64, 256 / 512 (same 8 experts, top-2; 16 and 64
      tokens) against (a) its GEMM calls alone (torch.mm(out=) back to back, same weights
      and order: layer_split.csv's method), (b) the expert loop's GEMMs as the kernel writes
      them (``xs @ w[e].t()``, fresh outputs, row slices) without silu / mul and routing;
      8 interleaved rounds, min of 40 calls each; and the priced GEMM / non-GEMM split.
  python benchmarks/moe_nongemm_probe.py same_weights
      t16 / t64 at hidden 256: the layer against its GEMMs as written, with the 8 experts'
      weights as they are (12 MiB swept per forward) and with every expert reading expert
      0's weights (one 1.5 MiB set: ``expand`` views of one storage, routing unchanged).
  python benchmarks/moe_nongemm_probe.py cold
      the t16 layer's non-GEMM ATen calls (views apart), each replayed alone and timed
      right after itself (warm) or right after a ``sum`` over 0.5 / 1.5 / 12 MiB (what a
      GEMM's weight read leaves behind in the caches); 30 passes, min / median of the sum.
CSV on stdout.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

SHAPES = {
    "t16": dict(tokens=16, hidden=256, expert_ffn=512, experts=8, top_k=2, shared_experts=0),
    "t64": dict(tokens=64, hidden=256, expert_ffn=512, experts=8, top_k=2, shared_experts=0),
}


class _Capture(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        self.calls.append((func, args, kwargs))
        return func(*args, **kwargs)


def _times(f: Callable[[], object], n: int) -> tuple[float, float]:
    ts = []
    for _ in range(n):
        t0 = time.thread_time()
        f()
        ts.append(time.thread_time() - t0)
    return min(ts) * 1e6, statistics.median(ts) * 1e6


def _priced(shape: dict, kept: list[int], calibration: str) -> tuple[float, float]:
    """(GEMM, non-GEMM) priced time in us of the layer's graph under ``calibration``."""
    from xpusim.hwprofiles import load_device
    from xpusim.sim.cost import RooflineModel
    from xpusim.sim.workloads.moe import describe_moe

    model = RooflineModel(load_device("cpu-host", calibration=calibration))
    graph = describe_moe(shape["tokens"], shape["hidden"], shape["expert_ffn"],
                         shape["experts"], shape["top_k"], tokens_per_expert=kept)
    split = defaultdict(float)
    for op in graph.ops():
        split[op.kind == "gemm"] += model.time(op).time_s * 1e6
    return split[True], split[False]


def _layer(shape: dict):
    from xpusim.calibrate.kernel_runners import moe_layer_and_input

    layer, x = moe_layer_and_input(shape, "fp32", "cpu")
    with torch.no_grad():
        _, stats = layer(x, return_stats=True)
    return layer, x, list(stats.kept_per_expert)


def ops(calibration: str, names: list[str]) -> None:
    print("shape,op,calls,min_us,median_us")
    for name in names:
        layer, x, kept = _layer(SHAPES[name])
        with torch.no_grad():
            for _ in range(20):
                layer(x)
            cap = _Capture()
            with cap:
                layer(x)
            groups: dict[str, list[tuple]] = defaultdict(list)
            for call in cap.calls:
                key = "view:" if call[0].is_view else ""
                groups[key + call[0].overloadpacket.__name__].append(call)
            for op, calls in sorted(groups.items()):
                lo, med = _times(lambda c=calls: [f(*a, **k) for f, a, k in c], 200)
                print(f"{name},{op},{len(calls)},{lo:.2f},{med:.2f}", flush=True)
            lo, med = _times(lambda lay=layer, inp=x: lay(inp), 200)
            print(f"{name},layer,1,{lo:.2f},{med:.2f}")
        gemm, other = _priced(SHAPES[name], kept, calibration)
        print(f"{name},priced_gemm,0,{gemm:.2f},{gemm:.2f}")
        print(f"{name},priced_non_gemm,0,{other:.2f},{other:.2f}")


def _variants(layer, x, kept: list[int]) -> dict[str, Callable[[], object]]:
    h, f = layer.hidden, layer.expert_ffn
    rows = torch.randn(sum(kept), h)
    calls = [(x, layer.gate.weight.t(), torch.empty(x.shape[0], layer.num_experts))]
    for e, n in enumerate(kept):
        if n:
            xs, hs = torch.randn(n, h), torch.randn(n, f)
            calls += [(xs, layer.w_gate[e].t(), torch.empty(n, f)),
                      (xs, layer.w_up[e].t(), torch.empty(n, f)),
                      (hs, layer.w_down[e].t(), torch.empty(n, h))]

    def gemms_alone() -> None:
        for a, b, out in calls:
            torch.mm(a, b, out=out)

    def gemms_as_written() -> None:
        layer.gate(x)
        out, start = rows.new_empty(rows.shape[0], h), 0
        for e, n in enumerate(kept):
            if n:
                xs = rows[start : start + n]
                g, u = xs @ layer.w_gate[e].t(), xs @ layer.w_up[e].t()
                del u
                torch.mm(g, layer.w_down[e].t(), out=out[start : start + n])
                start += n

    return {"layer": lambda: layer(x), "gemms_alone": gemms_alone,
            "gemms_as_written": gemms_as_written}


def width(calibration: str) -> None:
    print("hidden,ffn,tokens,variant,round,min_us")
    for h, f in ((8, 8), (32, 64), (256, 512)):
        for tokens in (16, 64):
            shape = dict(tokens=tokens, hidden=h, expert_ffn=f, experts=8, top_k=2,
                         shared_experts=0)
            layer, x, kept = _layer(shape)
            with torch.no_grad():
                variants = _variants(layer, x, kept)
                for fn in variants.values():
                    _times(fn, 10)
                for rnd in range(8):
                    for v, fn in variants.items():
                        print(f"{h},{f},{tokens},{v},{rnd},{_times(fn, 40)[0]:.1f}", flush=True)
            gemm, other = _priced(shape, kept, calibration)
            print(f"{h},{f},{tokens},priced_gemm,-,{gemm:.1f}")
            print(f"{h},{f},{tokens},priced_non_gemm,-,{other:.1f}")


def same_weights() -> None:
    print("tokens,weights,round,layer_us,gemms_as_written_us,rest_us")
    for tokens in (16, 64):
        for shared in (False, True):
            shape = dict(SHAPES[f"t{tokens}"])
            layer, x, kept = _layer(shape)
            if shared:
                for name in ("w_gate", "w_up", "w_down"):
                    w = getattr(layer, name)
                    one = torch.nn.Parameter(w.data[0:1].expand_as(w), requires_grad=False)
                    setattr(layer, name, one)
            with torch.no_grad():
                v = _variants(layer, x, kept)
                for rnd in range(8):
                    lay = _times(v["layer"], 40)[0]
                    written = _times(v["gemms_as_written"], 40)[0]
                    label = "one_set" if shared else "distinct"
                    print(f"{tokens},{label},{rnd},{lay:.1f},{written:.1f},{lay - written:.1f}",
                          flush=True)


def _timed_after(calls: list[tuple], buf: torch.Tensor | None) -> float:
    total = 0.0
    for f, a, k in calls:
        if buf is None:
            f(*a, **k)
        else:
            buf.sum()
        t0 = time.thread_time()
        f(*a, **k)
        total += time.thread_time() - t0
    return total * 1e6


def cold() -> None:
    print("calls,n,after,min_us,median_us")
    layer, x, _ = _layer(SHAPES["t16"])
    sweeps = {"warm": None, "0.5MiB": torch.randn(2**17), "1.5MiB": torch.randn(3 * 2**17),
              "12MiB": torch.randn(3 * 2**20)}
    with torch.no_grad():
        cap = _Capture()
        with cap:
            layer(x)
        rest = [c for c in cap.calls if c[0].overloadpacket.__name__ != "mm"]
        groups = {"non_view": [c for c in rest if not c[0].is_view],
                  "view": [c for c in rest if c[0].is_view]}
        for group, calls in groups.items():
            for after, buf in sweeps.items():
                ts = [_timed_after(calls, buf) for _ in range(30)]
                print(f"{group},{len(calls)},{after},{min(ts):.1f},{statistics.median(ts):.1f}",
                      flush=True)


if __name__ == "__main__":
    torch.set_num_threads(1)
    torch.manual_seed(0)
    if len(sys.argv) >= 3 and sys.argv[1] == "ops":
        ops(sys.argv[2], sys.argv[3:] or ["t16", "t64"])
    elif len(sys.argv) == 3 and sys.argv[1] == "width":
        width(sys.argv[2])
    elif sys.argv[1:] == ["same_weights"]:
        same_weights()
    elif sys.argv[1:] == ["cold"]:
        cold()
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
