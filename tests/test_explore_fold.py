"""`explore` searches MoE parallel folding (plans.moe_fold): enumeration, EP placement, run."""

from __future__ import annotations

import tomllib
from collections import Counter
from dataclasses import replace

import pytest
from studies_tiny import TINY_STUDY
from xpusim.hwprofiles import load_system
from xpusim.sim.errors import InputError
from xpusim.sim.parallel import ParallelPlan, validate_plan
from xpusim.sim.studies.analytical import ep_bandwidth, group_bandwidth
from xpusim.sim.studies.plans import enumerate_plans, ep_comm_estimate, plan_ep_group, plan_label
from xpusim.sim.studies.search import run_study
from xpusim.sim.studies.space import candidates_in_budget, to_spec
from xpusim.sim.studies.study_file import parse_study

import xpusim


def study_with(nodes: int = 1, **plans: object):
    data = tomllib.loads(TINY_STUDY)
    data["hardware"]["nodes"] = nodes
    data["plans"].update(plans)
    return parse_study(data)


def moe_spec(study):
    return to_spec(candidates_in_budget(study)[0][0].candidate, study)


SPACE = {"tp": [1, 2], "pp": [1], "ep": [1, 2, 4], "cp": [1, 2]}


def _counts(fold: list[bool], dense: bool = False) -> Counter:
    study = study_with(**SPACE, moe_fold=fold)
    spec = moe_spec(study)
    spec = replace(spec, moe=None) if dense else spec
    plans = enumerate_plans(spec, load_system("atlas-800t-a2", nodes=1), study)
    assert len(set(plans)) == len(plans)  # each plan once
    return Counter(p.moe_fold for p in plans)


def test_enumeration_counts_by_hand():
    # 8 devices, pp 1, 8 experts: dp = 8 / (tp cp). Unfolded, ep divides dp (and tp*ep the
    # 8 experts): tp1 cp1 dp8 ep1,2,4; tp1 cp2 dp4 ep1,2,4; tp2 cp1 dp4 ep1,2,4; tp2 cp2
    # dp2 ep1,2 -> 11.
    assert _counts([False]) == {False: 11}
    # Folded (tp*ep divides tp*cp*dp = 8), only where it changes the groups (cp > 1, ep > 1):
    # tp1 cp2 ep2,4 and tp2 cp2 ep2,4 (ep4 > dp2: folding alone allows it) -> 4 more.
    assert _counts([False, True]) == {False: 11, True: 4}
    # [true] alone: cp = 1 or ep = 1 plans stay unfolded (the same ranks), the other
    # three unfolded plans become the folded ones: 8 + 4.
    assert _counts([True]) == {False: 8, True: 4}
    # A dense model never folds: ep 1 only, tp1/2 x cp1/2 -> 4 either way.
    assert _counts([False], dense=True) == _counts([False, True], dense=True) == {False: 4}


def test_default_axis_and_empty_axis():
    assert study_with().plans.moe_fold == [False]
    with pytest.raises(InputError, match=r"plans\.moe_fold"):
        study_with(moe_fold=[])


def test_folded_ep_group_is_one_server():
    # 2 x 8 devices, tp2 cp4 ep2 (dp2), TP-extend-EP: the all-to-all group is TP x EP.
    # Unfolded (order tp-cp-ep-dp-pp) EP strides tp*cp = 8: ranks 0,1,8,9, two servers.
    # Folded (experts' order tp-ep-dp-pp) EP strides tp = 2: ranks 0..3, one server.
    study = study_with(nodes=2)
    spec = moe_spec(study)
    system = load_system("atlas-800t-a2", nodes=2)
    flat = validate_plan(spec, ParallelPlan(tp=2, cp=4, ep=2, gbs=16, seq=512), 16)
    fold = replace(flat, moe_fold=True)
    assert plan_ep_group(flat) == (0, 1, 8, 9)
    assert plan_ep_group(fold) == (0, 1, 2, 3)
    # One server's full mesh: each of 4 peers reaches 3 of a device's 7 HCCS links at the
    # intra-node collective efficiency (as tests/test_studies.py, test_ep_comm_estimate_by_hand).
    intra = 3 * system.intra_link.bandwidth * system.collective_efficiency.intra_node
    assert group_bandwidth(system, plan_ep_group(fold)) == ep_bandwidth(system, 4)
    assert group_bandwidth(system, plan_ep_group(fold)) == pytest.approx(intra, rel=1e-2)
    assert group_bandwidth(system, plan_ep_group(flat)) < 0.9 * intra  # over the NICs
    assert ep_comm_estimate(fold, spec, system) < ep_comm_estimate(flat, spec, system)


def test_explore_simulates_a_folded_plan():
    # tp2 cp2 ep4 on 8 devices: dp = 2 < ep, so only the folded plan is valid.
    study = study_with(tp=[2], pp=[1], cp=[2], ep=[4], moe_fold=[False, True])
    study = study.model_copy(update={"search": study.search.model_copy(update={"shortlist": 1})})
    result = run_study(study)
    row = result.ranked[0]
    assert "error" not in row
    assert row["plans_enumerated"] == row["plans_simulated"] == 1
    assert row["plan"].endswith(" fold") and row["plan"].startswith("tp2 pp1 vpp1 ep4 cp2 dp2")
    # The row's plan_* fields rerun it with train (as tests/test_study_invariants.py does).
    plan = {k[5:]: v for k, v in row.items() if k.startswith("plan_")}
    assert plan["moe_fold"] is True
    one = xpusim.train(model=moe_spec(study), system=result.system, gbs=16, seq=512, **plan)
    assert row["tokens_per_s"] == pytest.approx(one.tokens_per_s, rel=1e-12)


def test_rows_name_the_fold_only_in_studies_that_search_it():
    row = run_study(study_with(tp=[2], pp=[1], cp=[1], ep=[2])).ranked[0]
    assert "plan_tp" in row and "plan_moe_fold" not in row


def test_label_names_the_fold_only_when_folded():
    plan = ParallelPlan(tp=2, cp=2, ep=4, dp=2)
    assert plan_label(plan) == "tp2 pp1 vpp1 ep4 cp2 dp2 mbs1 rc=none"
    assert plan_label(replace(plan, moe_fold=True)) == plan_label(plan) + " fold"
