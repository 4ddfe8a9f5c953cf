"""``xpusim compare``: one training or serving command across several systems.

    xpusim compare --systems atlas-800t-a2,gb200-nvl72 --devices 576 \\
        train --model pangu-ultra-moe --tp 8 --pp 8 --ep 8 --mbs 1 --gbs 1152 --seq 4096
    xpusim compare --systems dgx-h100,gb200-nvl72 infer --model deepseek-v3 --serve --tp 1 --ep 16

The command after the system list is run as written on each system (``--system S``
added; for ``train`` also ``--nodes devices / devices_per_node``): its own parser reads
the flags into its request and the study function runs it (``xpusim.api``); the given plan is kept on every system and the data-parallel size follows
from the device count (no per-system plan search: the comparison isolates the
hardware). A system the plan does not fit, or cannot be laid out on, is reported with
the simulator's verdict instead of a number. Per-watt figures use the device profiles'
``tdp_w`` (board power only, no host, network or cooling), blank where unknown.
"""

from __future__ import annotations

import argparse
from typing import Any

from xpusim.hwprofiles import load_system
from xpusim.sim.api.base import request_from_args
from xpusim.sim.api.commands import api_command, command_name
from xpusim.sim.cli.main import build_parser
from xpusim.sim.errors import InputError, NegativeVerdict, ProfileError
from xpusim.sim.limits import check_namespace
from xpusim.sim.report import emit_json, table
from xpusim.sim.units import split_list
from xpusim.sim.validation.track_record import describe_what_if, what_if_record

COMMANDS = ("train", "infer")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="run one train or infer command on several systems: tokens/s, per device, per watt",
    )
    p.add_argument("--systems", required=True, help="comma-separated system profiles")
    p.add_argument("--devices", type=int,
                   help="train: devices on every system (default: the plan's; must be a "
                        "multiple of each system's devices per node); infer: devices the "
                        "deployment spans (sets --nodes; without --tp/--ep/--pp in the "
                        "infer arguments, also its size: --devices N, TP N)")
    p.add_argument("--plot", help="write a bar chart (PNG/SVG) of tokens/s per device and per kW")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("command", choices=COMMANDS, help="the command to run on each system")
    p.add_argument("args", nargs=argparse.REMAINDER, help="its arguments (without --system)")
    p.set_defaults(func=run)


def _run_one(argv: list[str]) -> tuple[int, dict | None, str]:
    """Run the command line ``argv`` through its study function: (exit status as the
    command would give it, its ``--json`` document or None, the last line of its message).

    The flags are parsed by the command's own parser and read into its request
    (``xpusim.sim.api.commands``: ``infer --serve`` is the serve study)."""
    args = build_parser(argv[0]).parse_args(argv)
    try:
        check_namespace(args)
        _cli_only_flags(args)
        cls, study = api_command(command_name(argv[0], vars(args)))
        return 0, study(request_from_args(cls, args)).as_dict(), ""
    except (InputError, ProfileError) as exc:
        return 2, None, _last_line(f"xpusim: error: {exc}")
    except NegativeVerdict as exc:
        return 3, exc.payload or None, _last_line(f"xpusim: {exc}")


def _cli_only_flags(args: argparse.Namespace) -> None:
    # Pictures are drawn by the train command line, not its study: compare keeps none.
    for flag in ("trace", "timeline"):
        if getattr(args, flag, None):
            raise InputError(f"compare writes no --{flag}; drop it from the command's arguments")


def _last_line(message: str) -> str:
    lines = message.strip().splitlines()
    return lines[-1] if lines else ""


def _row(command: str, system_name: str, rc: int, payload: dict | None, why: str) -> dict:
    system = load_system(system_name)
    tdp = system.device.tdp_watts
    row: dict[str, Any] = {"system": system_name, "device": system.device.name, "rc": rc,
                           "tdp_w": tdp}
    if rc != 0 or payload is None:
        row["verdict"] = why or f"exit {rc}"
        if payload and payload.get("oom"):
            row["verdict"] = "out of memory"
        return row
    if command == "train":
        devices = payload.get("devices") or payload.get("world") or 0
        tps = payload.get("tokens_per_s")
        p = payload.get("plan", {})
        row.update(devices=devices, tokens_per_s=tps, step_s=payload.get("step_time_s"),
                   mfu=payload.get("mfu"),
                   plan=" ".join(f"{k}={p[k]}" for k in ("tp", "pp", "vpp", "dp", "ep", "cp")
                                 if k in p) or "",
                   recompute=p.get("recompute"))
    else:
        d = payload
        if "disaggregated" in d:
            raise InputError("compare runs colocated serving; drop the --prefill/--decode flags")
        devices = (d.get("tp") or 1) * (d.get("ep") or 1)
        tps = d.get("throughput_tokens_per_s") if "throughput_tokens_per_s" in d else d.get(
            "tokens_per_s")
        row.update(devices=devices, tokens_per_s=tps, engine=d.get("engine"),
                   plan=f"tp={d.get('tp')} ep={d.get('ep')} engine={d.get('engine')}",
                   ttft_mean_s=(d.get("ttft_s") or {}).get("mean"),
                   tpot_mean_s=(d.get("tpot_s") or {}).get("mean"))
    if tps and devices:
        row["tokens_per_s_per_device"] = tps / devices
        if tdp:
            row["tokens_per_s_per_kw"] = tps / (devices * tdp / 1000.0)
    return row


