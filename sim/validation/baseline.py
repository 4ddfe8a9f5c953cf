"""The naive answer to every row: peak FLOP/s and peak bandwidth, nothing else.

No efficiency, no launch or host overhead, no latency, no pipeline bubble: the time
of a piece of work is max(FLOPs / peak FLOP/s, bytes / peak bandwidth), and a
collective runs at the raw link bandwidth. The baseline returns a payload with the
keys the row's metric reads, so model and baseline share one conversion
(``xpusim.sim.validation.metrics``); the model's skill is how much closer it lands.
"""

from __future__ import annotations

import math
from typing import Any

from xpusim.hwprofiles import load_device, load_system
from xpusim.hwprofiles.spec import System
from xpusim.sim.models.counting import flops_per_token, model_flops_per_token, weight_bytes
from xpusim.sim.models.hf_config import load_model
from xpusim.sim.models.spec import ModelSpec
from xpusim.sim.validation.metrics import elementwise_bytes, op_row_flops

Payload = dict[str, Any]

BUS_FACTOR_KINDS = ("all-gather", "reduce-scatter", "all-to-all")


def bus_factor(kind: str, n: int) -> float:
    """nccl-tests' busbw / algbw ratio for a collective of ``n`` ranks."""
    if kind == "all-reduce":
        return 2.0 * (n - 1) / n
    if kind in BUS_FACTOR_KINDS:
        return (n - 1) / n
    return 1.0


def device_link_bandwidth(system: System, nodes: int, ranks: int) -> float:
    """Peak one-way bandwidth a device can push: its scale-up port(s) (in a full mesh,
    the links to the other ranks of the group), or its share of the node's NICs when the
    group spans nodes (whichever is smaller)."""
    intra = system.intra_link.bandwidth
    if system.intra_topology == "full_mesh":
        peers = min(ranks, system.devices_per_node) - 1
        intra *= max(1, min(system.links_per_device, peers))
    if nodes <= 1:
        return intra
    nic = system.nic.bandwidth * system.nics_per_node / system.devices_per_node
    return min(intra, nic)


def naive_payload(command: str, args: dict[str, Any], payload: Payload) -> Payload:
    builder = _BUILDERS[command]
    return builder(args, payload)


def _op(args: dict[str, Any], p: Payload) -> Payload:
    device = load_device(str(args["device"]))
    kind = args["kind"]
    dtype = str(args.get("dtype", p.get("dtype", "bf16")))
    if kind == "elementwise":
        return {**p, "time_s": elementwise_bytes(args) / device.hbm_bandwidth}
    flops = op_row_flops(args, p)
    peak = device.peak_for("matrix", dtype)
    # The roofline's bytes (attention: bytes.roofline, the op's Q, K, V, O; bytes.hbm is the
    # priced implementation's traffic, standard attention's score matrix included).
    nbytes = p.get("bytes", {})
    hbm = float(nbytes.get("roofline", nbytes.get("hbm", 0.0)))
    return {**p, "time_s": max(flops / peak, hbm / device.hbm_bandwidth)}


def _collective(args: dict[str, Any], p: Payload) -> Payload:
    system = load_system(str(args["system"]))
    ranks = int(p["ranks"])
    busbw = device_link_bandwidth(system, int(p.get("nodes", 1)), ranks)
    algbw = busbw / bus_factor(str(args["kind"]), ranks) if ranks > 1 else busbw
    return {**p, "bus_bandwidth": busbw, "algorithm_bandwidth": algbw,
            "time_s": float(p["bytes"]) / algbw}


def _ep(args: dict[str, Any], p: Payload) -> Payload:
    system = load_system(str(args["system"]))
    nodes = int(p.get("nodes", 1))
    key = "inter_node_bytes" if nodes > 1 else "intra_node_bytes"
    # A pure-RDMA low-latency run inside one node puts its bytes on the NICs.
    per_rank = float(p[key] or p["inter_node_bytes"]) / int(p["ep"])
    bw = device_link_bandwidth(system, nodes, int(p["ep"]))
    t = per_rank / bw
    return {**p, "dispatch_time_s": t, "combine_time_s": t}


def _infer(args: dict[str, Any], p: Payload) -> Payload:
    spec = load_model(str(args["model"]))
    system = load_system(str(args["system"]))
    device = system.device
    dtype = str(args.get("dtype", "bf16"))
    devices = int(p.get("devices") or p.get("tp", 1) * p.get("ep", 1))
    peak = device.peak_for("matrix", dtype) * devices
    bw = device.hbm_bandwidth * devices
    if args.get("serve"):
        return _serve(args, p, spec, peak, bw)
    batch = int(args.get("batch", 1))
    context = float(args.get("context", 1024))
    if args.get("phase") == "prefill":
        flops = flops_per_token(spec, context) * batch * context
        return {**p, "time_s": flops / peak}
    flops = flops_per_token(spec, context) * batch
    moved = (float(p["weight_bytes_read"]) + float(p["kv_bytes_read"])) * devices
    t = max(flops / peak, moved / bw)
    return {**p, "time_s": t, "tokens_per_s": batch / t}


def _serve(args: dict[str, Any], p: Payload, spec: ModelSpec, peak: float, bw: float) -> Payload:
    """All requests present at once (offline throughput runs): prefill every prompt at
    peak FLOP/s, then one weight read per decode step for each wave of requests that
    fits the KV cache."""
    requests = int(p["completed"])
    prompt, output = float(args["prompt-len"]), float(args["output-len"])
    fit = max(1, math.floor(float(p["kv_capacity_tokens"]) / (prompt + output)))
    waves = math.ceil(requests / fit)
    prefill = flops_per_token(spec, prompt) * prompt * requests / peak
    weights = weight_bytes(spec, str(args.get("dtype", "bf16")))
    decode_flops = flops_per_token(spec, prompt + output / 2) * output * requests / peak
    decode = max(decode_flops, waves * output * weights / bw)
    makespan = prefill + decode
    return {
        **p,
        "makespan_s": makespan,
        "throughput_tokens_per_s": requests * output / makespan,
        "total_tokens_per_s": requests * (prompt + output) / makespan,
    }


def _sd(args: dict[str, Any], p: Payload) -> Payload:
    # Naive speculative decoding: verifying gamma+1 tokens costs one plain step and
    # drafting is free, so the speedup is the expected tokens per round.
    # A round then takes one plain step (t_sd_round = t_ar).
    rows = [{**r, "t_sd_round_s": r["t_ar_s"]} for r in p["rows"]]
    return {**p, "rows": rows, "peak": {"batch": None, "speedup": float(p["expected_tokens"])}}


def _train(args: dict[str, Any], p: Payload) -> Payload:
    spec = load_model(str(args["model"]))
    system = load_system(str(args["system"]))
    dtype = str(args.get("dtype", "bf16"))
    peak = system.device.peak_for("matrix", dtype)
    seq = float(p.get("plan", {}).get("seq", args.get("seq", 4096)))
    tokens = float(p["tokens_per_step"])
    devices = int(p["devices"])
    step = model_flops_per_token(spec, seq) * tokens / (peak * devices)
    return {**p, "step_time_s": step, "tokens_per_s_per_device": tokens / step / devices}


_BUILDERS = {
    "op": _op,
    "collective": _collective,
    "ep": _ep,
    "infer": _infer,
    "sd": _sd,
    "train": _train,
}
