"""FastAttention probe on a CPU (docs/calibration_notes.md, "FastAttention on a CPU", twenty-second session).
Needs torch; not part of the simulator. One torch thread, thread CPU time (min / median).

  python benchmarks/fa_cpu_probe.py hotcold [B,H,S,D]
      the kernel's ops that read its inputs (q.scale, the qk / pv GEMMs on K / V slices, the
      store into the output, the tiling-mask template) at the first block of that shape (default
      1,4,128,64), timed back to back (operands stay in L2, as the calibration microbenchmarks
      are) and after a 4 MiB sweep between calls (L2 evicted; the sweep is not timed).
  python benchmarks/fa_cpu_probe.py inkernel [B,H,S,D]
      a copy of the kernel's body (non-causal, fp32, one query head per K/V head) with a
      thread-CPU-time stamp after every op: each op's in-kernel time (min / median over 60
      calls, the stamp's own cost subtracted), to set beside the same op's hot / cold time and
      the model's price. The stamps (system calls) slow the call by ~10-20%: read ratios.
  python benchmarks/fa_cpu_probe.py tiny
      the real kernel at head_dim 1, one head, outer_block 2, inner_block 1 (two inner tiles
      and a cat, as at block 128): almost no data, so the time is the per-call, per-query-block
      and per-block fixed cost (Python, dispatch, allocation) of seq / 2 query blocks.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from collections.abc import Callable

import torch
from xpusim.kernels.attention import fast_attention


def _stamps(fn: Callable[[], object], reps: int, between: Callable[[], object] | None) -> list[int]:
    out = []
    for _ in range(reps):
        if between is not None:
            between()
        t0 = time.thread_time_ns()
        fn()
        out.append(time.thread_time_ns() - t0)
    return out


def hotcold(b: int, h: int, seq: int, d: int) -> None:
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(b, h, seq, d, generator=gen) for _ in range(3))
    rows = min(128, seq)
    tile = min(64, rows)
    q5 = q.view(b, h, 1, seq, d)
    out = torch.empty_like(q5)
    qb = (q5[:, :, :, :rows] / math.sqrt(d)).view(b, h, rows, d)
    p = torch.softmax(torch.matmul(qb, k[:, :, :rows].transpose(-2, -1)), -1)
    z = torch.randn(b, h, 1, rows, d)
    sweep = torch.zeros(1 << 20)  # 4 MiB of fp32: twice the 2 MiB per-core L2 here
    ops: dict[str, Callable[[], object]] = {
        "q.scale": lambda: (q5[:, :, :, :rows].to(torch.float32) / math.sqrt(d)).view(b, h, rows, d),
        "qk": lambda: torch.matmul(qb, k[:, :, :tile].transpose(-2, -1)),
        "pv": lambda: torch.matmul(p[..., :tile], v[:, :, :tile]),
        "store": lambda: out.__setitem__((slice(None),) * 3 + (slice(0, rows),), z),
        "template_full": lambda: torch.full((256, 256), float("-inf")),
        "template_full_triu": lambda: torch.full((256, 256), float("-inf")).triu(1),
    }
    print(f"b{b} h{h} seq{seq} d{d}, first block; us, min / median of 300, three rounds")
    for name, fn in ops.items():
        hot, cold = [], []
        for _ in range(3):
            a = _stamps(fn, 300, None)
            c = _stamps(fn, 300, lambda: sweep.add_(1.0))
            hot.append(f"{min(a) / 1e3:.1f}/{statistics.median(a) / 1e3:.1f}")
            cold.append(f"{min(c) / 1e3:.1f}/{statistics.median(c) / 1e3:.1f}")
        print(f"  {name:20s} hot {' '.join(hot):30s} after sweep {' '.join(cold)}")


def _stamped_kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    rec: dict[str, list[int]]) -> torch.Tensor:
    """kernels/attention.py's fast_attention, non-causal, fp32, group 1, block 128 / 64,
    with a stamp after every op (names as describe_fast_attention's; k0 = first key block)."""
    b, h, seq, d = q.shape
    scale = 1.0 / math.sqrt(d)
    last = time.thread_time_ns()

    def stamp(name: str) -> None:
        nonlocal last
        now = time.thread_time_ns()
        rec.setdefault(name, []).append(now - last)
        last = time.thread_time_ns()

    template = torch.full((256, 256), float("-inf"))
    stamp("template_full")
    template = template.triu(1)
    stamp("template_triu")
    q5 = q.view(b, h, 1, seq, d)
    out = torch.empty_like(q5)
    stamp("prologue")
    lowest = torch.finfo(torch.float32).min
    for qs in range(0, seq, 128):
        rows = min(128, seq - qs)
        q_blk = (q5[:, :, :, qs:qs + rows].to(torch.float32) * scale).view(b, h, rows, d)
        stamp("q.scale")
        m = torch.full((b, h, rows, 1), lowest)
        den = torch.zeros((b, h, rows, 1))
        o = torch.zeros((b, h, rows, d))
        stamp("q.init")
        for ks in range(0, seq, 128):
            cols = min(128, seq - ks)
            f = "k0." if ks == 0 else "kn."
            k_blk = k[:, :, ks:ks + cols].to(torch.float32)
            v_blk = v[:, :, ks:ks + cols].to(torch.float32)
            stamp(f + "kv_slice")
            tiles = []
            for t in range(0, cols, 64):
                tiles.append(torch.matmul(q_blk, k_blk[:, :, t:t + 64].transpose(-2, -1)))
                stamp(f + "qk")
            s = tiles[0] if len(tiles) == 1 else torch.cat(tiles, dim=-1)
            stamp(f + "cat")
            mx = s.amax(dim=-1, keepdim=True)
            stamp(f + "rowmax")
            m_new = torch.maximum(m, mx)
            stamp(f + "max_update")
            x = s - m_new
            stamp(f + "sub_max")
            p = torch.exp(x)
            stamp(f + "exp")
            y = m - m_new
            stamp(f + "alpha_sub")
            alpha = torch.exp(y)  # first key block: m = lowest, every input underflows
            stamp(f + "alpha_exp")
            den = den * alpha + p.sum(dim=-1, keepdim=True)
            stamp(f + "sum")
            o = o * alpha
            stamp(f + "o_rescale")
            for t in range(0, cols, 64):
                pv = torch.matmul(p[..., t:t + 64], v_blk[:, :, t:t + 64])
                stamp(f + "pv")
                o = o + pv
                stamp(f + "acc")
            m = m_new
        z = o / den
        stamp("q.normalise")
        out[:, :, :, qs:qs + rows] = z.view(b, h, 1, rows, d)
        stamp("q.store")
    return out.view(b, h, seq, d)


def inkernel(b: int, h: int, seq: int, d: int, calls: int = 60) -> None:
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(b, h, seq, d, generator=gen) for _ in range(3))
    rec: dict[str, list[int]] = {}
    if not torch.allclose(_stamped_kernel(q, k, v, rec), fast_attention(q, k, v), atol=1e-5):
        raise SystemExit("the stamped copy no longer matches kernels/attention.py")
    cost = []
    for _ in range(2000):
        t0 = time.thread_time_ns()
        cost.append(time.thread_time_ns() - t0)
    stamp_ns = statistics.median(cost)
    plain = _stamps(lambda: fast_attention(q, k, v), calls, None)
    rec = {}
    for _ in range(calls):
        _stamped_kernel(q, k, v, rec)
    print(f"b{b} h{h} seq{seq} d{d}: kernel min / median {min(plain) / 1e3:.1f} /"
          f" {statistics.median(plain) / 1e3:.1f} us; per op (us, per occurrence):")
    for name, vals in rec.items():
        print(f"  {name:14s} x{len(vals) // calls:4d} min {(min(vals) - stamp_ns) / 1e3:7.2f}"
              f" median {(statistics.median(vals) - stamp_ns) / 1e3:7.2f}")


def tiny() -> None:
    gen = torch.Generator().manual_seed(0)
    for causal in (False, True):
        for seq in (2, 4, 8, 16, 32):
            q, k, v = (torch.randn(1, 1, seq, 1, generator=gen) for _ in range(3))
            nq = seq // 2
            blocks = nq * (nq + 1) // 2 if causal else nq * nq
            best = math.inf
            for _ in range(7):
                reps = max(2, 200 // seq)
                t0 = time.thread_time_ns()
                for _ in range(reps):
                    fast_attention(q, k, v, causal=causal, outer_block=2, inner_block=1)
                best = min(best, (time.thread_time_ns() - t0) / reps)
            print(f"  causal={int(causal)} seq {seq:3d} query blocks {nq:3d} blocks {blocks:4d}"
                  f" {best / 1e3:9.1f} us")


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    if argv[:1] == ["hotcold"]:
        shape = [int(x) for x in (argv[1] if len(argv) > 1 else "1,4,128,64").split(",")]
        hotcold(*shape)
    elif argv[:1] == ["inkernel"]:
        shape = [int(x) for x in (argv[1] if len(argv) > 1 else "1,4,128,64").split(",")]
        inkernel(*shape)
    elif argv[:1] == ["tiny"]:
        tiny()
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
