"""``xpusim op KIND ...``: the predicted time of one op on one device, with its breakdown."""

from __future__ import annotations

import argparse
from dataclasses import replace

from xpusim.hwprofiles import load_device
from xpusim.sim import ops
from xpusim.sim.cost import RooflineModel
from xpusim.sim.cost.attention_impl import IMPLS, PASSES, attention_cost, default_impl, shape_of
from xpusim.sim.ir import OpKind, shape_dict
from xpusim.sim.report import emit_json, fmt_si


def register(sub: argparse._SubParsersAction) -> None:
    op = sub.add_parser("op", help="cost of one op (gemm, attention, elementwise, conv2d)")
    kinds = op.add_subparsers(dest="op_kind", metavar="KIND", required=True)

    def common(p: argparse.ArgumentParser, dtype: str = "bf16") -> None:
        p.add_argument("--device", default="h100-sxm5-80gb", help="device name or profile path")
        p.add_argument("--calibration", help="calibration overlay TOML")
        p.add_argument("--dtype", default=dtype)
        p.add_argument("--json", action="store_true")

    p = kinds.add_parser("gemm", help="C[b,m,n] = A[b,m,k] @ B[b,k,n]")
    for dim in ("m", "n", "k"):
        p.add_argument(f"--{dim}", type=int, required=True)
    p.add_argument("--batch", type=int, default=1)
    common(p)
    p.set_defaults(func=run, build=lambda a: ops.gemm("gemm", a.m, a.n, a.k, a.dtype, a.batch))

    p = kinds.add_parser("attention", help="fused (flash) attention")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int)
    p.add_argument("--seq", type=int, required=True, help="query length")
    p.add_argument("--kv-len", type=int, help="key/value length (default: --seq)")
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--causal", action="store_true")
    p.add_argument("--impl", choices=IMPLS, metavar="IMPL",
                   help="implementation: " + ", ".join(IMPLS) + " (default: the device's, "
                   "docs/attention.md)")
    p.add_argument("--pass", dest="pass_", choices=PASSES, default="fwd",
                   help="fwd, bwd or fwd_bwd (default %(default)s)")
    common(p)
    p.set_defaults(func=run, build=lambda a: ops.fused_attention(
        "attention", a.batch, a.heads, a.seq, a.kv_len or a.seq, a.head_dim, a.dtype,
        a.causal, a.kv_heads))

    p = kinds.add_parser("elementwise", help="pointwise op over N elements")
    p.add_argument("--numel", type=float, required=True)
    p.add_argument("--flops-per-element", type=float, default=1.0)
    p.add_argument("--inputs", type=int, default=1)
    common(p)
    p.set_defaults(func=run, build=lambda a: ops.elementwise(
        "elementwise", a.numel, a.dtype, a.flops_per_element, a.inputs, 1))

    p = kinds.add_parser("conv2d", help="2-D convolution (implicit GEMM)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--in-ch", type=int, required=True)
    p.add_argument("--out-ch", type=int, required=True)
    p.add_argument("--height", type=int, required=True)
    p.add_argument("--width", type=int, required=True)
    p.add_argument("--kernel", type=int, default=3)
    p.add_argument("--stride", type=int, default=1)
    common(p, dtype="fp32")
    p.set_defaults(func=run, build=lambda a: ops.conv2d(
        "conv2d", a.batch, a.in_ch, a.out_ch, a.height, a.width, a.kernel, a.stride, None, a.dtype))


def run(args: argparse.Namespace) -> int:
    device = load_device(args.device, calibration=args.calibration)
    op = args.build(args)
    unit = "matrix" if op.unit == "matrix" else "vector"
    peak = device.peak_for(unit, op.dtype)
    extra: dict = {}
    if op.kind == OpKind.ATTENTION:
        # Priced by the implementation (sim/cost/attention_impl.py); FLOPs and achieved
        # TFLOP/s follow the FlashAttention papers' count for the pass.
        impl = args.impl or default_impl(device)
        shape = shape_of(op)
        cost = attention_cost(device, shape, impl, args.pass_)
        factor = {"fwd": 1.0, "bwd": 2.5, "fwd_bwd": 3.5}[args.pass_]
        op = replace(op, flops=op.flops * factor,
                     bytes={k: v * factor for k, v in op.bytes.items()})
        extra = {"impl": impl, "pass": args.pass_,
                 "paper_flops": shape.paper_flops(args.pass_),
                 "achieved_tflops": shape.paper_flops(args.pass_) / cost.time_s / 1e12}
    else:
        cost = RooflineModel(device).time(op)
    roofline_s = max(op.flops / peak, op.main_bytes / device.hbm_bandwidth)
    payload = {
        "op": str(op.kind),
        "device": device.name,
        "dtype": op.dtype,
        "shape": shape_dict(op.shape),
        "flops": op.flops,
        "bytes": dict(op.bytes),
        **cost.as_dict(),
        "achieved_flops": op.flops / cost.time_s if cost.time_s else 0.0,
        "peak_flops": peak,
        "fraction_of_peak": (op.flops / cost.time_s) / peak if cost.time_s else 0.0,
        "roofline_time_s": roofline_s,
        **extra,
    }
    if args.json:
        emit_json(payload)
        return 0
    label = f"{op.kind} [{extra['impl']} {extra['pass']}]" if extra else str(op.kind)
    print(f"{label} on {device.name} ({op.dtype}): {fmt_si(cost.time_s, 's')}  [{cost.bound}-bound]")
    if extra:
        print(f"  {extra['achieved_tflops']:.1f} TFLOP/s (FlashAttention papers' FLOP count)")
    print(f"  compute  {fmt_si(cost.compute_s, 's')}   memory {fmt_si(cost.memory_s, 's')}   "
          f"overhead {fmt_si(cost.overhead_s, 's')}")
    print(f"  {fmt_si(payload['achieved_flops'], 'FLOP/s')} achieved = "
          f"{payload['fraction_of_peak']:.1%} of {fmt_si(peak, 'FLOP/s')} peak; "
          f"physical roofline {fmt_si(roofline_s, 's')}")
    return 0
