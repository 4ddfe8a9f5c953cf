"""The device check: the microbenchmarks a first session on a lent GPU runs, each beside
the simulator's prediction for it (``benchmarks/device_check.sh`` drives it).

    python -m xpusim.calibrate.device_check env --out env.json
    python -m xpusim.calibrate.device_check micro --device cuda --out micro.csv
    python -m xpusim.calibrate.device_check compare micro.csv --env env.json --out compare.csv
    python -m xpusim.calibrate.device_check summary --calibration-dir DIR

The cases are the open leads the docs leave "for a task lent a GPU" (docs/calibration.md,
"Running on a GPU: the device-check script", lists each with its doc section):

- ``launch``: a one-element in-place add, timed three ways: one call after a synchronise
  (what a framework op costs: ``--timing launch``), back to back (the host's dispatch
  rate or the device's gap, whichever is slower), and replayed from a CUDA graph (the
  device-side gap between kernels alone: ``--timing kernel``).
- ``copy``: ``dst.copy_(src)`` from 1 MiB to 1 GiB and at the decode GEMM's weight size:
  the stream rate the memory term prices (``memory_max``).
- ``gemm_decode``: ``F.linear`` at decode M = 1..256 on a 28672 x 4096 bf16 weight (235 MB,
  beyond the L2): the decode-M stream rate (docs/cost_model_notes.md, "B200's decode-M stream
  rate" lead, run here on the card at hand); ``gemm_tactic`` M = 240/256/264 on the 70B TP4
  gate+up (14336 x 8192: Vidur's H100 tactic step); ``gemm_peak`` 8192^3 (the compute ceiling).
- ``elementwise``: the same bytes through ATen's vectorised loop (contiguous) and its
  non-vectorised ``launch_legacy_kernel`` path (a broadcast add, a strided SiLU): the
  bytes-in-flight lead of docs/attention_notes.md (``scores + mask``) and docs/cost_model_notes.md
  (M13, ``silu_and_mul``'s scalar loads; ``silu(h[:, :d]) * h[:, d:]`` is torch's
  two-kernel version of that pattern, not vLLM's kernel).
- ``sdpa``: torch SDPA's flash (FlashAttention-2), efficient (CUTLASS, xformers-class) and
  cuDNN backends at the FA3 benchmark's shapes (batch x seq = 16k, heads x head_dim =
  2048; docs/attention.md B3..B6).

Timing: CUDA events around ``inner`` back-to-back calls (``inner`` sized so a sample spans
>= 2 ms), median of the samples; no L2 flush between calls (the same buffers each call:
a working set under the L2 is served from it, so every row records ``working_set_bytes``
beside the card's L2; the stream and decode cases are sized well past it). On a CPU
(``--device cpu --tiny``, to test the script) the host clock replaces the events.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

COLUMNS = (
    "bench", "case", "shape", "dtype", "timing", "timer", "inner", "reps", "median_s",
    "q1_s", "q3_s", "min_s", "bytes", "flops", "gbps", "tflops", "working_set_bytes",
    "sim_args", "status", "note",
)  # fmt: skip

Runner = Callable[[], object]


@dataclass(frozen=True)
class Bench:
    """One microbenchmark case: how to build its callable and how the simulator prices it.

    ``build`` allocates the tensors and returns the zero-argument call (done only when
    the case runs, so a skipped case allocates nothing). ``sim`` is the ``xpusim op``
    argument list that predicts it (without ``--device`` / ``--json``); ``timing`` is
    "single" (one call after a synchronise), "back-to-back" or "graph" (CUDA graph
    replay)."""

    bench: str
    case: str
    shape: dict
    dtype: str
    build: Callable[[], Runner]
    sim: tuple[str, ...] = ()
    bytes: float = 0.0
    flops: float = 0.0
    working_set: float = 0.0
    timing: str = "back-to-back"
    note: str = ""


@dataclass(frozen=True)
class Sizes:
    """The sizes of one mode: a GPU's, or tiny ones that run the script on a CPU."""

    copy_bytes: tuple[int, ...]
    gemm_nk: tuple[int, int]
    gemm_m: tuple[int, ...]
    tactic_nk: tuple[int, int]
    tactic_m: tuple[int, ...]
    peak: int
    tokens: int  # elementwise: rows of the SwiGLU input
    ffn: int  # elementwise: d (the input is tokens x 2d)
    scores: tuple[int, int, int]  # elementwise broadcast add: batch, heads, seq
    sdpa: tuple[tuple[int, int, int, int], ...] = field(default=())  # batch, heads, seq, d


