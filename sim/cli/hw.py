"""``xpusim hw list|show|diff``: browse and compare hardware profiles."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from xpusim.hwprofiles import list_devices, list_systems, load_device, load_system
from xpusim.hwprofiles.loader import list_calibrated, load_raw
from xpusim.sim.errors import InputError
from xpusim.sim.inference.engine_profile import (
    default_on,
    list_engines,
    load_engine,
)
from xpusim.sim.report import emit_json, fmt_bytes, fmt_si, table


def register(sub: argparse._SubParsersAction) -> None:
    hw = sub.add_parser("hw", help="list, show and compare hardware profiles")
    hw_sub = hw.add_subparsers(dest="hw_command", metavar="ACTION", required=True)
    p = hw_sub.add_parser("list", help="all device and system profiles")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_list)
    p = hw_sub.add_parser("show", help="one profile, by name or path to a .toml file")
    p.add_argument("name")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_show)
    p = hw_sub.add_parser("diff", help="fields that differ between two profiles")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_diff)


def _summary(name: str) -> dict[str, Any]:
    dev = load_device(name)
    return {
        "name": dev.name,
        "vendor": dev.vendor,
        "matrix_peak_bf16_flops": dev.peak_for("matrix", "bf16"),
        "hbm_capacity_bytes": dev.hbm_capacity,
        "hbm_bandwidth": dev.hbm_bandwidth,
    }


def _figures() -> dict[str, list[dict[str, Any]]]:
    """The table's figures in SI units: --json gave the names only."""
    devices = []
    for name in list_devices():
        dev = load_device(name)
        low = {f"matrix_peak_{d}_flops": dev.peak_for("matrix", d) if dev.runs_natively(d) else None
               for d in ("fp8", "mxfp4")}
        devices.append({**_summary(name), **low, "announced": dev.announced})
    systems = []
    for name in list_systems():
        sysm = load_system(name)
        systems.append({"name": name, "device": sysm.device.name,
                        "devices_per_node": sysm.devices_per_node,
                        "intra_topology": sysm.intra_topology, "nics_per_node": sysm.nics_per_node,
                        "nic_bandwidth": sysm.nic.bandwidth, "num_devices": sysm.num_devices,
                        "announced": sysm.announced})
    engines = []
    for name in list_engines():
        e = load_engine(name)
        engines.append({"name": name, "policy": e.policy, "kv_reserve": e.kv_reserve,
                        "host_overlap": e.host_overlap, "reference_host": e.reference_host,
                        "cuda_graphs": e.cuda_graphs, "device_archs": list(e.device_archs),
                        "default_on": default_on(name)})
    return {"device_figures": devices, "system_figures": systems, "engine_figures": engines}


def cmd_list(args: argparse.Namespace) -> int:
    devices = list_devices()
    systems = list_systems()
    if args.json:
        emit_json(
            {
                "devices": devices,
                "systems": systems,
                "calibrated": list_calibrated(),
                "engines": list_engines(),
                **_figures(),
            }
        )
        return 0
    rows = []
    for name in devices:
        s = _summary(name)
        dev = load_device(name)
        # Low-precision peaks only where the matrix unit runs the format natively.
        low = [fmt_si(dev.peak_for("matrix", d), "FLOP/s") if dev.runs_natively(d) else "-"
               for d in ("fp8", "mxfp4")]
        rows.append([name, s["vendor"], fmt_si(s["matrix_peak_bf16_flops"], "FLOP/s"), *low,
                     fmt_bytes(s["hbm_capacity_bytes"]), fmt_si(s["hbm_bandwidth"], "B/s"),
                     "announced" if dev.announced else ""])
    print(table(rows, ["device", "vendor", "matrix bf16", "fp8", "fp4 (mx)", "memory",
                       "mem bandwidth", "figures"]))
    print()
    rows = []
    for name in systems:
        sysm = load_system(name)
        rows.append([name, f"{sysm.devices_per_node} x {sysm.device.name}", sysm.intra_topology,
                     f"{sysm.nics_per_node} x {fmt_si(sysm.nic.bandwidth * 8, 'b/s')}",
                     sysm.num_devices, "announced" if sysm.announced else ""])
    print(table(rows, ["system", "devices", "intra-node", "NICs", "total", "figures"]))
    calibrated = list_calibrated()
    if calibrated:
        print(f"\ncalibrated profiles (use as a device name): {', '.join(calibrated)}")
    print()
    rows = []
    for name in list_engines():
        e = load_engine(name)
        # Where it runs ([platform] device_archs) and on which archs it is the default engine
        # of infer / sd (engine_profile.default_engine): a profile without the section runs
        # on any device.
        rows.append([name, e.policy, e.kv_reserve, e.host_overlap, e.reference_host or "-",
                     "yes" if e.cuda_graphs else "no", "/".join(e.device_archs) or "any",
                     "/".join(default_on(name)) or "-"])
    print(table(rows, ["serving engine (--engine)", "batching", "KV reserve", "host overlap",
                       "reference host", "graphs", "runs on", "default on"]))
    return 0


