"""Training lowering: FLOPs and parameter accounting, memory, symmetry, OOM verdict, CLI."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from xpusim.hwprofiles import load_system
from xpusim.sim.cli.main import main
from xpusim.sim.models.counting import forward_flops_breakdown, param_counts
from xpusim.sim.models.spec import MLASpec, ModelSpec, MoESpec
from xpusim.sim.parallel import BROAD_SELECTIVE, ParallelPlan
from xpusim.sim.training import TrainingOptions, estimate_memory, simulate_training
from xpusim.sim.training import layers as L
from xpusim.sim.training.routing import hot_factors, rank_loads

DENSE = ModelSpec(
    "tiny-dense",
    "llama",
    hidden=1024,
    layers=4,
    heads=16,
    kv_heads=4,
    head_dim=64,
    ffn=2816,
    vocab=4096,
)
MOE = ModelSpec(
    "tiny-moe",
    "deepseek",
    hidden=1024,
    layers=8,
    heads=16,
    kv_heads=16,
    head_dim=96,
    ffn=4096,
    vocab=32000,
    moe=MoESpec(
        num_experts=16,
        top_k=4,
        expert_ffn=512,
        shared_experts=1,
        shared_ffn=512,
        first_dense_layers=1,
    ),
    mla=MLASpec(256, 128, 64, 32, 64),
    mtp_layers=1,
)


@pytest.fixture(scope="module")
def node():
    return load_system("atlas-800t-a2", nodes=1)


def _flops(result, phase: str, kind: str) -> float:
    return result.flops_by_phase.get(f"{phase}:{kind}", 0.0)


@pytest.mark.parametrize("recompute", ["none", "full"])
def test_training_flops_are_three_forwards_plus_recompute(node, recompute):
    plan = ParallelPlan(tp=1, pp=1, dp=8, mbs=1, gbs=8, seq=1024, recompute=recompute)
    r = simulate_training(DENSE, node, plan)
    tokens = plan.gbs * plan.seq
    fwd = forward_flops_breakdown(DENSE, plan.seq)
    # Forward GEMMs = the model's weight matmuls (counting module); attention within 1/seq
    # (the lowering counts (s+1)/2 causal keys per query, the formula s/2).
    assert _flops(r, "fwd", "gemm") == pytest.approx(fwd["matmul"] * tokens, rel=1e-9)
    assert _flops(r, "fwd", "attention") == pytest.approx(fwd["attention"] * tokens, rel=2e-3)
    # Backward: dgrad + wgrad = 2x each GEMM; attention backward 2.5x (FlashAttention-2).
    assert _flops(r, "bwd", "gemm") == pytest.approx(2 * _flops(r, "fwd", "gemm"), rel=1e-12)
    assert _flops(r, "bwd", "attention") == pytest.approx(2.5 * _flops(r, "fwd", "attention"))
    head = 2.0 * DENSE.vocab * DENSE.hidden * tokens  # the output head is not recomputed
    expected_recompute = _flops(r, "fwd", "gemm") - head if recompute == "full" else 0.0
    assert _flops(r, "recompute", "gemm") == pytest.approx(expected_recompute, rel=1e-12)


def test_weights_read_off_gemms_match_param_counts(node):
    plan = ParallelPlan(tp=2, pp=2, dp=2, mbs=1, gbs=4, seq=512, zero=0)
    mems = estimate_memory(DENSE, node, plan)
    counts = param_counts(DENSE)
    # Weights are bf16 and split over TP; norms (left out by the lowering) are tiny.
    per_tp_rank = sum(m.weights for m in mems)  # one rank per stage: one TP slice
    expected = (counts.total - counts.norms) * 2 / plan.tp
    assert per_tp_rank == pytest.approx(expected, rel=1e-3)


def test_memory_hand_computed_for_zero_stages(node):
    plan = ParallelPlan(tp=1, pp=1, dp=8, mbs=1, gbs=8, seq=512)
    counts = param_counts(DENSE)
    params = counts.total - counts.norms
    by_zero = {z: estimate_memory(DENSE, node, replace(plan, zero=z))[0] for z in (0, 1, 2, 3)}
    assert by_zero[0].weights == pytest.approx(2 * params)
    assert by_zero[0].gradients == pytest.approx(4 * params)
    assert by_zero[0].optimizer == pytest.approx(12 * params)
    assert by_zero[1].optimizer == pytest.approx(12 * params / 8)
    assert by_zero[2].gradients == pytest.approx(4 * params / 8)
    assert by_zero[3].weights == pytest.approx(2 * params / 8)
    totals = [by_zero[z].total for z in (0, 1, 2, 3)]
    assert totals == sorted(totals, reverse=True)


def test_recompute_lowers_activation_memory(node):
    plan = ParallelPlan(tp=2, pp=2, dp=2, mbs=2, gbs=16, seq=1024, sequence_parallel=True)
    acts = [
        estimate_memory(MOE, node, replace(plan, recompute=p, recompute_modules=BROAD_SELECTIVE))[0].activations
        for p in ("none", "selective", "full")
    ]
    assert acts[0] > acts[1] > acts[2] > 0


def test_sequence_parallel_divides_saved_inputs(node):
    plan = ParallelPlan(tp=4, pp=1, dp=2, mbs=1, gbs=2, seq=1024, recompute="full")
    full_no_sp = estimate_memory(DENSE, node, plan)[0].activations
    full_sp = estimate_memory(DENSE, node, replace(plan, sequence_parallel=True))[0].activations
    assert full_sp == pytest.approx(full_no_sp / 4)  # checkpointed layer inputs are sharded


def test_backward_mirrors_collectives():
    items = [
        L.Comm("attn_sp_gather", "all-gather", 10.0, "tp"),
        L.Comm("attn_tp_reduce", "reduce-scatter", 10.0, "tp"),
        L.Comm("moe_dispatch", "all-to-all", 5.0, "ep"),
    ]
    back = L.backward_items(items, sequence_parallel=True)
    kinds = [(c.name, str(c.kind)) for c in back]
    assert kinds == [
        ("moe_dispatch_bwd", "all-to-all"),
        ("attn_tp_reduce_bwd", "all-gather"),
        ("attn_sp_gather_bwd", "reduce-scatter"),
        ("attn_sp_gather_regather", "all-gather"),
    ]


def test_routing_imbalance_is_seeded_and_mean_one():
    a = rank_loads(MOE, "zipf:1.2", 4, layer=3, seed=7)
    b = rank_loads(MOE, "zipf:1.2", 4, layer=3, seed=7)
    assert (a == b).all() and a.mean() == pytest.approx(1.0)
    assert max(hot_factors(MOE, "zipf:1.2", 4, seed=7).values()) > 1.0
    assert set(hot_factors(MOE, "uniform", 4, seed=7).values()) == {1.0}
    hist = "hist:" + ",".join(["3"] * 4 + ["1"] * 12)
    assert rank_loads(MOE, hist, 4, 1, 0)[0] == pytest.approx(12 / 24 * 4)


@pytest.mark.parametrize("routing", ["uniform", "zipf:1.2"])
@pytest.mark.parametrize(
    "extra", [{}, {"vpp": 1, "overlap_ep": False}, {"hierarchical_ep": False, "zero": 3}]
)
def test_reduced_agrees_with_full_ranks(routing, extra):
    """One representative per stage vs all 32 ranks of 4 nodes: within 1%."""
    system = load_system("atlas-800t-a2", nodes=4)
    fields = dict(
        tp=2,
        pp=2,
        vpp=2,
        ep=2,
        mbs=1,
        gbs=16,
        seq=1024,
        sequence_parallel=True,
        moe_routing=routing,
    )
    plan = ParallelPlan(**{**fields, **extra})
    reduced = simulate_training(MOE, system, plan)
    full = simulate_training(MOE, system, plan, TrainingOptions(full_ranks=True))
    assert full.simulated_ranks == 32 and reduced.simulated_ranks == 2
    assert full.step_time_s == pytest.approx(reduced.step_time_s, rel=0.01)
    # Memory: the representative is hot in every layer at once (the busiest EP rank of
    # each layer), a conservative bound on any real rank, which is hot in only some.
    assert full.peak_memory.total <= reduced.peak_memory.total * (1 + 1e-12)
    assert full.peak_memory.total == pytest.approx(reduced.peak_memory.total, rel=0.03)


def test_imbalance_slows_the_step():
    system = load_system("atlas-800t-a2", nodes=4)
    plan = ParallelPlan(tp=2, pp=2, ep=2, mbs=2, gbs=16, seq=1024, sequence_parallel=True)
    even = simulate_training(MOE, system, plan)
    skewed = simulate_training(MOE, system, replace(plan, moe_routing="zipf:1.5"))
    assert skewed.step_time_s > even.step_time_s


def test_pangu_tp1_pp1_on_8_npus_is_oom(capsys):
    code = main(
        [
            "train",
            "--model",
            "pangu-ultra-moe",
            "--system",
            "atlas-800t-a2",
            "--nodes",
            "1",
            "--tp",
            "1",
            "--pp",
            "1",
            "--quiet",
        ]
    )
    assert code == 3
    err = capsys.readouterr().err
    assert "out of memory" in err and "weights" in err and "optimizer" in err


def test_oom_json_has_breakdown(capsys):
    code = main(
        [
            "train",
            "--model",
            "pangu-ultra-moe",
            "--nodes",
            "1",
            "--tp",
            "1",
            "--pp",
            "1",
            "--recompute",
            "full",
            "--json",
            "--quiet",
        ]
    )
    assert code == 3
    payload = json.loads(capsys.readouterr().out)
    assert payload["oom"] is True
    assert payload["memory"]["weights_bytes"] > payload["memory"]["capacity_bytes"]


def test_cli_json_keys(capsys, tmp_path):
    trace = tmp_path / "trace.json"
    code = main(
        [
            "train",
            "--model",
            "llama-2-7b",
            "--nodes",
            "1",
            "--tp",
            "4",
            "--pp",
            "2",
            "--mbs",
            "1",
            "--gbs",
            "8",
            "--seq",
            "1024",
            "--json",
            "--quiet",
            "--trace",
            str(trace),
        ]
    )
    assert code == 0
    d = json.loads(capsys.readouterr().out)
    for key in (
        "step_time_s",
        "mfu",
        "tokens_per_s",
        "memory_per_device_bytes",
        "oom",
        "bubble_fraction",
        "exposed_comm_s",
        "mfu_by_peak",
        "breakdown_s",
    ):
        assert key in d
    # Cube peak, the marketing headline and the 256 TFLOP/s Huawei quotes (Pangu Pro MoE)
    assert set(d["mfu_by_peak"]) == {"matrix", "marketing", "quoted"}
    assert d["mfu_by_peak"]["marketing"] < d["mfu_by_peak"]["matrix"]
    assert d["mfu_by_peak"]["quoted"] == pytest.approx(
        d["mfu_by_peak"]["matrix"] * 353.894 / 256.0
    )
    assert d["tokens_per_s"] == pytest.approx(8 * 1024 / d["step_time_s"])
    assert json.loads(trace.read_text())["traceEvents"]


def test_cli_plan_file(capsys, tmp_path):
    plan = tmp_path / "plan.toml"
    plan.write_text(
        'model = "llama-2-7b"\nsystem = "atlas-800t-a2"\nnodes = 1\n'
        '[plan]\ntp = 8\nmbs = 1\ngbs = 2\nseq = 512\nrecompute = "full"\n'
    )
    assert main(["train", "--plan", str(plan), "--json", "--quiet"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["plan"]["tp"] == 8 and d["plan"]["recompute"] == "full"
    assert d["plan"]["sequence_parallel"] is True  # default with TP > 1


@pytest.mark.slow
def test_pangu_headline_and_ablations():
    """The Pangu plan runs, fits, and turning an optimisation off costs throughput."""
    from xpusim.sim.models.hf_config import load_model
    from xpusim.sim.training.bench import PANGU_PLAN

    spec = load_model("pangu-ultra-moe")
    system = load_system("atlas-800t-a2", nodes=768)
    base = simulate_training(spec, system, PANGU_PLAN)
    assert not base.oom and 0.1 < base.mfu < 0.6
    assert base.mfu_by_peak["marketing"] < base.mfu
    no_overlap = simulate_training(spec, system, replace(PANGU_PLAN, overlap_ep=False))
    assert no_overlap.tokens_per_s < base.tokens_per_s
    flat = simulate_training(spec, system, replace(PANGU_PLAN, hierarchical_ep=False))
    assert flat.tokens_per_s < base.tokens_per_s


@pytest.mark.parametrize("pp, vpp, gbs", [(2, 1, 4), (2, 2, 4), (2, 2, 8), (4, 2, 8), (4, 1, 4)])
def test_merged_overlap_never_deadlocks(pp, vpp, gbs):
    """Adaptive pipe overlap pairs only steady-state F/B units; short pipelines must still run."""
    system = load_system("atlas-800t-a2", nodes=1)
    plan = ParallelPlan(
        tp=2, pp=pp, vpp=vpp, ep=8 // (2 * pp), mbs=1, gbs=gbs, seq=512, sequence_parallel=True
    )
    merged = simulate_training(MOE, system, plan)
    plain = simulate_training(MOE, system, replace(plan, overlap_ep=False))
    assert merged.step_time_s > 0 and plain.step_time_s > 0


def test_context_parallel_splits_attention_work(node):
    """CP=2: each rank holds half the queries and gathers K/V; total attention work is kept."""
    base = ParallelPlan(tp=1, pp=1, dp=8, mbs=1, gbs=8, seq=2048, zero=1)
    one = simulate_training(DENSE, node, base)
    two = simulate_training(DENSE, node, replace(base, cp=2, dp=4, gbs=4))
    # half the sequences per step with cp=2 (dp 4): compare per sequence
    per_seq_1 = _flops(one, "fwd", "attention") / 8
    per_seq_2 = _flops(two, "fwd", "attention") / 4
    assert per_seq_2 == pytest.approx(per_seq_1, rel=1e-3)
    assert two.breakdown()["comm_cp"] > 0


def test_mfu_conventions_are_the_same_run_counted_differently(node):
    """Each (FLOPs-per-token, peak) pair is that convention's FLOPs x tokens/s / peak."""
    plan = ParallelPlan(tp=2, pp=2, ep=2, dp=2, mbs=1, gbs=4, seq=1024, sequence_parallel=True)
    r = simulate_training(MOE, node, plan)
    d = r.as_dict()
    conv = d["flops_per_token_conventions"]
    assert conv["causal"] == pytest.approx(d["model_flops_per_token"])
    assert conv["causal"] < conv["full_attention"] and conv["causal"] < conv["causal+mtp"]
    assert conv["full_attention+mtp"] == max(conv.values())
    # full attention adds exactly the causal attention FLOPs again (s/2 -> s keys)
    attn = forward_flops_breakdown(MOE, 1024, True)["attention"]
    assert conv["full_attention"] - conv["causal"] == pytest.approx(3 * attn)
    per_device = d["tokens_per_s"] / d["devices"]
    for name, f in conv.items():
        for peak_name, peak in d["peak_flops"].items():
            assert d["mfu_conventions"][name][peak_name] == pytest.approx(f * per_device / peak)
    assert d["mfu_conventions"]["causal"]["matrix"] == pytest.approx(d["mfu"])