GPU = Sizes(
    copy_bytes=(2**20, 2**24, 2**26, 2**28, 28672 * 4096 * 2, 2**30),
    gemm_nk=(28672, 4096),
    gemm_m=(1, 2, 4, 8, 16, 32, 64, 128, 192, 256),
    tactic_nk=(14336, 8192),
    tactic_m=(240, 256, 264),
    peak=8192,
    tokens=4096,
    ffn=14336,
    scores=(4, 16, 2048),
    sdpa=tuple(
        (16384 // s, 2048 // d, s, d) for d in (64, 128) for s in (512, 2048, 8192)
    ),
)
TINY = Sizes(
    copy_bytes=(2**12, 2**16),
    gemm_nk=(256, 128),
    gemm_m=(1, 16),
    tactic_nk=(128, 128),
    tactic_m=(8,),
    peak=64,
    tokens=16,
    ffn=64,
    scores=(1, 2, 32),
    sdpa=((1, 2, 64, 32),),
)

# torch SDPA backend -> the simulator's implementation (docs/attention.md): the flash
# backend is FlashAttention-2, the efficient one CUTLASS's memory-efficient kernel.
# On a CPU (--tiny) SDPA's default runs and is compared with the unfused "standard".
SDPA_IMPL = {"flash": "flash2", "efficient": "xformers", "cudnn": "cudnn", "default": "standard"}


# ---------------------------------------------------------------- timing


class Clock:
    """Seconds per call of ``fn`` over ``inner`` back-to-back calls: CUDA events on a
    GPU (after a synchronise, so earlier work is not billed), the host clock on a CPU."""

    def __init__(self, device: str) -> None:
        import torch

        self.torch = torch
        self.cuda = device.startswith("cuda")
        self.name = "cuda events" if self.cuda else "perf_counter"

    def span(self, fn: Runner, inner: int) -> float:
        if not self.cuda:
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            return (time.perf_counter() - t0) / inner
        cuda = self.torch.cuda
        cuda.synchronize()
        start, end = cuda.Event(enable_timing=True), cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) * 1e-3 / inner

    def graph(self, fn: Runner, inner: int) -> Runner:
        """A replay of ``inner`` calls of ``fn`` captured in one CUDA graph."""
        cuda = self.torch.cuda
        stream = cuda.Stream()
        stream.wait_stream(cuda.current_stream())
        with cuda.stream(stream):  # warm-up on a side stream, as torch's docs require
            for _ in range(3):
                fn()
        cuda.current_stream().wait_stream(stream)
        g = cuda.CUDAGraph()
        with cuda.graph(g):
            for _ in range(inner):
                fn()
        return g.replay


def measure(clock: Clock, fn: Runner, timing: str, reps: int, sample_s: float) -> dict:
    """Warm up, size ``inner`` so a sample spans ``sample_s``, and take ``reps`` samples."""
    for _ in range(3):
        clock.span(fn, 1)
    one = clock.span(fn, 1)
    inner = 1 if timing == "single" else int(min(2000, max(1, math.ceil(sample_s / max(one, 1e-7)))))
    call, per = fn, 1
    if timing == "graph":
        call, per = clock.graph(fn, inner), inner
        inner = 1
    samples = np.array([clock.span(call, inner) / per for _ in range(reps)])
    q1, med, q3 = (float(v) for v in np.percentile(samples, [25, 50, 75]))
    return {
        "inner": inner * per,
        "reps": reps,
        "median_s": med,
        "q1_s": q1,
        "q3_s": q3,
        "min_s": float(samples.min()),
    }


# ---------------------------------------------------------------- the cases


def _rand(*size: int, dtype: str, device: str):
    import torch

    gen = torch.Generator(device=device).manual_seed(0)  # never zeros (METHOD.md)
    tdt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    return torch.randn(*size, generator=gen, device=device).to(tdt)


def _launch_cases(device: str) -> Iterator[Bench]:
    def build() -> Runner:
        x = _rand(1, dtype="fp32", device=device)
        return lambda: x.add_(1.0)

    kernel = ("elementwise", "--numel", "1", "--dtype", "fp32", "--timing", "kernel")
    launch = ("elementwise", "--numel", "1", "--dtype", "fp32", "--timing", "launch")
    timings = ("single", "back-to-back", "graph") if device.startswith("cuda") else (
        "single", "back-to-back")
    for timing in timings:
        yield Bench("launch", f"add_1elem[{timing}]", {"numel": 1}, "fp32", build,
                    launch if timing == "single" else kernel, 8.0, 1.0, 8.0, timing,
                    "one-element in-place add: the launch / dispatch cost")  # fmt: skip


