"""``xpusim model list|show``: presets, parameter counts, FLOPs per token, weight bytes."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from xpusim.sim.errors import InputError
from xpusim.sim.models.counting import forward_flops_breakdown, param_counts, weight_bytes
from xpusim.sim.models.hf_config import config_source, list_presets, load_model
from xpusim.sim.models.spec import ModelSpec
from xpusim.sim.report import emit_json, fmt_bytes, fmt_si, table

WEIGHT_DTYPES = ("bf16", "fp16", "fp8", "fp32")
BREAKDOWN_KEYS = (
    "embedding",
    "position_embedding",
    "embed_projection",
    "attention",
    "dense_ffn",
    "routed_experts",
    "shared_experts",
    "router",
    "norms",
    "lm_head",
)


def register(sub: argparse._SubParsersAction) -> None:
    model = sub.add_parser("model", help="model presets and specs: parameters, FLOPs, weights")
    model_sub = model.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    p = model_sub.add_parser("list", help="built-in presets with their parameter counts")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_list)
    p = model_sub.add_parser("show", help="one model: a preset name or a path to a HF config.json")
    p.add_argument("model", help="preset name (see 'xpusim model list') or path to config.json")
    p.add_argument("--seq", type=int, default=4096, help="sequence length for FLOPs (default 4096)")
    p.add_argument(
        "--causal",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="causal attention halves the score/PV FLOPs (default: causal)",
    )
    p.add_argument(
        "--include-mtp",
        action="store_true",
        help="count MTP modules in FLOPs and weight bytes (not in total params)",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_show)


def model_summary(
    spec: ModelSpec, seq_len: int, causal: bool = True, include_mtp: bool = False
) -> dict[str, Any]:
    """Everything ``model show`` reports, as plain data in SI units (FLOP, bytes)."""
    if seq_len <= 0:
        raise InputError(f"--seq must be > 0, got {seq_len}")
    counts = param_counts(spec)
    fwd = forward_flops_breakdown(spec, seq_len, causal, include_mtp)
    return {
        "name": spec.name,
        "family": spec.family,
        "total_params": counts.total,
        "total_params_with_mtp": counts.total_with_mtp,
        "activated_params": counts.activated,
        "activated_params_excl_embedding": counts.activated_excl_embedding,
        "breakdown": {
            key: getattr(counts, key)
            for key in (*BREAKDOWN_KEYS, "mtp", "activated_routed_experts")
        },
        "seq_len": seq_len,
        "causal": causal,
        "include_mtp": include_mtp,
        "flops_per_token_forward": fwd["total"],
        "flops_per_token_training": 3.0 * fwd["total"],
        "flops_forward_breakdown": {"matmul": fwd["matmul"], "attention": fwd["attention"]},
        "weight_bytes": {d: weight_bytes(spec, d, include_mtp) for d in WEIGHT_DTYPES},
        "architecture": dataclasses.asdict(spec),
    }


def fmt_params(count: float) -> str:
    """6.74e9 -> '6.74B', 3.3e8 -> '331M' (parameter counts, not bytes)."""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(count) >= scale:
            return f"{count / scale:.3g}{suffix}"
    return f"{count:.0f}"


def _share(part: int, total: int) -> str:
    return f"{100.0 * part / total:.2f}%" if total else "-"


def cmd_show(args: argparse.Namespace) -> int:
    spec = load_model(args.model)
    summary = model_summary(spec, args.seq, args.causal, args.include_mtp)
    source = config_source(args.model)
    if args.json:
        emit_json({**summary, "source": source})
        return 0
    print(f"model  {spec.name}  (model_type {spec.family})")
    if source:
        print(f"source {source}")
    print()
    for line in _architecture_lines(spec):
        print(f"  {line}")
    print()
    print(table(_parameter_rows(spec, summary), ["parameters", "count", "of total"]))
    print()
    _print_flops(args, summary)
    return 0



def _local_attention(spec: ModelSpec) -> str:
    """", sliding window W on n of L layers, sinks" for gpt-oss-style attention;
    ", chunked attention C on n of L layers" for Llama 4's."""
    local = [w for w in spec.layer_windows if w]
    chunked = [c for c in spec.layer_chunks if c]
    text = ""
    if local:
        text += f", sliding window {max(local)} on {len(local)} of {spec.layers} layers"
    if chunked:
        text += f", chunked attention {max(chunked)} on {len(chunked)} of {spec.layers} layers"
    return text + (", attention sinks" if spec.attention_sinks else "")

