"""``xpusim op KIND ...``: the predicted time of one op on one device, with its breakdown."""

from __future__ import annotations

import argparse

from xpusim.sim.api.base import request_from_args
from xpusim.sim.api.op import KIND_FIELDS, OpRequest, OpResult, op
from xpusim.sim.cost.attention_impl import IMPLS, PASSES
from xpusim.sim.cost.gemm_impl import GEMM_IMPLS
from xpusim.sim.cost.op_timing import TIMINGS
from xpusim.sim.report import emit_json, fmt_bytes, fmt_si
from xpusim.sim.validation.track_record import describe


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("op", help="cost of one op (gemm, attention, elementwise, conv2d)")
    kinds = parser.add_subparsers(dest="kind", metavar="KIND", required=True)

    def common(p: argparse.ArgumentParser, kind: str) -> None:
        p.add_argument("--device", help="device name or profile path (default h100-sxm5-80gb)")
        p.add_argument("--calibration", help="calibration overlay TOML")
        p.add_argument("--dtype", help=f"default {KIND_FIELDS[kind]['dtype']}")
        p.add_argument(
            "--timing",
            choices=TIMINGS,
            help="how the time is measured: launch (default; the op as a framework "
            "launches it, host launch overhead included) or kernel (the kernel's duration "
            "as a profiler reports it: kineto, CUPTI, nsys, msprof; docs/cost_model.md; "
            "small GEMMs read 1-7 us fast there, a device cost the model lacks)",
        )
        p.add_argument("--json", action="store_true", help="print the result as JSON")
        p.set_defaults(func=run)

    p = kinds.add_parser("gemm", help="C[b,m,n] = A[b,m,k] @ B[b,k,n]")
    p.add_argument("--m", type=int, help="rows (required unless --group-rows)")
    p.add_argument("--n", type=int, required=True, help="columns")
    p.add_argument("--k", type=int, required=True, help="inner (reduction) dimension")
    p.add_argument("--batch", type=int, help="default 1 (groups of a grouped kernel)")
    p.add_argument("--group-rows", metavar="R1,R2,...",
                   help="rows of each group of a grouped GEMM with unequal groups (an MoE "
                   "layer's experts), in place of --m; --impl torch-grouped-sm90")
    p.add_argument("--impl", choices=GEMM_IMPLS, metavar="IMPL",
                   help="library kernel: " + ", ".join(GEMM_IMPLS) + " (default: the generic "
                   "GEMM path; docs/cost_model.md, 'GEMM by implementation')")
    common(p, "gemm")

    p = kinds.add_parser("attention", help="fused (flash) attention")
    p.add_argument("--batch", type=int, help="default 1")
    p.add_argument("--heads", type=int, help="default 32")
    p.add_argument("--kv-heads", type=int, help="default: --heads")
    p.add_argument("--seq", type=int, required=True, help="query length")
    p.add_argument("--kv-len", type=int, help="key/value length (default: --seq)")
    p.add_argument("--head-dim", type=int, help="default 128")
    p.add_argument("--causal", action="store_true", default=None,
                   help="causal mask: blocks above the diagonal are skipped (default off)")
    p.add_argument("--impl", choices=IMPLS, metavar="IMPL",
                   help="implementation: " + ", ".join(IMPLS) + " (default: the device's, "
                   "docs/attention.md)")
    p.add_argument("--pass", dest="pass_", choices=PASSES,
                   help="fwd (default), bwd or fwd_bwd")
    common(p, "attention")

    p = kinds.add_parser("elementwise", help="pointwise op over N elements")
    p.add_argument("--numel", type=float, required=True, help="elements of each array")
    p.add_argument("--flops-per-element", type=float, help="default 1")
    p.add_argument("--inputs", type=int,
                   help="arrays read, numel elements each (default 1; 0: a write-only fill)")
    p.add_argument("--outputs", type=int,
                   help="arrays written (default 1; 0: a read-only, reduction-like kernel)")
    common(p, "elementwise")

    p = kinds.add_parser("conv2d", help="2-D convolution (implicit GEMM)")
    p.add_argument("--batch", type=int, help="default 1")
    p.add_argument("--in-ch", type=int, required=True, help="input channels")
    p.add_argument("--out-ch", type=int, required=True, help="output channels")
    p.add_argument("--height", type=int, required=True, help="input height in pixels")
    p.add_argument("--width", type=int, required=True, help="input width in pixels")
    p.add_argument("--kernel", type=int, help="default 3")
    p.add_argument("--stride", type=int, help="default 1")
    common(p, "conv2d")


def run(args: argparse.Namespace) -> int:
    result = op(request_from_args(OpRequest, args))
    if args.json:
        emit_json(result.as_dict())
        return 0
    _print(result)
    if record := result.track_record():
        print(describe(record))
    return 0


def _print(r: OpResult) -> None:
    label = f"{r.kind} [{r.impl} {r.pass_}]" if r.impl else r.kind
    gemm_impl = getattr(r.op.shape, "impl", "") if r.kind == "gemm" else ""
    label = f"{label} [{gemm_impl}]" if gemm_impl else label
    cost = r.cost
    print(f"{label} on {r.device} ({r.dtype}): {fmt_si(r.time_s, 's')}  [{r.bound}-bound]")
    if r.achieved_tflops is not None:
        print(f"  {r.achieved_tflops:.1f} TFLOP/s (FlashAttention papers' FLOP count)")
    print(f"  compute  {fmt_si(cost.compute_s, 's')}   memory {fmt_si(cost.memory_s, 's')}   "
          f"overhead {fmt_si(cost.overhead_s, 's')}")
    if r.impl is not None:  # what bytes.hbm and bytes.roofline of --json are
        print(f"  HBM traffic {fmt_bytes(r.hbm_bytes)} ({r.impl}'s kernels; the roofline's "
              f"Q, K, V, O: {fmt_bytes(r.op.main_bytes)})")
    if r.timing == "kernel":
        print(f"  kernel timing (--timing kernel): host launch overhead "
              f"{fmt_si(r.launch_excluded_s, 's')} excluded (small kernels: a lower bound, "
              "docs/cost_model.md)")
    _print_gemm_loop(cost.details)
    print(f"  {fmt_si(r.achieved_flops, 'FLOP/s')} achieved = "
          f"{r.fraction_of_peak:.1%} of {fmt_si(r.peak_flops, 'FLOP/s')} peak; "
          f"physical roofline {fmt_si(r.roofline_time_s, 's')}")


def _print_gemm_loop(details: dict[str, float]) -> None:
    """A GEMM's main loop and epilogue beyond max(compute, memory) (docs/cost_model.md)."""
    loss = details.get("pipeline_loss_s", 0.0)
    if loss > 0:  # 0 away from the ridge: nothing to explain
        print(f"  main loop through {details['pipeline_stages']:.0f} shared-memory stages: "
              f"+{fmt_si(loss, 's')} near the compute/memory ridge (finite pipeline)")
    if details.get("epilogue_s"):
        print(f"  output store after the main loop: {fmt_si(details['epilogue_s'], 's')}")