def _copy_cases(device: str, sizes: Sizes) -> Iterator[Bench]:
    for nbytes in sizes.copy_bytes:
        numel = nbytes // 4

        def build(numel: int = numel) -> Runner:
            src = _rand(numel, dtype="fp32", device=device)
            dst = src.clone()
            return lambda: dst.copy_(src)

        sim = ("elementwise", "--numel", str(numel), "--dtype", "fp32",
               "--flops-per-element", "0", "--timing", "kernel")  # fmt: skip
        yield Bench("copy", f"copy[{nbytes}B]", {"bytes": nbytes}, "fp32", build, sim,
                    2.0 * nbytes, 0.0, 2.0 * nbytes, note="bytes = read + written")  # fmt: skip


def _gemm(bench: str, m: int, n: int, k: int, device: str, note: str) -> Bench:
    def build() -> Runner:
        import torch.nn.functional as F

        x = _rand(m, k, dtype="bf16", device=device)
        w = _rand(n, k, dtype="bf16", device=device)  # nn.Linear's layout: y = x w^T
        return lambda: F.linear(x, w)

    sim = ("gemm", "--m", str(m), "--n", str(n), "--k", str(k), "--dtype", "bf16",
           "--timing", "kernel")  # fmt: skip
    nbytes = 2.0 * (m * k + n * k + m * n)
    return Bench(bench, f"linear[m={m},n={n},k={k}]", {"m": m, "n": n, "k": k}, "bf16", build,
                 sim, nbytes, 2.0 * m * n * k, nbytes, note=note)  # fmt: skip


def _gemm_cases(device: str, sizes: Sizes) -> Iterator[Bench]:
    n, k = sizes.gemm_nk
    for m in sizes.gemm_m:
        yield _gemm("gemm_decode", m, n, k, device, "decode-M stream rate, weight beyond L2")
    n, k = sizes.tactic_nk
    for m in sizes.tactic_m:
        yield _gemm("gemm_tactic", m, n, k, device, "cuBLAS tactic step near M = 256")
    p = sizes.peak
    yield _gemm("gemm_peak", p, p, p, device, "compute ceiling on random bf16 data")


def _elementwise_cases(device: str, sizes: Sizes) -> Iterator[Bench]:
    import torch.nn.functional as F

    m, d = sizes.tokens, sizes.ffn
    b, h, s = sizes.scores
    pass_bytes = 2.0 * 2 * m * d  # one bf16 read + one write of m x d

    def contiguous_silu() -> Runner:
        x = _rand(m, d, dtype="bf16", device=device)
        return lambda: F.silu(x)

    def strided_silu() -> Runner:
        hx = _rand(m, 2 * d, dtype="bf16", device=device)
        return lambda: F.silu(hx[:, :d])  # a row slice: not contiguous -> legacy loop

    def silu_and_mul() -> Runner:
        hx = _rand(m, 2 * d, dtype="bf16", device=device)
        return lambda: F.silu(hx[:, :d]) * hx[:, d:]

    def contiguous_scale() -> Runner:
        x = _rand(b, h, s, s, dtype="bf16", device=device)
        return lambda: x * 0.125

    def broadcast_add() -> Runner:
        x = _rand(b, h, s, s, dtype="bf16", device=device)
        mask = _rand(1, 1, s, s, dtype="bf16", device=device)  # stride 0 over b x h
        return lambda: x + mask

    def sim(numel: int, inputs: int, flops: float = 1.0) -> tuple[str, ...]:
        return ("elementwise", "--numel", str(numel), "--dtype", "bf16", "--inputs",
                str(inputs), "--flops-per-element", f"{flops:g}", "--timing", "kernel")  # fmt: skip

    score_bytes = 2.0 * 2 * b * h * s * s
    yield Bench("elementwise", "silu[contiguous]", {"m": m, "d": d}, "bf16", contiguous_silu,
                sim(m * d, 1, 5), pass_bytes, 5.0 * m * d, pass_bytes, note="vectorised loop")
    yield Bench("elementwise", "silu[row-slice]", {"m": m, "d": d}, "bf16", strided_silu,
                sim(m * d, 1, 5), pass_bytes, 5.0 * m * d, pass_bytes,
                note="non-contiguous input: ATen's non-vectorised loop")
    yield Bench("elementwise", "silu_and_mul[torch]", {"m": m, "d": d}, "bf16", silu_and_mul,
                sim(m * d, 2, 6), 2.0 * 3 * m * d, 6.0 * m * d, 2.0 * 4 * m * d,
                note="two kernels (silu, mul) on row slices; vLLM's silu_and_mul is one kernel, "
                "priced here as one pass (the model's view)")
    yield Bench("elementwise", "scale[contiguous]", {"b": b, "h": h, "s": s}, "bf16",
                contiguous_scale, sim(b * h * s * s, 1), score_bytes, float(b * h * s * s),
                score_bytes, note="vectorised loop")
    yield Bench("elementwise", "add_mask[broadcast]", {"b": b, "h": h, "s": s}, "bf16",
                broadcast_add, sim(b * h * s * s, 1), score_bytes, float(b * h * s * s),
                score_bytes, note="mask broadcast over batch x heads (stride 0): non-vectorised "
                "loop; the mask's own bytes (one s x s) not counted")  # fmt: skip


