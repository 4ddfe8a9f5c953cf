"""``xpusim infer``: one prefill or decode step of a model on a system, or a serving run.

The step is ``xpusim.infer`` (sim/api/infer.py); ``--serve`` simulates continuous
batching of a request stream, ``xpusim.serve`` (sim/api/serve.py), with speculative
decoding (``--draft``) or disaggregated into prefill and decode pools (sim/cli/disagg.py).
This module parses the flags into the request, calls the study and prints the result.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from xpusim.hwprofiles import load_system
from xpusim.sim.api.base import request_from_args
from xpusim.sim.api.infer import PHASES, InferRequest, InferResult, infer
from xpusim.sim.api.serve import (
    SD_DEFAULTS,
    DisaggServeResult,
    ServeRequest,
    ServeResult,
    serve,
    speculative_options,
)
from xpusim.sim.cli import disagg as disagg_cli
from xpusim.sim.cost.attention_impl import IMPLS
from xpusim.sim.errors import InputError
from xpusim.sim.inference.engine_profile import default_engine_note
from xpusim.sim.inference.ep_dispatch import (
    EP_DISPATCH_CHOICES,
    EP_DISPATCH_DTYPES,
    LOW_LATENCY,
    ll_intranode_refusal,
)
from xpusim.sim.network.ep import LL_INTRANODE
from xpusim.sim.report import emit_json, fmt_bytes, fmt_si, table
from xpusim.sim.validation.track_record import describe


def add_deployment_args(p: argparse.ArgumentParser) -> None:
    # Defaults are the request's (sim/api/infer.py); None here means "not given".
    p.add_argument("--system", required=True, help="system profile name or path (e.g. hgx-a800)")
    p.add_argument("--nodes", type=int, help="nodes of the system (default: the profile's)")
    p.add_argument("--devices", type=int, help="devices used, all as tensor parallel (TP=N)")
    p.add_argument("--tp", type=int, help="tensor-parallel size (with --ep: devices = tp x ep)")
    p.add_argument("--ep", type=int, help="expert-parallel groups (MoE; default 1)")
    p.add_argument(
        "--pp", type=int,
        help="pipeline stages (default 1; needs --tp; devices = tp x pp x ep); with "
        "--serve, pp micro-batches in flight as the engine's PP scheduler runs them "
        "(vllm-nightly: V1's batch queue; vllm-0.6: virtual engines; trtllm-0.10/0.17/1.0: "
        "micro-batches; sglang-0.4 predates SGLang's PP)",
    )
    p.add_argument(
        "--engine",
        help="serving-engine profile name or path; 'none' for no host overheads "
        "(default: the device's: vllm-0.6, on Ascend vllm-ascend-0.9, on Blackwell "
        "vllm-nightly; docs/inference.md)",
    )
    p.add_argument("--dtype", help="default bf16 (fp16 on a device without bf16: V100, 910A)")
    p.add_argument(
        "--routing",
        help="MoE routing: uniform (default), zipf:S (p_i ~ i^-S) or a file of per-expert counts",
    )
    p.add_argument("--seed", type=int, help="default 0")
    add_ep_dispatch_args(p)


def add_ep_dispatch_args(p: argparse.ArgumentParser) -> None:
    """``--ep-dispatch`` / ``--ep-dispatch-dtype`` / ``--ll-intranode`` (infer and sd;
    docs/inference.md)."""
    p.add_argument(
        "--ep-dispatch", choices=EP_DISPATCH_CHOICES,
        help="kernel of the MoE dispatch/combine under EP: collective (plain all-to-alls, "
        "default), deepep or low-latency (xpusim ep's models, docs/ep.md)",
    )
    p.add_argument(
        "--ep-dispatch-dtype", choices=EP_DISPATCH_DTYPES,
        help="dtype the EP kernel dispatches in (default bf16; the combine is 16-bit)",
    )
    p.add_argument(
        "--ll-intranode", choices=LL_INTRANODE,
        help="with --ep-dispatch low-latency only: path of copies between devices of one "
        "node, nic (NIC to NIC, pure RDMA: DeepEP as launched; default) or fabric "
        "(NVLink/xGMI stores beside the RDMA: DeepEP's allow_nvlink_for_low_latency_mode, "
        "UCCL-EP); docs/ep.md",
    )


def refuse_ll_intranode(args: argparse.Namespace) -> None:
    """``--ll-intranode`` given (even its default) without the low-latency kernel, the one
    kernel it is a choice of, would be ignored: refuse it."""
    kernel = args.ep_dispatch or EP_DISPATCH_CHOICES[0]
    if args.ll_intranode is not None and kernel != LOW_LATENCY:
        raise InputError(ll_intranode_refusal(kernel))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("infer", help="inference step (prefill/decode) or serving simulation")
    p.add_argument("--model", required=True, help="model preset name or HF config.json path")
    add_deployment_args(p)
    p.add_argument("--phase", choices=PHASES, help="default decode")
    p.add_argument("--batch", type=int, help="requests in the step (default 1)")
    p.add_argument(
        "--context",
        type=int,
        help="prompt length (prefill) or cached context per request (decode); default 1024",
    )
    p.add_argument(
        "--attention-impl",
        choices=IMPLS,
        metavar="IMPL",
        help="attention kernel: " + ", ".join(IMPLS) + " (default: the device's, docs/attention.md)",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    s = p.add_argument_group("serving (--serve)")
    s.add_argument("--serve", action="store_true", help="simulate continuous batching of requests")
    s.add_argument("--rate", type=float, help="Poisson arrival rate, requests/s (default 1)")
    s.add_argument("--requests", type=int, help="number of requests (default 200)")
    s.add_argument("--trace", help="CSV with arrival_s,prompt_tokens,output_tokens")
    s.add_argument(
        "--prompt-len", help="N, uniform:A:B or exp:MEAN (default uniform:128:1024)"
    )
    s.add_argument("--output-len", help="N, uniform:A:B or exp:MEAN (default exp:256)")
    s.add_argument(
        "--max-num-seqs", type=int, metavar="N",
        help="requests the scheduler runs at once (default: the engine profile's, or its "
        "per-run heuristic's; vLLM --max-num-seqs, trtllm-bench --max_batch_size)",
    )
    s.add_argument(
        "--max-batched-tokens", type=int, metavar="N",
        help="tokens per scheduler step (default: the engine's; vLLM "
        "--max-num-batched-tokens, trtllm-bench --max_num_tokens)",
    )
    s.add_argument("--draft", help="speculative decoding: draft model name or head (eagle, mtp)")
    s.add_argument(
        "--gamma", type=int, help=f"tokens drafted per round (default {SD_DEFAULTS['gamma']})"
    )
    s.add_argument(
        "--alpha",
        type=float,
        help=f"mean acceptance; sampled per request (default {SD_DEFAULTS['alpha']})",
    )
    s.add_argument(
        "--draft-devices",
        type=int,
        help=f"tensor-parallel size of the draft (default {SD_DEFAULTS['draft_devices']})",
    )
    s.add_argument(
        "--progress", action="store_true", help="show a progress bar (default: on a tty)"
    )
    disagg_cli.add_args(s)
    p.set_defaults(func=run)


# Flags of one kind of run that the other kind would ignore (were silently ignored).
SERVING_ONLY = ("rate", "requests", "trace", "prompt_len", "output_len", "draft", "slo_ttft",
                "slo_tpot")
STEP_ONLY = ("phase", "batch", "context")


def run(args: argparse.Namespace) -> int:
    refuse_ll_intranode(args)
    if args.serve:
        _refuse(args, STEP_ONLY, "only a single step uses these; a serving run's requests "
                "come from --rate, --requests, --prompt-len and --output-len (or --trace): "
                "drop them")
    else:
        _refuse_serving_flags(args)
        step = infer(request_from_args(InferRequest, args))
        note_default_engine(args, args.system)
        _note_past_max_seq(step)
        if args.json:
            emit_json(step.as_dict())
        else:
            _print_step(step)
            if record := step.track_record():
                print(describe(record))
        return 0
    if args.trace:  # the trace gives every arrival and length; these were ignored
        _refuse(args, ("rate", "requests", "prompt_len", "output_len"),
                "--trace gives each request's arrival and lengths: drop them or the trace")
    progress = args.progress or (sys.stderr.isatty() and not args.json)
    result = serve(replace(request_from_args(ServeRequest, args), progress=progress))
    note_default_engine(args, args.prefill_system or args.system)
    if args.json:
        emit_json(result.as_dict())
    elif isinstance(result, DisaggServeResult):
        disagg_cli.print_disaggregated(result)
    else:
        _print_serve(result)
        if record := result.track_record():
            print(describe(record))
    return 0


def note_default_engine(args: argparse.Namespace, system: str) -> None:
    """No --engine on a device no engine profile names (AMD, a CPU host): say which engine
    priced the run and why (engine_profile.default_engine_note)."""
    if args.engine is None and (note := default_engine_note(load_system(system).device)):
        sys.stderr.write(f"xpusim: note: {note}\n")


def _note_past_max_seq(r: InferResult) -> None:
    """A context past the checkpoint's positions (max_position_embeddings) is priced as
    asked, but no engine serves it as is (vLLM refuses a max_model_len above it): say so."""
    tokens = r.context + (1 if r.phase == "decode" else 0)
    if tokens > r.spec.max_seq:
        sys.stderr.write(
            f"xpusim: note: --context {r.context} is past {r.spec.name}'s {r.spec.max_seq:,} "
            "positions (max_position_embeddings); priced as asked, though a serving stack "
            "refuses it without position scaling\n"
        )


def _refuse_serving_flags(args: argparse.Namespace) -> None:
    """Serving flags on a single step: the draft options need --draft, as in a serving
    run, and the pool options need --serve."""
    served = request_from_args(ServeRequest, args)
    speculative_options(served)
    if served.disaggregated:
        raise InputError("--prefill-system/--decode-system need --serve")
    if served.max_num_seqs is not None or served.max_batched_tokens is not None:
        raise InputError(
            "--max-num-seqs/--max-batched-tokens limit a serving run's scheduler: add "
            "--serve, or set the step's --batch and --context instead"
        )
    _refuse(args, SERVING_ONLY, "only a serving run (--serve) uses these: add --serve, or "
            "drop them for one prefill or decode step")


def _refuse(args: argparse.Namespace, dests: tuple[str, ...], why: str) -> None:
    given = ["--" + d.replace("_", "-") for d in dests if getattr(args, d, None) is not None]
    if given:
        raise InputError(f"{', '.join(given)}: {why}")


def _print_step(r: InferResult) -> None:
    step, memory, plan = r.step, r.memory, r.plan
    print(
        f"{r.model} {r.phase} on {plan.devices} x {r.device} (tp={plan.tp}, "
        + (f"pp={plan.pp}, " if plan.pp > 1 else "")
        + f"ep={plan.ep}, engine {r.engine}): batch {r.batch}, context {r.context}"
    )
    print(f"  step {fmt_si(step.time_s, 's')}  [{step.bound}-bound]  {r.tokens_per_s:.1f} tokens/s")
    print(
        f"  device {fmt_si(step.device_s, 's')} (compute {fmt_si(step.compute_s, 's')}, memory "
        f"{fmt_si(step.memory_s, 's')}, kernel overhead {fmt_si(step.overhead_s, 's')} over "
        f"{step.kernels} kernels), host {fmt_si(step.host_s, 's')}"
    )
    print(
        f"  weights read {fmt_bytes(step.weight_bytes_read)}, KV read "
        f"{fmt_bytes(step.kv_bytes_read)} per rank"
        + (" (summed over the stages)" if plan.pp > 1 else "")
        + (f", experts touched per layer {step.experts_loaded:.1f}" if r.spec.moe else "")
    )
    rows = [
        (k, fmt_si(v, "s"), f"{v / step.time_s:.1%}")
        for k, v in sorted(step.by_kind.items(), key=lambda kv: -kv[1])
    ]
    print(table(rows, ["kind", "time", "share"]))
    if r.pipeline is not None:
        _print_stages(r)
    if r.first_token is not None:
        _print_first_token(r)
    print(
        f"  memory per device{' (the stage that caches the fewest tokens)' if plan.pp > 1 else ''}: weights {fmt_bytes(memory.weights)}, activations "
        f"{fmt_bytes(memory.activations)}, KV cache {fmt_bytes(memory.kv_cache)} "
        # kv_tokens is the deployment's (sim.inference.kvcache), the bytes are one device's:
        # with EP's data-parallel attention the count is ep x what one device holds.
        f"({memory.kv_tokens:,.0f} tokens"
        + (f" over the {plan.devices} devices" if plan.devices > 1 else "")
        + f"); this batch needs {fmt_bytes(r.kv_needed_bytes)} of KV per device"
        + ("" if r.kv_needed_bytes <= memory.kv_cache else "  ** does not fit **")
    )


def _print_first_token(r: InferResult) -> None:
    """The two forwards of a first token sampled by a generation step (TurboMind 0.1)."""
    first = r.first_token
    assert first is not None
    context = first.context
    print(
        f"  first token from a generation step (engine {r.engine}): context decode of "
        f"{r.batch} x {first.prompt - 1} tokens "
        + (f"{fmt_si(context.time_s, 's')} (device only)" if context else "skipped")
        + f" + generation step at context {first.prompt - 1} "
        f"{fmt_si(first.generation.time_s, 's')} (host {fmt_si(first.generation.host_s, 's')})"
    )


def _print_stages(r: InferResult) -> None:
    """Each pipeline stage: its layers, device time, hand-off and memory."""
    pipe = r.pipeline
    assert pipe is not None
    sends = [*pipe.sends_s, 0.0]
    rows = [
        (
            f"{i}{' *' if i == pipe.bottleneck else ''}",
            f"{a}-{b - 1}",
            fmt_si(stage.device_s, "s"),
            fmt_si(sends[i], "s") if i < len(pipe.sends_s) else "-",
            fmt_bytes(memory.weights),
            f"{memory.kv_tokens:,.0f}",
        )
        for i, ((a, b), stage, memory) in enumerate(
            zip(pipe.layers, pipe.stages, r.stage_memory, strict=True)
        )
    ]
    print(table(rows, ["stage", "layers", "device", "send", "weights/device", "KV tokens"]))
    print(f"  * bottleneck stage {pipe.bottleneck}: step = sum of the stage times and sends")


def _print_serve(r: ServeResult) -> None:
    m = r.metrics
    print(
        f"serving {r.model} on {r.plan.devices} x {r.device} ("
        + (f"tp={r.plan.tp}, pp={r.plan.pp}, " if r.plan.pp > 1 else "") + f"{r.engine}): "
        f"{m['completed']}/{m['requests']} requests in {m['makespan_s']:.2f} s"
        + (f", SD with {r.draft} gamma={r.gamma} alpha~{r.alpha}" if r.draft else "")
    )
    print(
        f"  throughput {m['throughput_tokens_per_s']:.1f} output tokens/s "
        f"({m['total_tokens_per_s']:.1f} prompt + output tokens/s), "
        f"{m['throughput_requests_per_s']:.2f} requests/s; mean decode batch "
        f"{m['mean_decode_batch']:.1f}; {m['preemptions']} preemptions; KV capacity "
        f"{m['kv_capacity_tokens']:,.0f} tokens"
    )
    sched = m.get("scheduler")
    if sched:
        sizes = sched["cuda_graph_batch_sizes"]
        print(
            f"  scheduler: max_num_seqs {sched['max_num_seqs']:,}, max_batched_tokens "
            f"{sched['max_batched_tokens']:,}"
            + (f"; generation-only steps padded to the CUDA-graph batch sizes "
               f"{', '.join(map(str, sizes))}" if sizes else "")
        )
    rows = []
    for key, name in (("ttft_s", "TTFT"), ("tpot_s", "TPOT"), ("e2e_s", "latency")):
        q = m[key]
        rows.append([name] + [fmt_si(q[p], "s") for p in ("mean", "p50", "p90", "p99")])
    print(table(rows, ["metric", "mean", "p50", "p90", "p99"]))
