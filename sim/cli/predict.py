"""``xpusim predict kernel NAME --shape k=v,...``: a kernel's predicted time from its op graph.

The graph is what the kernel's describe() function builds (``sim/kernel_registry.py``);
its time is the sum of the ops' cost-model times (the kernel runs them one after
another on one stream), with a per-op breakdown.
"""

from __future__ import annotations

import argparse

from xpusim.hwprofiles import load_device
from xpusim.sim.cost import RooflineModel
from xpusim.sim.kernel_registry import KERNELS, describe_kernel, parse_shape
from xpusim.sim.report import emit_json, fmt_si, table


def _keys_help() -> str:
    lines = []
    for entry in KERNELS.values():
        keys = ", ".join(
            k.name + ("" if k.default is None else f"={int(k.default)}") for k in entry.keys
        )
        lines.append(f"{entry.name}: {keys}")
    return "shape keys (defaults after '='): " + "; ".join(lines)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="predicted time of a kernel from its op graph")
    what = p.add_subparsers(dest="predict_what", metavar="WHAT", required=True)
    k = what.add_parser("kernel", help="one kernel at one shape", epilog=_keys_help())
    k.add_argument("name", choices=list(KERNELS), help="kernel name")
    k.add_argument(
        "--shape",
        required=True,
        help="comma-separated key=value, e.g. batch=1,heads=8,seq=1024,head_dim=64",
    )
    k.add_argument("--device", default="cpu-host", help="device name or profile path")
    k.add_argument("--calibration", help="calibration overlay TOML (from 'xpusim calibrate')")
    k.add_argument("--dtype", default="fp32", help="element type of the kernel (default fp32)")
    k.add_argument("--top", type=int, default=10, help="ops to list in the table (largest first)")
    k.add_argument("--json", action="store_true", help="print the result as JSON")
    k.set_defaults(func=run)


def predict_kernel(name: str, shape: dict, device, dtype: str = "fp32") -> dict:
    """Predicted time of kernel ``name`` at ``shape`` on ``device``, with per-op costs."""
    graph = describe_kernel(name, shape, dtype)
    model = RooflineModel(device)
    ops: list[dict] = []
    by_kind: dict[str, float] = {}
    total = 0.0
    for op in graph.ops():
        cost = model.time(op)
        total += cost.time_s
        by_kind[str(op.kind)] = by_kind.get(str(op.kind), 0.0) + cost.time_s
        ops.append(
            {
                "name": op.name,
                "kind": str(op.kind),
                "unit": str(op.unit),
                "flops": op.flops,
                "bytes": op.main_bytes,
                "time_s": cost.time_s,
                "compute_s": cost.compute_s,
                "memory_s": cost.memory_s,
                "overhead_s": cost.overhead_s,
                "bound": cost.bound,
            }
        )
    return {
        "kernel": name,
        "shape": shape,
        "device": device.name,
        "dtype": dtype,
        "time_s": total,
        "num_ops": len(ops),
        "flops": sum(o["flops"] for o in ops),
        "bytes": sum(o["bytes"] for o in ops),
        "time_by_kind_s": by_kind,
        "ops": ops,
    }


def run(args: argparse.Namespace) -> int:
    shape = parse_shape(args.name, args.shape)
    device = load_device(args.device, calibration=args.calibration)
    result = predict_kernel(args.name, shape, device, args.dtype)
    result["calibration"] = device.calibration or None
    if args.json:
        emit_json(result)
        return 0
    shape_text = ",".join(
        f"{k}=" + (":".join(map(str, v)) if isinstance(v, tuple) else str(int(v)))
        for k, v in shape.items()
    )
    cal = f" + {device.calibration}" if device.calibration else " (uncalibrated)"
    print(
        f"{args.name}[{shape_text}] on {device.name}{cal}: {fmt_si(result['time_s'], 's')} "
        f"({result['num_ops']} ops, {fmt_si(result['flops'], 'FLOP')})"
    )
    kinds = sorted(result["time_by_kind_s"].items(), key=lambda kv: -kv[1])
    print("  by kind: " + ", ".join(f"{k} {fmt_si(v, 's')}" for k, v in kinds))
    top = sorted(result["ops"], key=lambda o: -o["time_s"])[: max(args.top, 0)]
    if top:
        rows = [[o["name"], o["kind"], fmt_si(o["time_s"], "s"), o["bound"]] for o in top]
        print(table(rows, ["op", "kind", "time", "bound"]))
    return 0