def _sdpa_cases(device: str, sizes: Sizes) -> Iterator[Bench]:
    backends = ("flash", "efficient", "cudnn") if device.startswith("cuda") else ("default",)
    for (b, h, s, d), causal, backend in (
        (shape, c, be) for shape in sizes.sdpa for c in (0, 1) for be in backends
    ):

        def build(b=b, h=h, s=s, d=d, causal=causal, backend=backend) -> Runner:
            return _sdpa_runner(b, h, s, d, bool(causal), backend, device)

        flops = 4.0 * b * h * s * s * d / (2 if causal else 1)
        nbytes = 2.0 * 4 * b * h * s * d  # q, k, v read, o written (bf16)
        sim = ("attention", "--batch", str(b), "--heads", str(h), "--seq", str(s),
               "--head-dim", str(d), "--impl", SDPA_IMPL[backend], "--dtype", "bf16",
               "--timing", "kernel") + (("--causal",) if causal else ())  # fmt: skip
        shape = {"batch": b, "heads": h, "seq": s, "head_dim": d, "causal": causal}
        yield Bench("sdpa", f"sdpa_{backend}[b={b},h={h},s={s},d={d},causal={causal}]", shape,
                    "bf16", build, sim, nbytes, flops, nbytes, note=f"backend {backend}")


def _sdpa_runner(b: int, h: int, s: int, d: int, causal: bool, backend: str, device: str) -> Runner:
    import torch
    import torch.nn.functional as F

    q, k, v = (_rand(b, h, s, d, dtype="bf16", device=device) for _ in range(3))
    if backend == "default":
        return lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    chosen = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
              "cudnn": SDPBackend.CUDNN_ATTENTION}[backend]  # fmt: skip

    def run() -> object:
        with sdpa_kernel([chosen]), torch.inference_mode():
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    return run


def all_cases(device: str, tiny: bool) -> list[Bench]:
    sizes = TINY if tiny else GPU
    return [
        *_launch_cases(device),
        *_copy_cases(device, sizes),
        *_gemm_cases(device, sizes),
        *_elementwise_cases(device, sizes),
        *_sdpa_cases(device, sizes),
    ]


# ---------------------------------------------------------------- running


def run_case(clock: Clock, case: Bench, reps: int, sample_s: float) -> dict:
    """One case's CSV row; a case that cannot run here (a backend this torch or GPU
    lacks, out of memory) is recorded with its error, not fatal."""
    row: dict = {
        "bench": case.bench, "case": case.case, "shape": json.dumps(case.shape, sort_keys=True),
        "dtype": case.dtype, "timing": case.timing, "timer": clock.name, "bytes": case.bytes,
        "flops": case.flops, "working_set_bytes": case.working_set,
        "sim_args": " ".join(case.sim), "note": case.note,
    }  # fmt: skip
    try:
        fn = case.build()
        row.update(measure(clock, fn, case.timing, reps, sample_s))
        row["status"] = "ok"
    except Exception as exc:  # noqa: BLE001 - any failure of one case is recorded, not fatal
        row["status"] = f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        return row
    finally:
        fn = None  # noqa: F841 - frees the case's tensors before the next allocates
        if clock.cuda:
            clock.torch.cuda.empty_cache()
    med = row["median_s"]
    row["gbps"] = case.bytes / med / 1e9 if med > 0 else 0.0
    row["tflops"] = case.flops / med / 1e12 if med > 0 else 0.0
    return row


