"""``xpusim train``: simulate one training step of a model on a cluster under a parallel plan."""

from __future__ import annotations

import argparse
import shutil
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

from xpusim.sim.api.base import request_from_args
from xpusim.sim.api.train import RECOMPUTE_CHOICES, TrainRequest, TrainResult, train
from xpusim.sim.cost.attention_impl import IMPLS
from xpusim.sim.parallel import FP8_SCALINGS, FRAMEWORKS, MOE_DISPATCHERS, ParallelPlan
from xpusim.sim.report import (
    check_output_file,
    check_plot_path,
    emit_json,
    fmt_bytes,
    fmt_si,
    table,
)
from xpusim.sim.training.memory import format_breakdown
from xpusim.sim.validation.track_record import describe

_INT_FLAGS = ("tp", "pp", "vpp", "dp", "ep", "cp", "mbs", "gbs", "seq", "zero", "seed")
_BOOL_FLAGS = (
    "sequence_parallel",
    "hierarchical_ep",
    "overlap_ep",
    "overlap_dp",
    "overlap_tp",
    "tp_extend_ep",
    "moe_fold",
    "grad_accum_fusion",
)

# Defaults are ``ParallelPlan``'s (sim/parallel.py); the plan file and flags override them.
_INT_HELP = {
    "tp": "tensor-parallel size (default 1)",
    "pp": "pipeline-parallel stages (default 1)",
    "vpp": "virtual stages per pipeline rank, interleaved 1F1B (default 1)",
    "dp": "data-parallel size (default: the devices left after tp*cp*pp)",
    "ep": "expert-parallel size, carved out of dp (MoE; default 1); with --moe-fold "
    "out of tp*cp*dp",
    "cp": "context-parallel size (default 1)",
    "mbs": "micro-batch size in sequences (default 1)",
    "gbs": "global batch in sequences (default: one micro-batch per DP rank)",
    "seq": "sequence length in tokens (default 4096)",
    "zero": "ZeRO stage: 0 plain DP, 1 optimizer states sharded (Megatron's distributed "
    "optimizer; default), 2 + gradients, 3 + parameters",
    "seed": "seed of the routing draws (default 0)",
}
_BOOL_HELP = {
    "sequence_parallel": "Megatron sequence parallelism: norms and dropout split over TP "
    "(default: on when tp > 1)",
    "hierarchical_ep": "EP dispatch as an inter-node all-gather then an intra-node "
    "all-to-all (default on)",
    "overlap_ep": "hide the EP all-to-all behind another micro-batch's compute "
    "(default on)",
    "overlap_dp": "gradient reduce-scatter during backward, parameter all-gather during "
    "forward (default on)",
    "overlap_tp": "TP collectives chunked and pipelined with their GEMMs (default off)",
    "tp_extend_ep": "the TP x EP group shards the set of experts (MindSpeed "
    "moe_tp_extend_ep; default on); --no-tp-extend-ep: TP splits every expert "
    "(Megatron-Core), so only ep must divide the experts",
    "moe_fold": "MoE parallel folding (Megatron-Core >= 0.10): the expert groups are "
    "formed from the ranks of TP x CP x DP in the order tp-ep-dp-pp, so EP may span CP "
    "ranks inside a node; ep (x tp) must divide tp*cp*dp, not dp (default off: EP carved "
    "out of DP, as MindSpeed)",
    "grad_accum_fusion": "weight-gradient GEMMs accumulate into the fp32 main gradient "
    "(Megatron-Core default on)",
}


def _add_recompute_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--recompute",
        choices=RECOMPUTE_CHOICES,
        help="activation recompute; auto (default) picks the cheapest that fits memory",
    )
    p.add_argument(
        "--recompute-modules", help="comma list for selective (default core_attn, Megatron's attention core): norm,attn,act,experts,mlp,core_attn"
    )
    p.add_argument(
        "--recompute-every",
        type=int,
        metavar="K",
        help="apply --recompute to every K-th transformer layer only (layers K, 2K, ... "
        "counted from 1), the others keep their activations; torchtitan's "
        "selective_ac_option K is --recompute full --recompute-every K (default 1)",
    )
    p.add_argument(
        "--cpu-offload-layers",
        type=int,
        metavar="N",
        help="CPU activation offloading (Megatron-Core cpu_offloading_num_layers): layers "
        "0..N-1 copy their saved activations to host memory after their forward and back "
        "before their backward, over the system's host link; needs pp 1 and no recompute "
        "(default 0: off)",
    )