def test_layer_split_moves_layers_between_stages(node):
    """An uneven split changes which slots each chunk runs, and the stage work follows."""
    plan = ParallelPlan(tp=2, pp=2, ep=2, dp=2, mbs=1, gbs=4, seq=512, sequence_parallel=True)
    even = simulate_training(MOE, node, plan)  # 8 layers + 1 MTP + 1 no-op = 5 + 5
    light_last = simulate_training(MOE, node, replace(plan, layer_split=(6, 3)))
    w_even = [s.work_s for s in even.stages]
    w_split = [s.work_s for s in light_last.stages]
    assert w_split[0] > w_even[0] and w_split[1] < w_even[1]
    # same model work in total: only the placement changed
    assert sum(light_last.flops_by_phase.values()) == pytest.approx(
        sum(even.flops_by_phase.values()), rel=1e-9
    )


def test_sensitivity_slowdown_scales_only_its_ops(node):
    """A 2x attention slowdown adds exactly the attention time once more to the busy time."""
    from xpusim.sim.training.simulate import Sensitivity

    plan = ParallelPlan(tp=1, pp=1, dp=8, mbs=1, gbs=8, seq=1024)
    base = simulate_training(DENSE, node, plan)
    slow = simulate_training(
        DENSE, node, plan, TrainingOptions(sensitivity=Sensitivity((("attention", 2.0),)))
    )
    attn = sum(t for k, t in base.compute_by_kind_s.items() if k.endswith(":attention"))
    work = base.stages[0].work_s
    assert slow.stages[0].work_s == pytest.approx(work + attn, rel=1e-6)
    assert slow.step_time_s > base.step_time_s
    # the FLOPs (model work) do not change: only time does
    assert slow.flops_by_phase == base.flops_by_phase