def run_micro(device: str, tiny: bool, out: Path, budget_s: float, only: str | None) -> int:
    """Time every case (or the benches in ``only``), writing each row as it is done."""
    import torch

    torch.manual_seed(0)
    if device == "cpu":
        torch.set_num_threads(1)  # as the CPU calibration times: steadiest on a shared host
    clock = Clock(device)
    reps, sample_s = (5, 2e-4) if tiny else (15, 2e-3)
    todo = [c for c in all_cases(device, tiny) if not only or c.bench in only.split(",")]
    started = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as fh, torch.inference_mode():
        writer = csv.DictWriter(fh, COLUMNS)
        writer.writeheader()
        for case in todo:
            if time.perf_counter() - started > budget_s:
                row = {"bench": case.bench, "case": case.case, "status": "skipped: budget"}
            else:
                row = run_case(clock, case, reps, sample_s)
            writer.writerow(row)
            fh.flush()  # a step killed by its timeout keeps the rows already written
            print(_row_line(row), flush=True)
    return 0


def _row_line(row: dict) -> str:
    if row.get("status") != "ok":
        return f"{row['case']:<48} {row.get('status')}"
    return (
        f"{row['case']:<48} {row['median_s'] * 1e6:10.2f} us  {row['gbps']:8.1f} GB/s  "
        f"{row['tflops']:7.1f} TFLOP/s  ({row['timing']}, inner {row['inner']})"
    )


# ---------------------------------------------------------------- comparing


def predict(sim_args: str, profile: str) -> float:
    """``xpusim op <sim_args> --device PROFILE --json``'s time_s, run in this process."""
    from xpusim.sim.cli.main import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["op", *sim_args.split(), "--device", profile, "--json"])
    if rc != 0:
        raise ValueError(f"xpusim op {sim_args} exited {rc}")
    return float(json.loads(buf.getvalue())["time_s"])


def compare_rows(rows: list[dict], profile: str) -> list[dict]:
    """Each measured row with the simulator's prediction and its signed error, the
    validation corpus's (``sim.validation.metrics.signed_error``): (measured - predicted)
    / measured, positive = the simulator predicts a faster run (optimistic)."""
    from xpusim.sim.validation.metrics import signed_error

    out = []
    for r in rows:
        if r.get("status") != "ok" or not r.get("sim_args"):
            continue
        meas = float(r["median_s"])
        try:
            pred = predict(r["sim_args"], profile)
        except ValueError as exc:  # the CLI printed why (exit 2); the other rows go on
            print(f"  {r['case']}: no prediction ({exc})", file=sys.stderr)
            continue
        out.append({
            "bench": r["bench"], "case": r["case"], "timing": r["timing"],
            "measured_s": meas, "predicted_s": pred, "error": signed_error(pred, meas, "s"),
            "profile": profile, "command": f"xpusim op {r['sim_args']} --device {profile} --json",
        })  # fmt: skip
    return out


def error_summary(compared: list[dict]) -> list[dict]:
    """Per bench: n, median |error| and bias (mean signed error; + = optimistic)."""
    out = []
    for bench in dict.fromkeys(r["bench"] for r in compared):
        errs = np.array([r["error"] for r in compared if r["bench"] == bench])
        out.append({
            "bench": bench, "n": len(errs), "median_abs_error": float(np.median(np.abs(errs))),
            "bias": float(np.mean(errs)),
        })  # fmt: skip
    return out


def gpu_profile(env_path: Path | None, profile: str | None) -> str:
    """``--profile``, else the profile of the GPU that env.json names, else cpu-host."""
    from xpusim.calibrate.device import profile_for_gpu

    if profile:
        return profile
    env = json.loads(env_path.read_text()) if env_path and env_path.is_file() else {}
    name = env.get("device_name", "")
    return profile_for_gpu(name) if env.get("cuda_available") else "cpu-host"


def run_compare(csv_path: Path, env: Path | None, profile: str | None, out: Path) -> int:
    with csv_path.open() as fh:
        rows = list(csv.DictReader(fh))
    prof = gpu_profile(env, profile)
    compared = compare_rows(rows, prof)
    from xpusim.sim.report import write_csv

    write_csv(out, compared)
    print(f"simulator ({prof}) vs measured; error = (measured - predicted) / measured, "
          "+ = simulator optimistic")
    for r in compared:
        print(
            f"  {r['case']:<48} meas {r['measured_s'] * 1e6:10.2f} us  "
            f"pred {r['predicted_s'] * 1e6:10.2f} us  {r['error']:+7.1%}"
        )
    print("per bench: median |error|, bias (+ = simulator optimistic)")
    for s in error_summary(compared):
        print(f"  {s['bench']:<14} n {s['n']:3d}  {s['median_abs_error']:6.1%}  {s['bias']:+7.1%}")
    return 0


