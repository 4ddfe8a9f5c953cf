"""Parallel plans: validation errors, rank placement, layer slots, plan files."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from xpusim.sim.cli.main import main
from xpusim.sim.errors import InputError
from xpusim.sim.models.spec import MLASpec, ModelSpec, MoESpec
from xpusim.sim.parallel import (
    Coord,
    Layout,
    ParallelPlan,
    layer_slots,
    resolve_plan,
    stage_slots,
    validate_plan,
)
from xpusim.sim.plan_file import load_plan_file
from xpusim.sim.routing_text import parse_routing

DENSE = ModelSpec(
    "tiny", "llama", hidden=512, layers=6, heads=8, kv_heads=4, head_dim=64, ffn=1024, vocab=1000
)
MOE = ModelSpec(
    "tiny-moe",
    "deepseek",
    hidden=512,
    layers=6,
    heads=8,
    kv_heads=8,
    head_dim=96,
    ffn=1024,
    vocab=1000,
    moe=MoESpec(
        num_experts=16,
        top_k=2,
        expert_ffn=256,
        shared_experts=1,
        shared_ffn=256,
        first_dense_layers=1,
    ),
    mla=MLASpec(128, 64, 64, 32, 64),
    mtp_layers=1,
)


def test_dp_is_derived_from_devices():
    plan = resolve_plan(ParallelPlan(tp=2, pp=2), 16)
    assert plan.dp == 4 and plan.world == 16
    assert plan.gbs == plan.mbs * plan.dp * plan.pp * plan.vpp


@pytest.mark.parametrize(
    "plan, devices, words",
    [
        (ParallelPlan(tp=3), 6, "does not divide the 8 attention heads"),
        (ParallelPlan(tp=2, dp=3), 8, "devices (8) != tp*cp*dp*pp"),
        (ParallelPlan(tp=2), 7, "not a multiple of tp*cp*pp"),
        (ParallelPlan(gbs=6, mbs=4), 2, "not divisible by mbs*dp"),
        (ParallelPlan(pp=4, pad_layers=0), 4, "do not divide into pp*vpp"),
        (ParallelPlan(ep=2), 2, "dense: ep must be 1"),
        (ParallelPlan(recompute="some"), 1, "recompute 'some' unknown"),
        (ParallelPlan(order="tp-dp-pp"), 1, "must list each of"),
        (ParallelPlan(pp=2, vpp=2, gbs=3), 1 * 2, "divisible by pp=2"),
        (ParallelPlan(zero=4), 1, "zero must be"),
    ],
)
def test_impossible_dense_plans(plan, devices, words):
    with pytest.raises(InputError, match=None) as err:
        validate_plan(DENSE, plan, devices)
    assert words in str(err.value)


@pytest.mark.parametrize(
    "plan, devices, words",
    [
        (ParallelPlan(tp=2, ep=3, dp=3), 6, "does not divide the 16"),
        # TP-extend-EP with tp > 1: the message names the Megatron-Core alternative
        (ParallelPlan(tp=2, ep=3, dp=3), 6, "--no-tp-extend-ep"),
        (ParallelPlan(ep=3, tp_extend_ep=False), 6, "does not divide the 16"),
        (ParallelPlan(ep=3, tp_extend_ep=False), 6, "; change --ep"),
        (ParallelPlan(ep=4), 2, "must divide dp=2"),
        (ParallelPlan(moe_routing="pareto:3"), 1, "not understood"),
    ],
)
def test_impossible_moe_plans(plan, devices, words):
    with pytest.raises(InputError) as err:
        validate_plan(MOE, plan, devices)
    assert words in str(err.value)


def test_cli_impossible_plan_exits_2(capsys):
    code = main(["train", "--model", "llama-2-7b", "--nodes", "1", "--tp", "3", "--quiet"])
    assert code == 2
    assert "attention heads" in capsys.readouterr().err


def test_megatron_placement_pangu():
    plan = resolve_plan(ParallelPlan(tp=8, pp=16, vpp=2, ep=4, mbs=2, gbs=9216), 6144)
    lay = Layout(plan)
    assert plan.dp == 48
    assert lay.group(0, ("tp",)) == tuple(range(8))  # TP inside one node
    assert lay.group(0, ("tp", "ep")) == tuple(range(32))  # TP x EP: 4 nodes
    assert lay.group(0, ("ep",)) == (0, 8, 16, 24)
    assert len(lay.group(0, ("cp", "ep", "dp"))) == 48
    assert len(lay.group(0, ("cp", "dp"))) == 12  # expert-data-parallel replicas
    assert lay.rank(Coord(0, 0, 0, 0, 1)) == 384  # PP outermost: 6144 / 16


def test_order_override_puts_pp_inside():
    plan = resolve_plan(ParallelPlan(tp=2, pp=2, order="pp-tp-cp-ep-dp"), 8)
    lay = Layout(plan)
    assert lay.group(0, ("pp",)) == (0, 1)
    assert lay.group(0, ("tp",)) == (0, 2)


@settings(max_examples=40, deadline=None)
@given(
    tp=st.sampled_from([1, 2, 4]),
    pp=st.sampled_from([1, 2, 3]),
    ep=st.sampled_from([1, 2]),
    dpo=st.integers(1, 3),
    cp=st.sampled_from([1, 2]),
)
def test_layout_is_a_bijection(tp, pp, ep, dpo, cp):
    plan = ParallelPlan(tp=tp, pp=pp, ep=ep, dp=ep * dpo, cp=cp)
    lay = Layout(plan)
    seen = {lay.rank(lay.coord(r)) for r in range(plan.world)}
    assert seen == set(range(plan.world))
    for r in range(plan.world):
        assert len(lay.group(r, ("tp",))) == tp
        assert r in lay.group(r, ("cp", "ep", "dp"))


def test_layer_slots_pad_pangu_to_64():
    spec = ModelSpec("p", "x", 64, 61, 8, 8, 8, 64, 100, mtp_layers=1)
    slots = layer_slots(spec, ParallelPlan(pp=16, vpp=2))
    assert len(slots) == 64  # 61 layers + 1 MTP + 2 no-op (Pangu's 61 -> 64)
    assert slots[0] == "noop" and slots[-1] == "noop" and slots[-2] == "mtp0"


def test_layer_split_places_slots_without_padding():
    spec = ModelSpec("p", "x", 64, 61, 8, 8, 8, 64, 100, mtp_layers=1)
    split = tuple([2] * 15 + [1] + [2] * 15 + [1])
    plan = ParallelPlan(pp=16, vpp=2, layer_split=split)
    stages = stage_slots(spec, plan)
    assert [len(s) for s in stages] == list(split)
    assert stages[0] == ["L0", "L1"] and stages[15] == ["L30"] and stages[31] == ["mtp0"]
    assert "noop" not in layer_slots(spec, plan)
    # default: equal slots per virtual stage, padded
    assert {len(s) for s in stage_slots(spec, ParallelPlan(pp=16, vpp=2))} == {2}


@pytest.mark.parametrize(
    "split, message",
    [
        ((31, 30), "one per virtual stage"),
        ((31, 30, 0, 0), "sums to 61"),
        ((63, -1, 0, 0), "non-negative"),
    ],
)
def test_layer_split_errors(split, message):
    spec = ModelSpec("p", "x", 64, 61, 8, 8, 8, 64, 100, mtp_layers=1)
    with pytest.raises(InputError, match=message):
        layer_slots(spec, ParallelPlan(pp=2, vpp=2, layer_split=split))


def test_routing_parser():
    assert parse_routing("uniform") == ("uniform", ())
    assert parse_routing("zipf:1.5") == ("zipf", (1.5,))
    assert parse_routing("hist:1,2,3") == ("hist", (1.0, 2.0, 3.0))


def test_plan_file_unknown_key(tmp_path):
    path = tmp_path / "plan.toml"
    path.write_text("[plan]\ntp = 2\ntensor = 4\n")
    with pytest.raises(InputError, match="unknown keys"):
        load_plan_file(path)


def test_plan_file_reads_extra(tmp_path):
    path = tmp_path / "plan.toml"
    path.write_text(
        'model = "llama-2-7b"\nnodes = 1\n[plan]\ntp = 2\nrecompute_modules = ["act"]\n'
    )
    values = load_plan_file(path)
    assert values["tp"] == 2 and values["recompute_modules"] == ("act",)
    assert values["_extra"] == {"model": "llama-2-7b", "nodes": 1}


def test_embedding_and_loss_may_each_take_a_virtual_stage():
    """Megatron-Core's account_for_embedding/loss_in_pipeline_split: 6 layers on pp*vpp = 8
    virtual stages, the first and the last holding only the embedding and the loss (a
    no-op slot each); 9 would leave a stage with nothing at all."""
    plan = validate_plan(DENSE, ParallelPlan(pp=4, vpp=2, gbs=8), 4)
    slots = stage_slots(DENSE, plan)
    assert slots[0] == ["noop"] and slots[-1] == ["noop"]
    assert [s for stage in slots[1:-1] for s in stage] == [f"L{i}" for i in range(6)]
    with pytest.raises(InputError, match=r"\+2: the embedding's and the loss's slots"):
        validate_plan(DENSE, ParallelPlan(pp=3, vpp=3, gbs=9), 3)