def test_cli_layer_split_and_errors(capsys):
    args = ["train", "--model", "llama-2-7b", "--nodes", "1", "--tp", "4", "--pp", "2"]
    args += ["--mbs", "1", "--gbs", "2", "--seq", "256", "--json", "--quiet"]
    assert main(args + ["--layer-split", "17,15"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["plan"]["layer_split"] == [17, 15]
    assert main(args + ["--layer-split", "16,15"]) == 2
    assert "sums to 31" in capsys.readouterr().err


def test_shared_embedding_grads_all_reduced_between_first_and_last_stage(node):
    """MTP reuses the input embedding on the last stage: one all-reduce of its gradient per step
    between the first and last pipeline stage (Megatron's embedding group), none without MTP."""
    from xpusim.sim.ir import CollectiveKind
    from xpusim.sim.network import cost_collective

    plan = ParallelPlan(tp=2, pp=2, ep=2, dp=2, mbs=1, gbs=4, seq=512, sequence_parallel=True)
    r = simulate_training(MOE, node, plan, TrainingOptions(exact=True))  # records kept
    hits = [x for x in r.sim.records if x.name == "dp.embed_grad"]
    assert sorted(x.rank for x in hits) == sorted(s.rank for s in r.stages)
    group = tuple(sorted(s.rank for s in r.stages))
    expected = cost_collective(
        node, CollectiveKind.ALL_REDUCE, group, MOE.vocab / 2 * MOE.hidden * 4
    ).time_s
    assert hits[0].end - hits[0].start == pytest.approx(expected, rel=1e-6)
    no_mtp = simulate_training(replace(MOE, mtp_layers=0), node, plan, TrainingOptions(exact=True))
    assert not [x for x in no_mtp.sim.records if x.name == "dp.embed_grad"]


@pytest.mark.slow
def test_pangu_gap_sensitivities_move_the_right_way():
    """Every added cost lowers the Pangu throughput; the uneven split does not."""
    from xpusim.sim.models.hf_config import load_model
    from xpusim.sim.training.bench import PANGU_PLAN
    from xpusim.sim.training.gap import pangu_variants, run_variants

    spec = load_model("pangu-ultra-moe")
    system = load_system("atlas-800t-a2", nodes=768)
    wanted = {"headline", "uneven split", "routing zipf:0.2", "attention x1.5", "host 20 us/op"}
    variants = [v for v in pangu_variants(PANGU_PLAN) if v.name in wanted]
    rows = {r["variant"]: r for r in run_variants(spec, system, PANGU_PLAN, variants)}
    base = rows["headline"]["tokens_per_s"]
    assert rows["uneven split"]["tokens_per_s"] >= base
    for name in ("routing zipf:0.2", "attention x1.5", "host 20 us/op"):
        assert rows[name]["tokens_per_s"] < base
    assert (
        rows["headline"]["mfu_by_peak"]["quoted"] > rows["headline"]["mfu_by_peak"]["matrix"]
    )