# ---------------------------------------------------------------- env and summary


def environment() -> dict:
    """What a GPU timing depends on: versions, the card's properties, torch's switches."""
    import platform

    import torch

    env: dict = {
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "numpy": np.__version__,
        "cuda_available": torch.cuda.is_available(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if torch.cuda.is_available():
        from xpusim.calibrate.device import cuda_facts

        p = torch.cuda.get_device_properties(0)
        env.update({
            "device_name": torch.cuda.get_device_name(0), "capability": f"{p.major}.{p.minor}",
            "sms": p.multi_processor_count, "l2_bytes": getattr(p, "L2_cache_size", 0),
            "memory_bytes": p.total_memory, "facts": cuda_facts(torch),
        })  # fmt: skip
        try:
            from xpusim.calibrate.device import profile_for_gpu

            env["profile"] = profile_for_gpu(env["device_name"])
        except Exception as exc:  # noqa: BLE001 - an unknown GPU is recorded, not fatal
            env["profile"] = f"unknown ({exc})"
    return env


def summary(calibration_dir: Path) -> int:
    """The calibration's fit and the validation's per-suite errors, from their JSON."""
    cal = calibration_dir / "calibrate.json"
    val = calibration_dir / "validation" / "validation.json"
    if cal.is_file():
        doc = json.loads(cal.read_text())
        fit, prov = doc["fit"], doc["provenance"]
        print(
            f"calibrate ({prov['base_profile']} on {prov['device_name']}, {prov['dtype']}, "
            f"{fit['n_cases']} fit cases, {doc['elapsed_s']:.0f} s): median |error| "
            f"{fit['median_abs_error']:.1%}, p90 {fit['p90_abs_error']:.1%}; at a bound: "
            f"{', '.join(fit['at_bound']) or '-'}; noisy cases {prov['noisy_fraction']:.0%}; "
            f"fit-vs-priced model gap {fit.get('model_gap', 0.0):.1%}"
        )
    if val.is_file():
        suites = json.loads(val.read_text())["suites"]
        print("validate (held-out): suite  n  calibrated median / p90  uncalibrated median / p90")
        for name, s in suites.items():
            c, u = s["calibrated"], s["uncalibrated"]
            print(
                f"  {name:<20} {s['n']:3d}  {c['median_abs_error']:6.1%} / {c['p90_abs_error']:6.1%}"
                f"  {u['median_abs_error']:6.1%} / {u['p90_abs_error']:6.1%}"
            )
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m xpusim.calibrate.device_check")
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("env", help="versions and the card's properties as JSON")
    e.add_argument("--out", required=True, type=Path)
    m = sub.add_parser("micro", help="time the microbenchmarks")
    m.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    m.add_argument("--tiny", action="store_true", help="tiny sizes (tests the script on a CPU)")
    m.add_argument("--budget-s", type=float, default=150.0, help="skip cases after this")
    m.add_argument("--only", help="comma-separated benches (launch,copy,gemm_decode,...)")
    m.add_argument("--out", required=True, type=Path)
    c = sub.add_parser("compare", help="each microbenchmark beside xpusim op's prediction")
    c.add_argument("csv", type=Path)
    c.add_argument("--env", type=Path, help="env.json (its GPU names the profile)")
    c.add_argument("--profile", help="device profile (default: from --env)")
    c.add_argument("--out", required=True, type=Path)
    s = sub.add_parser("summary", help="print a calibration's fit and validation errors")
    s.add_argument("--calibration-dir", required=True, type=Path)
    args = p.parse_args(argv)
    if args.cmd == "env":
        env = environment()
        args.out.write_text(json.dumps(env, indent=2, default=str) + "\n")
        print(json.dumps(env, indent=2, default=str))
        return 0
    if args.cmd == "micro":
        device = "cuda:0" if args.device == "cuda" else "cpu"
        return run_micro(device, args.tiny, args.out, args.budget_s, args.only)
    if args.cmd == "compare":
        return run_compare(args.csv, args.env, args.profile, args.out)
    return summary(args.calibration_dir)


if __name__ == "__main__":
    sys.exit(main())
