"""``xpusim sd``: the speculative-decoding study (MoESD) — speedup and target efficiency vs batch.

The study is ``xpusim.sd`` (sim/api/sd.py, on sim/inference/sd_study.py); this module
parses the flags into its request and prints the result, writes CSV or plots.
``--compare-dense`` adds a dense target/draft pair, ``--topk`` re-runs the target with
other top-k (MoESD Fig. 4).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from xpusim.sim.api.base import request_from_args
from xpusim.sim.api.sd import SdRequest, SdResult, sd
from xpusim.sim.cli.infer import add_ep_dispatch_args, note_default_engine, refuse_ll_intranode
from xpusim.sim.report import (
    check_output_args,
    emit_json,
    save_figure,
    table,
    write_csv,
)
from xpusim.sim.validation.track_record import describe


def register(sub: argparse._SubParsersAction) -> None:
    # Defaults are the request's (sim/api/sd.py); None here means "not given".
    p = sub.add_parser(
        "sd", help="speculative-decoding study: speedup and target efficiency vs batch"
    )
    p.add_argument("--target", required=True, help="target model preset or config.json")
    p.add_argument("--draft", required=True, help="draft model preset, or a head: eagle, mtp")
    p.add_argument("--system", required=True,
                   help="system profile name (xpusim hw list) or a .toml path")
    p.add_argument("--nodes", type=int, help="nodes of the system (default: the profile's)")
    p.add_argument(
        "--devices", type=int, help="target devices (TP=N); the draft model uses --draft-devices"
    )
    p.add_argument("--tp", type=int,
                   help="target TP per EP group, with --ep (devices = tp x ep); not with --devices")
    p.add_argument("--ep", type=int, help="expert-parallel groups of the target (default 1)")
    p.add_argument("--draft-devices", type=int, help="TP of a draft model (vLLM: 1; default 1)")
    p.add_argument("--gamma", type=int, help="draft length (default 4)")
    acc = p.add_mutually_exclusive_group()
    acc.add_argument(
        "--alpha",
        help="acceptance per drafted token: one rate, or one per position (a,b,c,d); "
        "default 0.8",
    )
    acc.add_argument(
        "--sigma", type=float, help="MoESD's sigma instead of alpha (converted by its Eq. 5)"
    )
    p.add_argument(
        "--batch",
        help="batch sizes, comma-separated (default: the MoESD paper's, 1..100)",
    )
    p.add_argument(
        "--context", type=float, help="cached context per request (tokens; default 512)"
    )
    p.add_argument("--engine", help="serving-engine profile or 'none' (default: the device's: vllm-0.6, on "
                   "Ascend vllm-ascend-0.9, on Blackwell vllm-nightly)")
    p.add_argument("--dtype", help="default bf16 (fp16 on a device without bf16: V100, 910A)")
    p.add_argument("--routing", help="uniform (default), zipf:S or a counts file")
    p.add_argument("--seed", type=int, help="default 0")
    add_ep_dispatch_args(p)
    p.add_argument(
        "--compare-dense", metavar="MODEL", help="dense target to compare (e.g. opt-30b)"
    )
    p.add_argument(
        "--draft-dense", metavar="MODEL", help="draft of the dense target (e.g. opt-350m)"
    )
    p.add_argument("--topk", help="also run the target with these top-k values, e.g. 1,2,4,8,16")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--csv", help="write all rows to this CSV file")
    p.add_argument("--plot", help="write speedup and target efficiency vs batch to this PNG/SVG")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_output_args(args)
    refuse_ll_intranode(args)
    result = sd(request_from_args(SdRequest, args))
    note_default_engine(args, args.system)
    groups = [g.as_dict() for g in result.groups]
    if args.csv:
        write_csv(args.csv, [{"group": g["label"], **r} for g in groups for r in g["rows"]])
    if args.plot:
        plot_sweep(
            groups,
            args.plot,
            f"{result.system} x{result.plan.devices}, gamma={result.gamma}, "
            f"E[tokens]={result.expected_tokens:.2f}",
        )
    if args.json:
        emit_json(result.as_dict())
        return 0
    _print(result, groups)
    if record := result.track_record():
        print(describe(record))
    for path in (args.csv, args.plot):
        if path:
            print(f"wrote {path}")
    return 0


def _print(result: SdResult, groups: list[dict]) -> None:
    print(
        f"SD on {result.plan.devices} x {result.device} ({result.engine}): "
        f"gamma={result.gamma}, alpha={result.alpha}, {result.expected_tokens:.2f} "
        f"tokens/round, context {result.context:g}"
    )
    for g in groups:
        print(
            f"\n{g['label']} (draft {g['draft']}): peak {g['peak']['speedup']:.2f}x at batch "
            f"{g['peak']['batch']}; speedup >= peak/sqrt2 for batch {g['band_sqrt2']['min_batch']}"
            f"..{g['band_sqrt2']['max_batch']}"
        )
        rows = [
            (
                r["batch"],
                f"{r['t_ar_s'] * 1e3:.2f}",
                f"{r['t_draft_s'] * 1e3:.2f}",
                f"{r['t_verify_s'] * 1e3:.2f}",
                f"{r['t_reject_s'] * 1e3:.2f}",
                f"{r['speedup']:.3f}",
                f"{r['target_efficiency']:.3f}",
                f"{r['experts_loaded_ar']:.1f}->{r['experts_loaded']:.1f}" if g["top_k"] else "-",
            )
            for r in g["rows"]
        ]
        print(
            table(
                rows,
                [
                    "batch",
                    "t_ar ms",
                    "t_draft ms",
                    "t_verify ms",
                    "t_reject ms",
                    "speedup",
                    "target eff",
                    "experts ar->sd",
                ],
            )
        )
        if g.get("oom_rows"):
            skipped = ", ".join(str(r["batch"]) for r in g["oom_rows"])
            print(f"  out of KV-cache memory (not simulated): batch {skipped}")


def plot_sweep(groups: list[dict], path: str, title: str) -> Path:
    import matplotlib  # noqa: PLC0415 - plotting only when asked

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for g in groups:
        b = [r["batch"] for r in g["rows"]]
        ax1.plot(b, [r["speedup"] for r in g["rows"]], marker="o", ms=3, label=g["label"])
        ax2.plot(b, [r["target_efficiency"] for r in g["rows"]], marker="o", ms=3, label=g["label"])
    ax1.axhline(1.0, color="grey", lw=0.8, ls=":")
    ax1.set_xlabel("batch size")
    ax1.set_ylabel("SD speedup")
    ax2.set_xlabel("batch size")
    ax2.set_ylabel("target efficiency T(B,1)/T(B,verify)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, out, dpi=110)  # atomic: temp file, then rename
    plt.close(fig)
    return out