def _add_dtype_flags(p: argparse.ArgumentParser) -> None:
    """--dtype and, for FP8, its scaling recipe (sim.training.lowprec)."""
    p.add_argument("--dtype", help="training dtype (default bf16)")
    p.add_argument(
        "--fp8-scaling",
        choices=FP8_SCALINGS,
        help="FP8 scaling recipe of a --dtype fp8 run: delayed (TransformerEngine "
        "DelayedScaling, default: amax taken inside the cast) or current "
        "(Float8CurrentScaling, Megatron-Bridge's FP8-CS: a separate amax pass per cast)",
    )
    for end, which in (("start", "first"), ("end", "last")):
        p.add_argument(
            f"--bf16-layers-at-{end}",
            type=int,
            metavar="N",
            help=f"keep the {which} N transformer layers' linears in bf16 under a low-precision "
            f"--dtype (Megatron-Core first_last_layers_bf16, num_layers_at_{end}_in_bf16; "
            "the NVFP4 paper keeps final layers in BF16) (default 0)",
        )


def _add_system_flags(p: argparse.ArgumentParser) -> None:
    """--system, --nodes and --devices: the system and the part of it the job runs on."""
    p.add_argument("--system", help="system profile name or path (default atlas-800t-a2)")
    p.add_argument(
        "--nodes",
        type=int,
        help="number of nodes of the system (default: as many as the plan's devices need; "
        "with --devices, the profile's)",
    )
    p.add_argument(
        "--devices",
        type=int,
        metavar="N",
        help="run on the first N devices of the system (contiguous: ranks 0..N-1 on "
        "devices 0..N-1, so the network sees their real links); N = tp*cp*dp*pp "
        "(default: every device)",
    )
    p.add_argument(
        "--per-node",
        type=int,
        metavar="K",
        help="with --devices: use the first K devices of each node (ranks 0..K-1 on node 0, "
        "K..2K-1 on node 1, ...), as a scheduler's segments place a job (default: all of "
        "each node's, one contiguous block)",
    )