def spec_dict(name: str) -> tuple[str, dict[str, Any]]:
    """The loaded profile in SI units as a nested dict (what the simulator sees)."""
    if name in list_engines():  # `hw list` lists the serving engines beside the hardware
        return "engine", dataclasses.asdict(load_engine(name))
    kind, _raw, path = load_raw(name)
    if kind == "engine":
        return kind, dataclasses.asdict(load_engine(str(path)))
    if kind == "system":
        return kind, dataclasses.asdict(load_system(str(path)))
    # A device, or a calibration overlay on one.
    return "device", dataclasses.asdict(load_device(str(path)))


def cmd_show(args: argparse.Namespace) -> int:
    kind, spec = spec_dict(args.name)
    if args.json:
        emit_json({"kind": kind, "profile": spec})
        return 0
    for key, value in _flatten(spec).items():
        print(f"{key:45s} {human_value(key, value)}")
    return 0


def human_value(key: str, value: Any) -> str:
    """A profile field in its unit, as 'hw list' prints figures (SI values stay in --json)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    leaf = key.rsplit(".", 1)[-1]
    if "_peak." in key or key.endswith("_peak"):
        return fmt_si(value, "FLOP/s")
    if "bandwidth" in leaf:
        return fmt_si(value, "B/s")
    if "capacity" in leaf or leaf.endswith("_bytes"):
        return fmt_bytes(value)
    if leaf.endswith("_hz"):
        return fmt_si(value, "Hz")
    if leaf.endswith("_flops"):
        return fmt_si(value, "FLOP")
    if leaf.endswith("_s") or leaf == "latency":
        return fmt_si(value, "s")
    if leaf.endswith("_watts"):
        return f"{value:g} W"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
    elif isinstance(obj, list | tuple) and obj and isinstance(obj[0], dict):
        for item in obj:
            out.update(_flatten(item, f"{prefix}{item.get('name', '?')}."))
    else:
        out[prefix.rstrip(".")] = obj
    return out


def cmd_diff(args: argparse.Namespace) -> int:
    kind_a, a = spec_dict(args.a)
    kind_b, b = spec_dict(args.b)
    if kind_a != kind_b:
        an = {k: ("an " if k[0] in "aeiou" else "a ") + k for k in (kind_a, kind_b)}
        raise InputError(
            f"cannot diff {an[kind_a]} with {an[kind_b]}: '{args.a}' is {an[kind_a]} profile "
            f"and '{args.b}' {an[kind_b]} profile; compare two devices, two systems or two "
            "engines (a system's device is named in 'xpusim hw show SYSTEM')"
        )
    fa, fb = _flatten(a), _flatten(b)
    skip = ("sources", "path", "name", "description")
    rows: list[dict[str, Any]] = []
    for key in sorted(set(fa) | set(fb)):
        if key.split(".")[0] in skip or ".sources." in key or key.endswith(".path"):
            continue
        va, vb = fa.get(key), fb.get(key)
        if va != vb:
            # A ratio only of numbers: True/False are ints to Python, but "0x" of a flag is noise.
            numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (va, vb))
            ratio = vb / va if numbers and va else None
            rows.append({"field": key, "a": va, "b": vb, "ratio_b_over_a": ratio})
    if args.json:
        emit_json({"a": args.a, "b": args.b, "differences": rows})
        return 0
    print(table([[r["field"], human_value(r["field"], r["a"]), human_value(r["field"], r["b"]),
                  "-" if r["ratio_b_over_a"] is None else f"{r['ratio_b_over_a']:.3g}x"]
                 for r in rows], ["field", args.a, args.b, "b/a"]))
    return 0
