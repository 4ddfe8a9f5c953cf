"""MoE parallel folding (ParallelPlan.moe_fold): expert groups over TP x CP x DP in
Megatron-Core's order, the old EP-out-of-DP groups unchanged, the refusals.

Expected ranks are worked out by hand from Megatron-Core's ``initialize_model_parallel``
(two RankGenerators over order tp-cp-ep-dp-pp: the attention's with ep 1, the experts'
with cp 1, etp and ep, and edp = world / (etp * ep * pp)), not from the code under test.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from xpusim.sim.errors import InputError
from xpusim.sim.models.spec import ModelSpec, MoESpec
from xpusim.sim.parallel import Layout, ParallelPlan, resolve_plan, validate_plan
from xpusim.sim.training.chunks import expert_group, rank_groups
from xpusim.sim.training.memory.analytical import _ep_spans_nodes

# Mixtral-like: 8 experts, top-2 (8 heads so that tp 2 and 4 split them).
MOE8 = ModelSpec(
    "tiny-mixtral", "llama", hidden=512, layers=8, heads=8, kv_heads=8, head_dim=64,
    ffn=1024, vocab=1000, moe=MoESpec(num_experts=8, top_k=2, expert_ffn=1024),
)


def _groups(plan: ParallelPlan, rank: int) -> dict[str, tuple[int, ...]]:
    return rank_groups(plan, Layout(plan), rank)


def test_folded_ep8_is_tp2_by_4_cp_ranks_in_one_node():
    # Megatron EP 8, ETP 1 with TP 2 (the simulator's TP-extend-EP: ep 4 x tp 2), CP 4,
    # DP 2, PP 2: 32 ranks, 16 per stage. Experts' generator: etp 1, ep 8,
    # edp = 32 / (1 * 8 * 2) = 2; a stage's rank is e + 8 d, stage 1 adds 16.
    plan = resolve_plan(ParallelPlan(tp=2, cp=4, ep=4, dp=2, pp=2, moe_fold=True), 32)
    assert [_groups(plan, r)["ep"] for r in (0, 7, 8, 21)] == [
        tuple(range(0, 8)), tuple(range(0, 8)), tuple(range(8, 16)), tuple(range(16, 24))
    ]
    assert _groups(plan, 0)["dp_expert"] == (0, 8)  # EDP 2
    assert _groups(plan, 21)["dp_expert"] == (21, 29)
    # The attention keeps Megatron's decoder groups: TP (0,1), CP stride 2, DP x CP 8 ranks.
    g = _groups(plan, 0)
    assert g["tp"] == (0, 1) and g["cp"] == (0, 2, 4, 6)
    assert g["dp_dense"] == (0, 2, 4, 6, 8, 10, 12, 14)
    assert g["embed"] == (0, 16)
    # Hierarchical EP pieces: the TP pair inside, one rank of each pair across.
    assert g["ep_intra"] == (0, 1) and g["ep_inter"] == (0, 2, 4, 6)
    assert plan.edp == 2


def test_folded_group_stays_on_one_8_gpu_node():
    per_node = 8  # DGX-B200: ranks 8k..8k+7 on node k
    plan = resolve_plan(ParallelPlan(tp=2, cp=4, ep=4, dp=2, pp=2, moe_fold=True), 32)
    for stage in range(2):
        assert not _ep_spans_nodes(plan, Layout(plan), stage, per_node)
    # Unfolded, EP is carved out of DP (dp 2 takes ep 2 at most): TP x EP is ranks 0,1
    # and 8,9, tp*cp apart, on two nodes.
    old = resolve_plan(ParallelPlan(tp=2, cp=4, ep=2, dp=2, pp=2), 32)
    assert _groups(old, 0)["ep"] == (0, 1, 8, 9)
    assert _ep_spans_nodes(old, Layout(old), 0, per_node)


def test_folded_tp_split_experts():
    # --no-tp-extend-ep: Megatron ETP = TP = 2, EP 8 over TP 2 x CP 4 x DP 2 (16 ranks):
    # edp = 16 / (2 * 8) = 1; a stage's rank is t + 2 e.
    plan = resolve_plan(
        ParallelPlan(tp=2, cp=4, ep=8, dp=2, pp=2, moe_fold=True, tp_extend_ep=False), 32)
    g = _groups(plan, 3)
    assert g["ep"] == (1, 3, 5, 7, 9, 11, 13, 15)
    assert g["ep_tp"] == (2, 3)
    assert g["dp_expert"] == (3,)
    assert plan.edp == 1
    validate_plan(MOE8, plan, 32)  # ep 8 does not divide dp 2: allowed when folded


@pytest.mark.parametrize("extend", [True, False])
@pytest.mark.parametrize("tp, ep, dp, pp", [(1, 4, 8, 2), (2, 2, 4, 1), (2, 4, 4, 2), (4, 2, 2, 2)])
def test_fold_changes_nothing_without_cp(extend, tp, ep, dp, pp):
    # With cp 1 Megatron-Core's folded expert order tp-ep-dp-pp is the old tp-(cp)-ep-dp-pp.
    base = ParallelPlan(tp=tp, ep=ep, dp=dp, pp=pp, tp_extend_ep=extend)
    world = tp * dp * pp
    old = resolve_plan(base, world)
    new = resolve_plan(ParallelPlan(**{**base.__dict__, "moe_fold": True}), world)
    for r in range(world):
        assert _groups(old, r) == _groups(new, r)
        assert expert_group(old, Layout(old), r) == expert_group(new, Layout(new), r)
    assert old.edp == new.edp


def test_unfolded_groups_with_cp_are_the_old_ones():
    # EP out of DP (MindSpeed; Megatron-Core < 0.10): rank = t + 2c + 4e + 8d for
    # tp 2, cp 2, ep 2, dp/ep 2. Written out by hand, as before folding existed.
    plan = resolve_plan(ParallelPlan(tp=2, cp=2, ep=2, dp=4), 16)
    g = _groups(plan, 0)
    assert g["ep"] == (0, 1, 4, 5)
    assert g["ep_inter"] == (0, 4)
    assert g["dp_dense"] == (0, 2, 4, 6, 8, 10, 12, 14)
    assert g["dp_expert"] == (0, 2, 8, 10)
    assert plan.edp == 4  # cp * dp / ep: the replicas the ZeRO shards and the reduce see


@settings(max_examples=30, deadline=None)
@given(tp=st.sampled_from([1, 2]), cp=st.sampled_from([1, 2, 4]), dp=st.sampled_from([1, 2]),
       pp=st.sampled_from([1, 2]), ep=st.sampled_from([1, 2, 4, 8]))
def test_expert_layout_is_a_bijection_with_the_same_stages(tp, cp, dp, pp, ep):
    if (cp * dp) % ep:
        return
    plan = ParallelPlan(tp=tp, cp=cp, dp=dp, pp=pp, ep=ep, moe_fold=True)
    attn, experts = Layout(plan), Layout(plan).for_experts()
    assert {experts.rank(experts.coord(r)) for r in range(plan.world)} == set(range(plan.world))
    for r in range(plan.world):
        assert experts.coord(r).pp == attn.coord(r).pp
        assert len(experts.group(r, ("tp", "ep"))) == tp * ep
        assert len(experts.group(r, ("cp", "dp"))) == plan.edp


@pytest.mark.parametrize(
    "plan, devices, words",
    [
        # cp > 1: the refusal names the folding flag
        (ParallelPlan(tp=2, cp=4, ep=4, dp=2), 16, "--moe-fold"),
        (ParallelPlan(tp=2, cp=4, ep=4, dp=2), 16, "ep=4 must divide dp=2"),
        # folded: tp*ep must divide tp*cp*dp (Megatron: world divisible by etp*ep*pp)
        (ParallelPlan(tp=2, cp=2, ep=8, dp=2, moe_fold=True, tp_extend_ep=False), 8,
         "tp*ep = 2*8 = 16 ranks must divide the tp*cp*dp = 8"),
        # Megatron-Core asserts pp last unless pp 1 or equal DP sizes
        (ParallelPlan(tp=2, cp=2, ep=4, dp=2, pp=2, moe_fold=True, order="tp-cp-ep-pp-dp"), 16,
         "needs pp last"),
        # TP-extend-EP needs the TP x EP ranks to be Megatron's one EP dimension
        (ParallelPlan(tp=2, cp=2, ep=2, dp=2, moe_fold=True, order="tp-dp-ep-cp-pp"), 8,
         "ep right after tp"),
    ],
)
def test_fold_refusals(plan, devices, words):
    with pytest.raises(InputError) as err:
        validate_plan(MOE8, plan, devices)
    assert words in str(err.value)


def test_as_dict_names_fold_only_when_on():
    assert "moe_fold" not in ParallelPlan().as_dict()
    assert ParallelPlan(moe_fold=True).as_dict()["moe_fold"] is True


@pytest.mark.parametrize("plan", [
    # TP2 x EP4 over 4 CP ranks: the T37 shape on two DGX-H100 nodes (ep 4 > dp 2)
    ParallelPlan(tp=2, cp=4, ep=4, mbs=1, gbs=8, seq=8192, sequence_parallel=True,
                 moe_fold=True),
    ParallelPlan(tp=2, cp=4, ep=8, mbs=1, gbs=8, seq=8192, sequence_parallel=True,
                 moe_fold=True, tp_extend_ep=False, zero=3),
    ParallelPlan(pp=2, vpp=2, cp=2, ep=8, mbs=1, gbs=8, seq=8192, moe_fold=True,
                 moe_routing="zipf:1.2"),
])
def test_folded_memory_modes_agree(plan):
    # The analytical memory mode reads the experts' layout as the full mode does
    # (docs/training.md: same floats under uniform routing).
    from xpusim.hwprofiles import load_system
    from xpusim.sim.models import load_model
    from xpusim.sim.training import estimate_memory
    from xpusim.sim.training.memory import analytical_memory

    spec, system = load_model("mixtral-8x7b"), load_system("dgx-h100", nodes=2)
    full = estimate_memory(spec, system, plan)
    fast = analytical_memory(spec, system, plan)
    for a, f in zip(fast, full, strict=True):
        assert a.total == pytest.approx(f.total, rel=1e-12)
        assert (a.weights, a.gradients, a.optimizer) == (f.weights, f.gradients, f.optimizer)


def test_cli_names_the_fold_flag(capsys):
    from xpusim.sim.cli.main import main

    argv = ["train", "--model", "mixtral-8x22b", "--system", "dgx-b200", "--nodes", "32",
            "--tp", "2", "--pp", "4", "--cp", "8", "--ep", "8", "--dp", "4", "--seq", "65536",
            "--quiet"]
    assert main(argv) == 2
    assert "--moe-fold" in capsys.readouterr().err


def test_plan_file_key(tmp_path):
    from xpusim.sim.plan_file import load_plan_file

    path = tmp_path / "plan.toml"
    path.write_text("[plan]\ntp = 2\ncp = 4\nep = 4\nmoe_fold = true\n")
    assert load_plan_file(str(path))["moe_fold"] is True
    path.write_text("[plan]\nmoe_fold = 1\n")
    with pytest.raises(InputError, match="true or false"):
        load_plan_file(str(path))


def test_folded_representatives_agree_with_every_rank():
    # Every rank of a folded plan has the same group shapes, so one representative per
    # stage gives the step of all 16 ranks (as for unfolded plans, test_training.py).
    from xpusim.hwprofiles import load_system
    from xpusim.sim.training import TrainingOptions, simulate_training

    system = load_system("dgx-h100", nodes=2)
    plan = ParallelPlan(tp=2, cp=4, ep=4, dp=2, mbs=1, gbs=4, seq=2048,
                        sequence_parallel=True, moe_fold=True)
    reduced = simulate_training(MOE8, system, plan)
    full = simulate_training(MOE8, system, plan, TrainingOptions(full_ranks=True))
    assert (reduced.simulated_ranks, full.simulated_ranks) == (1, 16)
    assert full.step_time_s == pytest.approx(reduced.step_time_s, rel=0.01)
    assert full.peak_memory.total == pytest.approx(reduced.peak_memory.total, rel=1e-12)