def _add_stack_flags(p: argparse.ArgumentParser) -> None:
    """The software stack of the run: framework, rank order, gradient dtype, MoE routing
    and dispatcher, pipeline split."""
    p.add_argument(
        "--framework",
        choices=FRAMEWORKS,
        help="host side: eager PyTorch dispatch per op (default), CUDA graphs (none), "
        "eager with DeepSpeed 0.3's ZeRO-3 (per-parameter list collectives, no overlap), "
        "the FlashAttention repository's training (eager, flash-attn's fused loss), "
        "torchtitan's uncompiled Llama (unfused elementwise passes, FSDP2 copy-out), "
        "or MosaicML Composer with PyTorch FSDP1 (its post-backward gradient passes, "
        "Composer's eager DecoupledAdamW)",
    )
    p.add_argument("--order", help="rank order innermost first (default tp-cp-ep-dp-pp)")
    p.add_argument(
        "--grad-reduce-dtype",
        choices=("fp32", "bf16", "fp16"),
        help="dtype of the main gradients (accumulated, reduced over DP and read by the "
        "optimizer): fp32 (Megatron-LM's default for bf16, --accumulate-allreduce-grads-in-"
        "fp32) or bf16 (Megatron-Bridge's performance recipes: grad_reduce_in_fp32 = False)",
    )
    p.add_argument("--moe-routing", help="uniform | zipf:S | hist:c1,c2,... (seeded by --seed)")
    p.add_argument(
        "--moe-dispatcher",
        choices=MOE_DISPATCHERS,
        help="Megatron-Core MoE token dispatcher (moe_token_dispatcher_type): alltoall "
        "(default; sorts the received tokens by local expert after the all-to-all and "
        "back before the combine) or flex (DeepEP / HybridEP: no such sort)",
    )
    p.add_argument(
        "--layer-split",
        help="uneven pipeline split: model slots (layers, then MTP) per virtual stage, "
        "pp*vpp comma-separated counts in virtual-stage order (default: equal, no-op padded)",
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="simulate a training step (step time, MFU, memory, bubble)",
        description=__doc__,
    )
    p.add_argument("--model", help="preset name or Hugging Face config.json path")
    _add_system_flags(p)
    p.add_argument("--plan", help="plan TOML file ([plan] table; flags override it)")
    for name in _INT_FLAGS:
        p.add_argument(f"--{name.replace('_', '-')}", type=int, dest=name, help=_INT_HELP[name])
    _add_dtype_flags(p)
    _add_recompute_flags(p)
    p.add_argument("--schedule", choices=("auto", "1f1b", "interleaved"),
                   help="pipeline schedule (default auto: interleaved when --vpp > 1)")
    p.add_argument(
        "--dropout",
        type=float,
        help="attention and hidden dropout rate of the recipe (Megatron-LM GPT: 0.1; "
        "default 0): keeps masks and, for unfused attention, the dropped scores",
    )
    _add_stack_flags(p)
    for name in _BOOL_FLAGS:
        p.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            action=argparse.BooleanOptionalAction,
            default=None,
            help=_BOOL_HELP[name],
        )
    p.add_argument(
        "--full-ranks",
        action="store_true",
        help="simulate every rank instead of one per stage (small jobs: the check)",
    )
    p.add_argument(
        "--exact",
        action="store_true",
        help="simulate every op of every micro-batch (default: simulate two micro-batch "
        "counts past the pipeline warm-up and extend the steady state; same result within "
        "0.5%%, far faster for many micro-batches)",
    )
    p.add_argument("--trace", help="write a Chrome trace (Perfetto) of one rank per stage here")
    p.add_argument("--timeline", help="write a PNG timeline of one rank per stage here")
    p.add_argument(
        "--attention-impl",
        choices=IMPLS,
        metavar="IMPL",
        help="attention kernel: " + ", ".join(IMPLS) + " (default: the device's, docs/attention.md)",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument(
        "--explain",
        action="store_true",
        help="print each term of the step (compute by phase and kind, host dispatch, "
        "optimizer, exposed communication, bubble), its share and its source; with "
        "--json, as the document's 'explain' list",
    )
    p.add_argument("--quiet", action="store_true", help="no progress messages on stderr")
    p.set_defaults(func=run)


def request_from(args: argparse.Namespace) -> TrainRequest:
    """The flags as a request; traces and timelines draw every op, so they need ``exact``."""
    request = request_from_args(TrainRequest, args)
    return replace(
        request,
        exact=bool(args.exact or args.trace or args.timeline),
        progress=not args.quiet,
    )


def run(args: argparse.Namespace) -> int:
    if args.trace:
        check_output_file(args.trace, "--trace")
    if args.timeline:
        check_plot_path(args.timeline, "--timeline")
    result = train(request_from(args))
    for note in result.notes:
        sys.stderr.write(f"xpusim: note: {note}\n")
    _write_pictures(args, result)
    payload = result.as_dict()
    if args.trace:
        payload["trace"] = str(Path(args.trace))
    if args.json:
        if args.explain:
            payload["explain"] = explain_rows(result.simulation)
        emit_json(payload)
        return 0
    _print(result.simulation, payload, result.device,
           auto=(args.recompute or "auto") == "auto" and not args.plan)
    if args.explain:
        _print_explain(result.simulation)
    if record := result.track_record():
        print(describe(record))
    _print_files(args)
    return 0


def _print_files(args: argparse.Namespace) -> None:
    """Say where the files went, as the sweeps print "plot: PATH" (--json has "trace")."""
    if args.trace:
        print(f"trace: {args.trace} (Chrome/Perfetto JSON: ui.perfetto.dev)")
    if args.timeline:
        print(f"timeline: {args.timeline}")


def _write_pictures(args: argparse.Namespace, result: TrainResult) -> None:
    sim = result.simulation
    reps = {s.rank: f"stage {s.stage} (rank {s.rank})" for s in sim.stages}
    if not (args.trace or args.timeline):
        return
    # Traces and timelines ran the exact simulation (request_from), which keeps records.
    assert sim.sim is not None
    if args.trace:
        from xpusim.sim.trace import write_chrome_trace

        write_chrome_trace(sim.sim, args.trace, reps.keys(), reps)
    if args.timeline:
        from xpusim.sim.trace import render_timeline

        render_timeline(
            sim.sim,
            args.timeline,
            sorted(reps),
            reps,
            title=f"{sim.model} on {sim.devices} x {result.device}",
        )


def source_notes(sources: list[str]) -> dict[str, int]:
    """Each distinct source text and its footnote number, in order of first use: the
    ``--explain`` table cites sources by number and prints each once below it, wrapped,
    so the table stays as wide as its numbers."""
    notes: dict[str, int] = {}
    for src in sources:
        notes.setdefault(src, len(notes) + 1)
    return notes


def explain_rows(result) -> list[dict[str, object]]:
    """The ``--explain`` terms for ``--json``: term, seconds, share of the step, source."""
    from xpusim.sim.training.simulate import explain_terms

    return [{"term": name, "seconds": t, "share": t / result.step_time_s, "source": src}
            for name, t, src in explain_terms(result)]


def _print_explain(result) -> None:
    rows = explain_rows(result)
    print()
    print(f"why {result.step_time_s:.3f} s (mean stage; shares of the step):")
    notes = source_notes([str(r["source"]) for r in rows])
    print(table(
        [(r["term"], f"{r['seconds']:.3f}", f"{r['share']:.1%}", f"[{notes[str(r['source'])]}]")
         for r in rows],
        ("term", "seconds", "share", "source"),
    ))
    print("sources:")
    width = max(60, shutil.get_terminal_size((100, 24)).columns - 1)
    for src, n in notes.items():
        print(textwrap.fill(src, width, initial_indent=f"[{n}] ",
                            subsequent_indent=" " * (len(str(n)) + 3)))
    plan = result.plan
    print(
        f"recipe: dtype {plan.dtype}"
        + (f" ({plan.fp8_scaling} scaling)" if plan.dtype == "fp8" else "")
        + (f" (layers in bf16: first {plan.bf16_layers_at_start}, last {plan.bf16_layers_at_end})"
           if plan.bf16_layers_at_start or plan.bf16_layers_at_end else "")
        + f", attention {plan.attention_impl}, dropout {plan.dropout}, "
        f"grad accumulation fusion {plan.grad_accum_fusion}, framework {plan.framework}, "
        f"recompute {plan.recompute}"
        + (f" ({','.join(plan.recompute_modules)})" if plan.recompute == "selective" else "")
    )


def _ep_overlap(plan: ParallelPlan) -> str:
    """Whether the all-to-alls were overlapped, and why not (the schedule rule that
    ``sim.api.train`` applies by default: ``ParallelPlan.fb_mergeable``)."""
    if plan.overlap_ep:
        return "on: a forward and a backward of different micro-batches merged"
    if not plan.fb_mergeable:
        return ("off: plain 1F1B with pp > 1 cannot merge F/B (Megatron-Core and MindSpeed "
                "need --vpp > 1); the all-to-alls block the compute stream")
    return "off (--no-overlap-ep): the all-to-alls block the compute stream"


def _recompute_text(plan: ParallelPlan, auto: bool) -> str:
    """The plan's recompute policy, its modules when selective, and whether ``auto``
    chose it (``sim.training.recompute_choice``: the cheapest candidate that fits)."""
    text = plan.recompute
    if plan.recompute == "selective":
        text += f"({','.join(plan.recompute_modules)})"
    if plan.recompute_every > 1:
        text += f" (every {plan.recompute_every} layers)"
    if plan.cpu_offload_layers:
        text += f", activations of {plan.cpu_offload_layers} layers offloaded to the CPU"
    return text + (" [auto: cheapest that fits]" if auto else "")


def _print(result, d: dict, device: str, auto: bool = False) -> None:
    plan = result.plan
    # N devices, not N systems: "1536 x dgx-a100" read as 1,536 DGX boxes.
    where = f"{d['devices']} x {device} ({d['system']})"
    if d["system_devices"] != d["devices"]:
        span = (f"the first {plan.per_node} of each node" if plan.per_node
                else f"0-{d['devices'] - 1}")
        where = (f"{d['devices']} of the {d['system_devices']} devices of {d['system']} "
                 f"({span})")
    print(
        f"{d['model']} on {where}: tp={plan.tp} pp={plan.pp} "
        f"vpp={plan.vpp} dp={plan.dp} ep={plan.ep} cp={plan.cp} mbs={plan.mbs} gbs={plan.gbs} "
        f"seq={plan.seq} recompute={_recompute_text(plan, auto)}"
        f" sp={plan.sequence_parallel} zero={plan.zero}"
    )
    peaks = ", ".join(
        f"{v:.1%} of {name} peak ({fmt_si(result.peaks[name], 'FLOP/s')})"
        for name, v in d["mfu_by_peak"].items()
    )
    rows = [
        ("step time", fmt_si(d["step_time_s"], "s")),
        ("tokens/s", f"{d['tokens_per_s']:,.0f} ({d['tokens_per_s_per_device']:.1f} per device)"),
        ("MFU", peaks),
        (
            "memory/device",
            f"{fmt_bytes(d['memory_per_device_bytes'])} "
            f"(stage {d['memory']['stage']}, oom={d['oom']})",
        ),
        (
            "bubble",
            f"{d['bubble_fraction']:.1%} of the step simulated (idle pipeline time); the "
            f"textbook (p-1)/(m*v) gives {d['bubble_closed_form']:.1%} of the bubble-free step",
        ),
        ("exposed comm", fmt_si(d["exposed_comm_s"], "s")),
    ]
    if d["breakdown_s"].get("comm_ep", 0.0) > 0:
        rows.append(("EP overlap", _ep_overlap(plan)))
    print(table(rows, ("quantity", "value")))
    print()
    print(
        "mean busy time per stage (s; streams overlap, so the parts can sum to more "
        "than the step):"
    )
    print(table([(k, f"{v:.3f}") for k, v in d["breakdown_s"].items()], ("part", "seconds")))
    print()
    print("memory: " + format_breakdown(result.peak_memory))
