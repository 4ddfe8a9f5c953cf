"""From a command's JSON output to the quantity a published row reports.

Each metric is a function ``(row args, payload) -> value`` in the row's unit. The
baseline (``xpusim.sim.validation.baseline``) builds a naive payload with the same keys, so
the model and the naive answer go through the same conversion.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from xpusim.sim.ir import dtype_bytes
from xpusim.sim.models.counting import param_counts
from xpusim.sim.models.hf_config import load_model
from xpusim.sim.units import parse_int_list

Payload = dict[str, Any]
Metric = Callable[[dict[str, Any], Payload], float]

# Units in which a smaller number means a faster run.
TIME_UNITS = ("s", "ms", "us", "µs")


def lower_is_faster(unit: str) -> bool:
    return unit in TIME_UNITS


def signed_error(predicted: float, measured: float, unit: str) -> float:
    """Relative error, positive when the prediction is faster than the measurement."""
    rel = (predicted - measured) / measured
    return -rel if lower_is_faster(unit) else rel


def gemm_flops(args: dict[str, Any]) -> float:
    """2 x rows x n x k: rows = batch x m, or the sum of ``group_rows`` (unequal groups)."""
    rows = args.get("group_rows", args.get("group-rows"))
    if rows is not None:
        total = sum(parse_int_list(rows, "group_rows") if isinstance(rows, str) else map(int, rows))
    else:
        total = int(args.get("batch", 1)) * int(args["m"])
    return 2.0 * total * int(args["n"]) * int(args["k"])


# The FlashAttention papers' count (FA2 §4.1, FA3 §4.1): 4·seq²·head_dim·heads·batch
# for the forward pass, halved when causal, backward 2.5x the forward.
PASS_FACTOR = {"fwd": 1.0, "bwd": 2.5, "fwd_bwd": 3.5}


def attention_paper_flops(args: dict[str, Any]) -> float:
    seq = int(args["seq"])
    kv_len = int(args.get("kv-len", seq))
    flops = 4.0 * int(args["batch"]) * int(args["heads"]) * seq * kv_len * int(args["head-dim"])
    if args.get("causal"):
        flops /= 2.0
    return flops * PASS_FACTOR[str(args.get("pass", "fwd"))]


def elementwise_bytes(args: dict[str, Any]) -> float:
    """Bytes a STREAM-style kernel moves: every input array read once, every output array
    written once (default one of each; a write-only fill has no input, a read-only kernel
    no output array)."""
    arrays = int(args.get("inputs", 1)) + int(args.get("outputs", 1))
    return float(args["numel"]) * dtype_bytes(str(args["dtype"])) * arrays


def _gpt_flops_per_step(args: dict[str, Any], coeff: float, vocab_div: float) -> float:
    """coeff·B·s·l·h²·(1 + s/6h + V/(vocab_div·l·h)): the Megatron papers' GPT count, whose
    coefficient is 24 x the passes over the layers (the LM head's 6·B·s·h·V either way)."""
    spec = load_model(str(args["model"]))
    b, s = float(args["gbs"]), float(args["seq"])
    layers, h, v = float(spec.layers), float(spec.hidden), float(spec.vocab)
    return coeff * b * s * layers * h * h * (1.0 + s / (6.0 * h) + v / (vocab_div * layers * h))


def megatron_flops_per_step(args: dict[str, Any]) -> float:
    """Narayanan et al. 2021 (arXiv 2104.04473) eq. 3, with full activation recompute
    (four passes): 96·B·s·l·h²·(1 + s/6h + V/16lh) FLOPs per iteration."""
    return _gpt_flops_per_step(args, 96.0, 16.0)


def korthikanti_flops_per_step(args: dict[str, Any]) -> float:
    """Korthikanti et al. 2022 (arXiv 2205.05198, "Reducing Activation Recomputation"),
    the model FLOPs behind its MFU (three passes, no recompute term):
    72·B·s·l·h²·(1 + s/6h + V/12lh) per iteration (the Megatron-LM README's MFU table uses
    it with 312 TFLOP/s per A100)."""
    return _gpt_flops_per_step(args, 72.0, 12.0)


def six_n_attention_flops_per_token(args: dict[str, Any]) -> float:
    """The FlashAttention-2 paper's training count (Dao 2023, Table 1):
    6·params + 12·layers·hidden·seqlen FLOPs per token, no recompute term."""
    spec = load_model(str(args["model"]))
    seq = float(args["seq"])
    return 6.0 * param_counts(spec).total + 12.0 * spec.layers * spec.hidden * seq


def op_row_flops(args: dict[str, Any], p: Payload) -> float:
    """The FLOPs the published figure counts: 2mnk for a GEMM, the FlashAttention papers'
    count for attention, else what the op itself counts."""
    kind = args["kind"]
    if kind == "gemm":
        return gemm_flops(args)
    if kind == "attention":
        return attention_paper_flops(args)
    return float(p["flops"])


def _op_tflops(args: dict[str, Any], p: Payload) -> float:
    return float(op_row_flops(args, p) / p["time_s"] / 1e12)


def _op_gbps(args: dict[str, Any], p: Payload) -> float:
    return float(elementwise_bytes(args) / p["time_s"] / 1e9)


def _ep_link_bytes_per_rank(args: dict[str, Any], p: Payload) -> float:
    # DeepEP's "bottleneck bandwidth": the bytes its benchmark scripts count per rank
    # (deepep_bytes_per_rank, sim/network/ep.py: (token, node) pairs incl. the own
    # node; tokens received incl. self; every low-latency copy) over the kernel time.
    # Other modes: bytes over the bottleneck link class per rank.
    if p.get("deepep_bytes_per_rank") is not None:
        return float(p["deepep_bytes_per_rank"])
    key = "inter_node_bytes" if int(p.get("nodes", 1)) > 1 else "intra_node_bytes"
    return float(p[key]) / int(p["ep"])


def _ep_dispatch_gbps(args: dict[str, Any], p: Payload) -> float:
    return float(_ep_link_bytes_per_rank(args, p) / p["dispatch_time_s"] / 1e9)


def _ep_combine_gbps(args: dict[str, Any], p: Payload) -> float:
    # DeepEP's combine messages can differ from its dispatch ones (sim/network/ep.py
    # EPConfig.message_bytes: the low-latency dispatch header is not sent back).
    if p.get("deepep_combine_bytes_per_rank") is not None:
        return float(p["deepep_combine_bytes_per_rank"] / p["combine_time_s"] / 1e9)
    return float(_ep_link_bytes_per_rank(args, p) / p["combine_time_s"] / 1e9)


def _train_tflops_megatron(args: dict[str, Any], p: Payload) -> float:
    return float(megatron_flops_per_step(args) / p["step_time_s"] / p["devices"] / 1e12)


def _train_tflops_korthikanti(args: dict[str, Any], p: Payload) -> float:
    return float(korthikanti_flops_per_step(args) / p["step_time_s"] / p["devices"] / 1e12)


def _train_tflops_6n_attn(args: dict[str, Any], p: Payload) -> float:
    flops = six_n_attention_flops_per_token(args) * p["tokens_per_step"]
    return float(flops / p["step_time_s"] / p["devices"] / 1e12)


def _infer_tokens_per_s_per_device(args: dict[str, Any], p: Payload) -> float:
    """New tokens of the step (a prefill's prompt tokens, a decode's one per request) per
    second per device: papers that report throughput "per NPU/GPU" of a large deployment."""
    return float(p["tokens"] / p["time_s"] / p["devices"])


def _sd_tokens_per_s_per_device(args: dict[str, Any], p: Payload) -> float:
    """Output tokens per second per target device of a speculative-decoding run at one
    batch size: batch x expected tokens per round / round time / (tp x ep). A decode
    throughput measured with MTP or a draft (e.g. CloudMatrix-Infer's DeepSeek-R1 rows)."""
    rows = p["rows"]
    if len(rows) != 1:
        raise ValueError(f"tokens_per_s_per_device needs one --batch, got {len(rows)} rows")
    row = rows[0]
    devices = int(p["tp"]) * int(p["ep"])
    return float(row["batch"] * row["expected_tokens"] / row["t_sd_round_s"] / devices)


METRICS: dict[tuple[str, str], Metric] = {
    ("op", "tflops"): _op_tflops,
    ("op", "gbps"): _op_gbps,
    ("op", "time_us"): lambda a, p: p["time_s"] * 1e6,
    ("collective", "busbw"): lambda a, p: p["bus_bandwidth"] / 1e9,
    ("collective", "algbw"): lambda a, p: p["algorithm_bandwidth"] / 1e9,
    ("collective", "time_us"): lambda a, p: p["time_s"] * 1e6,
    ("ep", "dispatch_gbps"): _ep_dispatch_gbps,
    ("ep", "combine_gbps"): _ep_combine_gbps,
    ("ep", "dispatch_us"): lambda a, p: p["dispatch_time_s"] * 1e6,
    ("ep", "combine_us"): lambda a, p: p["combine_time_s"] * 1e6,
    ("infer", "tokens_per_s"): lambda a, p: p["tokens_per_s"],
    ("infer", "ttft_ms"): lambda a, p: p["time_s"] * 1e3,
    ("infer", "step_ms"): lambda a, p: p["time_s"] * 1e3,
    ("infer", "output_tokens_per_s"): lambda a, p: p["throughput_tokens_per_s"],
    # Prompt + output tokens served / makespan (benchmarks that report "total tokens/s").
    ("infer", "total_tokens_per_s"): lambda a, p: p["total_tokens_per_s"],
    ("infer", "tokens_per_s_per_device"): _infer_tokens_per_s_per_device,
    ("sd", "peak_speedup"): lambda a, p: p["peak"]["speedup"],
    ("sd", "tokens_per_s_per_device"): _sd_tokens_per_s_per_device,
    ("train", "tokens_per_s_per_device"): lambda a, p: p["tokens_per_s_per_device"],
    ("train", "tflops_megatron"): _train_tflops_megatron,
    ("train", "tflops_6n_attn"): _train_tflops_6n_attn,
    ("train", "tflops_korthikanti"): _train_tflops_korthikanti,
}


def metric_for(command: str, metric: str) -> Metric | None:
    return METRICS.get((command, metric))
