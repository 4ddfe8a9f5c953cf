"""Gap analysis: how the simulated Pangu Ultra MoE step moves under each unknown.

The paper reports 1.46 M tokens/s and 30.0% MFU on "6K" Ascend NPUs; the plan of
docs/training.md simulates faster. Nothing here is fitted to the paper. Each variant
changes one assumption or adds one cost the headline does not model, and the table
reports what the simulator then predicts (run ``python -m xpusim.sim.training.gap``):

* layout: an uneven pipeline split instead of no-op padding (``layer_split``);
* workload: sequence length 8K (same tokens per step), MoE routing skew (Zipf);
* kernel efficiency unknowns: grouped expert GEMMs, attention (fwd + bwd), all GEMMs
  slower than the uncalibrated roofline (``Sensitivity.slowdown``);
* host overhead: a fixed dispatch time per op the device waits for;
* memory: full recompute (what a plan that cannot fit selective recompute pays).

``python -m xpusim.sim.training.gap --ablations`` prints the table of optimisations turned off;
``--combined`` the plausibility check (several sensitivities at once, at 8K);
``--plot PATH`` also draws the table as bars (docs/img/train_pangu_gap.png).

The factors are sensitivities, not estimates: the paper publishes none of them.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path

from xpusim.hwprofiles.spec import System
from xpusim.sim.models.spec import ModelSpec
from xpusim.sim.parallel import ParallelPlan
from xpusim.sim.report import save_figure
from xpusim.sim.training.simulate import Sensitivity, TrainingOptions
from xpusim.sim.training.steady import simulate_training

# Reported figures (a check, never an input): Pangu Ultra MoE abstract (30.0% MFU) and
# secondary notes (1.46 M tokens/s) — /work/shared/reference/pangu_ultra_moe.md §5.
PAPER_TOKENS_PER_S = 1.46e6
PAPER_MFU = 0.30


@dataclass(frozen=True)
class Variant:
    name: str
    why: str
    plan: dict
    sensitivity: Sensitivity = Sensitivity()


def pangu_variants(plan: ParallelPlan) -> list[Variant]:
    """The one-at-a-time variants of the gap table (docs/training.md)."""
    split = [2] * (plan.pp * plan.vpp)
    split[plan.pp - 1] = 1  # last stage, first chunk: one layer (it also runs MTP + 2 heads)
    split[-1] = 1  # last virtual stage: the MTP module alone
    slow = Sensitivity
    return [
        Variant("headline", "assumptions of docs/training.md", {}),
        Variant(
            "uneven split", "layer_split: last stage 1 layer + MTP", {"layer_split": tuple(split)}
        ),
        Variant(
            "seq 8192, gbs 4608",
            "same tokens per step, longer attention",
            {"seq": 8192, "gbs": plan.gbs // 2},
        ),
        Variant(
            "routing zipf:0.2",
            "hottest EP rank per layer sets the pace",
            {"moe_routing": "zipf:0.2"},
        ),
        Variant("routing zipf:0.5", "", {"moe_routing": "zipf:0.5"}),
        Variant("routing zipf:1.0", "", {"moe_routing": "zipf:1.0"}),
        Variant(
            "expert GEMMs x1.25",
            "grouped GEMM below the large-GEMM curve",
            {},
            slow((("experts", 1.25),)),
        ),
        Variant("expert GEMMs x1.5", "", {}, slow((("experts", 1.5),))),
        Variant(
            "attention x1.5",
            "MLA FlashAttention fwd+bwd below the GEMM curve",
            {},
            slow((("attention", 1.5),)),
        ),
        Variant("attention x2", "", {}, slow((("attention", 2.0),))),
        Variant(
            "all GEMMs x1.24",
            "GEMMs at 0.75 of peak instead of 0.93",
            {},
            slow((("gemm", 0.93 / 0.75),)),
        ),
        Variant(
            "vector ops x2",
            "elementwise/norm/softmax/permute at half the modelled bandwidth",
            {},
            slow((("elementwise", 2.0), ("norm", 2.0), ("softmax", 2.0), ("memcpy", 2.0))),
        ),
        Variant("host 20 us/op", "dispatch-bound ops: +20 us each", {}, slow((), 20e-6)),
        Variant("host 50 us/op", "", {}, slow((), 50e-6)),
        Variant("recompute full", "if swap/recompute must free more memory", {"recompute": "full"}),
    ]


def pangu_combined(plan: ParallelPlan) -> list[Variant]:
    """The plausibility check of docs/training.md (gap analysis, 4): the middle rows of
    the sensitivity table applied together, at 8K. Chosen before running; not searched."""
    mid = Sensitivity(
        (
            ("gemm", 0.93 / 0.75),
            ("attention", 1.5),
            ("elementwise", 2.0),
            ("norm", 2.0),
            ("softmax", 2.0),
            ("memcpy", 2.0),
        ),
        20e-6,
    )
    at_8k = {"seq": 8192, "gbs": plan.gbs // 2}
    return [
        Variant("headline", "", {}),
        Variant("mid sensitivities, 8K", "", at_8k, mid),
        Variant("mid sensitivities, 8K, zipf:0.2", "", {**at_8k, "moe_routing": "zipf:0.2"}, mid),
    ]


def pangu_ablations(plan: ParallelPlan) -> list[Variant]:
    """Each optimisation of the headline turned off (or the alternative turned on)."""
    return [
        Variant("headline", "", {}),
        Variant(
            "no hierarchical EP",
            "flat all-to-all: top-k copies cross RoCE",
            {"hierarchical_ep": False},
        ),
        Variant("no EP overlap", "all-to-alls block the compute stream", {"overlap_ep": False}),
        Variant("neither", "", {"hierarchical_ep": False, "overlap_ep": False}),
        Variant("no DP overlap", "", {"overlap_dp": False}),
        Variant("TP comm overlap on", "", {"overlap_tp": True}),
        Variant("recompute none", "", {"recompute": "none"}),
        Variant("recompute full", "", {"recompute": "full"}),
        Variant("no TP-extend-EP", "", {"tp_extend_ep": False}),
        Variant("1F1B (VPP 1)", "", {"vpp": 1}),
        Variant("no sequence parallel", "", {"sequence_parallel": False}),
    ]


def run_variants(
    spec: ModelSpec, system: System, plan: ParallelPlan, variants: list[Variant]
) -> list[dict]:
    rows = []
    for v in variants:
        result = simulate_training(
            spec, system, replace(plan, **v.plan), TrainingOptions(sensitivity=v.sensitivity)
        )
        d = result.as_dict()
        rows.append(
            {
                "variant": v.name,
                "why": v.why,
                "step_time_s": d["step_time_s"],
                "tokens_per_s": d["tokens_per_s"],
                "tokens_per_s_per_device": d["tokens_per_s_per_device"],
                "mfu_by_peak": d["mfu_by_peak"],
                "mfu_conventions": d["mfu_conventions"],
                "bubble_fraction": d["bubble_fraction"],
                "exposed_comm_s": d["exposed_comm_s"],
                "memory_per_device_bytes": d["memory_per_device_bytes"],
                "oom": d["oom"],
            }
        )
    return rows


def markdown(rows: list[dict]) -> str:
    base = rows[0]["tokens_per_s"]
    lines = [
        "| variant | tokens/s | per NPU | vs headline | vs paper | MFU Cube | MFU 256 "
        "| bubble | exposed comm s | memory GiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        q = r["mfu_by_peak"].get("quoted")
        lines.append(
            f"| {r['variant']} | {r['tokens_per_s'] / 1e6:.2f} M | {r['tokens_per_s_per_device']:.0f} | "
            f"{r['tokens_per_s'] / base - 1:+.1%} | {r['tokens_per_s'] / PAPER_TOKENS_PER_S - 1:+.0%} | "
            f"{r['mfu_by_peak']['matrix']:.1%} | {'' if q is None else f'{q:.1%}'} | "
            f"{r['bubble_fraction']:.1%} | {r['exposed_comm_s']:.2f} | "
            f"{r['memory_per_device_bytes'] / 2**30:.1f}{' OOM' if r['oom'] else ''} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: str) -> None:
    """Horizontal bars of tokens/s per NPU for each variant, with the paper's figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["variant"] for r in rows][::-1]
    values = [r["tokens_per_s_per_device"] for r in rows][::-1]
    fig, ax = plt.subplots(figsize=(7.5, 0.32 * len(rows) + 1.6))
    ax.barh(names, values, color="#5b8bd0")
    ax.axvline(rows[0]["tokens_per_s_per_device"], color="#333", lw=1, label="simulated headline")
    paper = PAPER_TOKENS_PER_S / 6144
    ax.axvline(paper, color="#c0392b", lw=1.5, ls="--", label="paper: 1.46 M tokens/s on 6,144")
    ax.set_xlabel("tokens/s per NPU")
    ax.set_title("Pangu Ultra MoE: simulated throughput under each assumption")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)  # atomic: temp file, then rename
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """``python -m xpusim.sim.training.gap [--ablations | --combined] [--plot PNG] [VARIANT ...]``."""
    import argparse

    from xpusim.hwprofiles import load_system
    from xpusim.sim.models.hf_config import load_model
    from xpusim.sim.training.bench import PANGU_PLAN

    parser = argparse.ArgumentParser(
        prog="python -m xpusim.sim.training.gap",
        description="Pangu Ultra MoE on 6,144 NPUs: the headline next to one-assumption "
        "variants (default), the optimisation ablations, or the combined check.",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--ablations", action="store_true", help="turn each optimisation off")
    group.add_argument("--combined", action="store_true", help="the combined sensitivity check")
    parser.add_argument("--plot", nargs="?", const="out/train_pangu_gap.png", help="write a PNG")
    parser.add_argument("variants", nargs="*", help="only these variant names (after the headline)")
    args = parser.parse_args(argv)
    spec = load_model("pangu-ultra-moe")
    system = load_system("atlas-800t-a2", nodes=768)
    if args.ablations:
        variants = pangu_ablations(PANGU_PLAN)
    elif args.combined:
        variants = pangu_combined(PANGU_PLAN)
    else:
        variants = pangu_variants(PANGU_PLAN)
    if args.variants:
        variants = [variants[0]] + [v for v in variants[1:] if v.name in set(args.variants)]
    rows = run_variants(spec, system, PANGU_PLAN, variants)
    print(markdown(rows))
    if args.plot:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        plot(rows, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