def _architecture_lines(spec) -> list[str]:
    arch = [
        f"hidden {spec.hidden}, layers {spec.layers}, vocab {spec.vocab}, max_seq {spec.max_seq}"
    ]
    if spec.mla:
        m = spec.mla
        arch.append(
            f"MLA: {spec.heads} heads, q_lora {m.q_lora_rank}, kv_lora {m.kv_lora_rank}, "
            f"qk_nope {m.qk_nope_head_dim}, qk_rope {m.qk_rope_head_dim}, v {m.v_head_dim}"
        )
    else:
        arch.append(
            f"attention: {spec.heads} heads, {spec.kv_heads} kv heads, head_dim {spec.head_dim}"
            f"{', qkv bias' if spec.qkv_bias else ''}{_local_attention(spec)}"
        )
    ffn_kind = "SwiGLU" if spec.gated_ffn else "2-matrix MLP"
    if spec.swiglu_limit:
        ffn_kind += f" clamped at {spec.swiglu_limit:g}"
    if spec.moe:
        e = spec.moe
        arch.append(
            f"MoE: {e.num_experts} routed experts top-{e.top_k} (ffn {e.expert_ffn}), "
            f"{e.shared_experts} shared (ffn {e.shared_ffn}), {spec.num_moe_layers} MoE layers, "
            f"{spec.layers - spec.num_moe_layers} dense (ffn {e.dense_ffn or spec.ffn}), "
            f"{e.scoring} scoring, {ffn_kind}"
        )
    else:
        arch.append(f"FFN: {ffn_kind}, intermediate {spec.ffn}")
    arch.append(
        f"{spec.norm}, tied embeddings: {spec.tie_embeddings}, MTP modules: {spec.mtp_layers}"
    )
    return arch


def _parameter_rows(spec, summary: dict) -> list[list[str]]:
    total = summary["total_params"]
    rows = [
        [key, f"{value:,}", _share(value, total)]
        for key, value in summary["breakdown"].items()
        if key in BREAKDOWN_KEYS and value
    ]
    rows.append(["total", f"{total:,}", "100.00%"])
    for label, key in (
        ("activated per token", "activated_params"),
        ("activated excl. embedding", "activated_params_excl_embedding"),
    ):
        rows.append([label, f"{summary[key]:,}", _share(summary[key], total)])
    if spec.mtp_layers:
        rows.append(["MTP modules (not in total)", f"{summary['breakdown']['mtp']:,}", "-"])
    return rows


def _print_flops(args: argparse.Namespace, summary: dict) -> None:
    mode = "causal" if args.causal else "full"
    fb = summary["flops_forward_breakdown"]
    print(
        f"FLOPs per token at seq {args.seq} ({mode} attention"
        f"{', MTP included' if args.include_mtp else ''}):"
    )
    print(
        f"  forward   {fmt_si(summary['flops_per_token_forward'], 'FLOP')}"
        f"  (matmul {fmt_si(fb['matmul'], 'FLOP')}, attention {fmt_si(fb['attention'], 'FLOP')})"
    )
    print(f"  training  {fmt_si(summary['flops_per_token_training'], 'FLOP')}  (3 x forward)")
    print()
    print(
        "weights: " + ", ".join(f"{d} {fmt_bytes(b)}" for d, b in summary["weight_bytes"].items())
    )


def cmd_list(args: argparse.Namespace) -> int:
    rows: list[dict[str, Any]] = []
    for name in list_presets():
        spec = load_model(name)
        counts = param_counts(spec)
        rows.append(
            {
                "name": name,
                "family": spec.family,
                "total_params": counts.total,
                "activated_params": counts.activated,
                "activated_params_excl_embedding": counts.activated_excl_embedding,
                "source": config_source(name),
            }
        )
    if args.json:
        emit_json({"presets": rows})
        return 0
    print(
        table(
            [
                [
                    r["name"],
                    r["family"],
                    fmt_params(r["total_params"]),
                    fmt_params(r["activated_params"]),
                    fmt_params(r["activated_params_excl_embedding"]),
                ]
                for r in rows
            ],
            ["preset", "model_type", "total", "activated", "act. excl. emb."],
        )
    )
    return 0