def run(args: argparse.Namespace) -> int:
    systems = split_list(args.systems, "--systems")
    if not systems:
        raise InputError("--systems needs at least one system name (see 'xpusim hw list')")
    rest = _command_args(args)
    if args.devices is not None and args.devices < 1:
        raise InputError(f"--devices must be >= 1, got {args.devices}")
    if args.plot:
        from xpusim.sim.report import check_plot_path

        check_plot_path(args.plot, "--plot")
    rows = [_on_system(args, name, rest) for name in systems]
    if all(r["rc"] == 2 for r in rows):  # bad input on every system: not a comparison
        verdict = str(rows[0].get("verdict", "")).removeprefix("xpusim: error: ")
        raise InputError(f"every system refused the {args.command} arguments: {verdict}")
    if args.plot:
        _plot(rows, args.plot, args.command)
    records = _what_if_records(args.command, rest, systems)
    if args.json:
        emit_json({"command": args.command, "args": rest, "devices": args.devices,
                   "rows": rows, "plot": args.plot, "what_if_record": records})
        return 0
    _print(args, rest, len(systems), rows)
    if records:
        print("what-if record (published runs of the same job on two of these systems, "
              "`xpusim validate --published`):")
        for entry in records:
            print("  " + describe_what_if(entry))
    return 0


def _what_if_records(command: str, rest: list[str], systems: list[str]) -> list[dict]:
    """How well the corpus's pairs of the same job on two of ``systems`` were predicted
    (``track_record.what_if_record``): the what-if this command makes."""
    if command == "train":
        category = "training"
    elif "--serve" in rest:
        category = "serving"
    else:
        category = "prefill" if "prefill" in rest else "decode"
    found = (what_if_record("hardware", category, a, b)
             for i, a in enumerate(systems) for b in systems[i + 1:])
    return [entry for entry in found if entry is not None]


def _command_args(args: argparse.Namespace) -> list[str]:
    """The command's arguments as given (less a leading ``--``); compare's own refused."""
    rest = list(args.args)
    if rest and rest[0] == "--":
        rest = rest[1:]
    for banned in ("--system", "--json", "--nodes"):
        if banned in rest:
            raise InputError(f"compare sets {banned} itself; drop it from the {args.command} "
                             "arguments")
    return rest


# infer flags that size the deployment; without one, compare --devices N sizes it.
INFER_SIZE_FLAGS = ("--devices", "--tp", "--ep", "--pp")


def _on_system(args: argparse.Namespace, name: str, rest: list[str]) -> dict:
    """The command on system ``name``: its row (figures, or the verdict)."""
    system = load_system(name)  # a bad name fails here, before any simulation
    argv = [args.command, *rest, "--system", name]
    if args.command == "infer" and args.devices:
        # serving: enough nodes to hold the deployment (its size comes from --tp/--ep)
        argv += ["--nodes", str(max(system.nodes, -(-args.devices // system.devices_per_node)))]
        if not any(a.split("=")[0] in INFER_SIZE_FLAGS for a in rest):
            # No size given: span the --devices asked for (infer --devices N is TP N); the
            # deployment ran on one device and every large model read "out of memory".
            argv += ["--devices", str(args.devices)]
    if args.command == "train" and args.devices:
        if args.devices % system.devices_per_node:
            return {"system": name, "device": system.device.name, "rc": 2,
                    "tdp_w": system.device.tdp_watts,
                    "verdict": f"{args.devices} devices is not a whole number of "
                               f"{system.devices_per_node}-device nodes"}
        argv += ["--nodes", str(args.devices // system.devices_per_node)]
    rc, payload, why = _run_one(argv)
    return _row(args.command, name, rc, payload, why)


def _print(args: argparse.Namespace, rest: list[str], systems: int, rows: list[dict]) -> None:
    how = "DP from the device count" if args.command == "train" else "same deployment"
    print(f"xpusim {args.command} {' '.join(rest)}  on {systems} systems "
          f"(the same plan on each; {how})")
    out = []
    for r in rows:
        if "tokens_per_s" not in r:
            out.append([r["system"], r["device"], "-", "-", "-", "-", "-", r.get("verdict", "")])
            continue
        out.append([
            r["system"], r["device"], r["devices"], f"{r['tokens_per_s']:,.0f}",
            f"{r.get('tokens_per_s_per_device', 0):,.1f}",
            f"{r['tokens_per_s_per_kw']:,.1f}" if "tokens_per_s_per_kw" in r else "-",
            f"{r['mfu']:.1%}" if r.get("mfu") is not None else "-",
            r.get("plan", "") + (f" recompute={r['recompute']}" if r.get("recompute") else ""),
        ])
    print(table(out, ["system", "device", "devices", "tokens/s", "per device", "per kW (TDP)",
                      "MFU", "plan / verdict"]))
    engines = {r["engine"] for r in rows if r.get("engine")}
    if len(engines) > 1:  # no --engine: each system ran its device's default stack
        print(f"note: the systems ran different serving engines ({', '.join(sorted(engines))}: "
              "each device's default, docs/inference.md); pass --engine to compare one stack")
    if args.plot:
        print(f"wrote {args.plot}")


def _plot(rows: list[dict], path: str, command: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["system"] for r in rows]
    per_dev = [r.get("tokens_per_s_per_device", 0.0) for r in rows]
    per_kw = [r.get("tokens_per_s_per_kw", 0.0) for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, values, title in ((axes[0], per_dev, "tokens/s per device"),
                              (axes[1], per_kw, "tokens/s per kW of device TDP")):
        bars = ax.bar(names, values, color="#4477aa")
        for bar, r, v in zip(bars, rows, values, strict=True):
            label = f"{v:,.0f}" if v else ("n/a" if "tokens_per_s" in r else "no fit")
            ax.annotate(label, (bar.get_x() + bar.get_width() / 2, v), ha="center",
                        va="bottom", fontsize=8)
        ax.set_title(title)
        ax.tick_params(axis="x", rotation=30)
    fig.suptitle(f"xpusim compare {command}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
