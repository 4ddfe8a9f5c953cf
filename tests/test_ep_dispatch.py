"""The inference step's MoE dispatch / combine priced by an EP kernel (--ep-dispatch)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from xpusim.hwprofiles import load_system
from xpusim.sim.api.ep import EpRequest, ep
from xpusim.sim.errors import InputError
from xpusim.sim.inference.engine_profile import load_engine
from xpusim.sim.inference.ep_dispatch import ep_kernel_comm
from xpusim.sim.inference.lowering import StepBatch, StepSimulator
from xpusim.sim.inference.routing import UNIFORM, routing_from_text
from xpusim.sim.ir import Collective, CollectiveKind
from xpusim.sim.models.hf_config import load_model
from xpusim.sim.network import comm_time_fn
from xpusim.sim.parallel import ParallelPlan

EP = 32  # two 16-die servers of cloudmatrix-384: a small group, quick to price
MOE_LAYERS = 58  # DeepSeek-V3: 61 layers, the first 3 dense


def _step(kernel: str, dtype: str = "bf16"):
    """A DeepSeek-V3 INT8 decode step, 64 requests a die, over EP32 on cloudmatrix-384."""
    spec, system = load_model("deepseek-v3"), load_system("cloudmatrix-384")
    routing = routing_from_text("uniform", 0, kernel, dtype)
    sim = StepSimulator(spec, system, ParallelPlan(tp=1, ep=EP), load_engine("none"), "int8",
                        routing)
    return sim.run(StepBatch(64 * EP, 1, 2048))


def test_default_is_the_system_pricer_itself():
    """collective (the default) leaves the collective pricer as it was: same floats."""
    system = load_system("cloudmatrix-384")
    inner = comm_time_fn(system)
    spec = load_model("deepseek-v3")
    assert ep_kernel_comm(inner, spec, system, ParallelPlan(tp=1, ep=EP), "int8",
                          UNIFORM.ep_dispatch, UNIFORM.ep_dispatch_dtype) is inner
    assert routing_from_text("uniform") == UNIFORM


@pytest.mark.parametrize("kernel", ["low-latency", "deepep"])
def test_priced_dispatch_equals_xpusim_ep(kernel):
    """Each MoE layer's dispatch costs what `xpusim ep` gives for 64 tokens a rank in
    INT8, its combine what it gives in BF16; they stay communication (all_to_all)."""
    step = _step(kernel, "int8")
    req = EpRequest(model="deepseek-v3", system="cloudmatrix-384", ep=EP, tokens_per_device=64,
                    dispatch=kernel)
    dispatch = ep(replace(req, dtype="int8")).dispatch_time_s
    combine = ep(replace(req, dtype="bf16")).combine_time_s
    assert step.by_kind[str(CollectiveKind.ALL_TO_ALL)] == pytest.approx(
        MOE_LAYERS * (dispatch + combine), rel=1e-12)


def test_kernel_replaces_only_the_moe_needs():
    """Only the all-to-all time moves; the collective path's is larger here (a pairwise
    exchange of t x k rows of 1 byte over 31 peers vs one posted message each)."""
    plain, fused = _step("collective"), _step("low-latency", "int8")
    a2a = str(CollectiveKind.ALL_TO_ALL)
    assert fused.by_kind[a2a] < plain.by_kind[a2a]
    rest = {k: v for k, v in plain.by_kind.items() if k != a2a}
    # (the engine sums each kind along its timeline: rounding differs in the last digits)
    assert rest == pytest.approx({k: v for k, v in fused.by_kind.items() if k != a2a},
                                 rel=1e-12)


def test_other_collectives_use_the_system_pricer():
    system = load_system("cloudmatrix-384")
    inner = comm_time_fn(system)
    fn = ep_kernel_comm(inner, load_model("deepseek-v3"), system, ParallelPlan(tp=1, ep=EP),
                        "int8", "low-latency", "int8")
    coll = Collective("logits_gather", CollectiveKind.ALL_GATHER, tuple(range(EP)), 1e6)
    assert fn(coll) == inner(coll)


def test_bad_flags_are_refused():
    with pytest.raises(InputError, match="--ep-dispatch nccl"):
        routing_from_text("uniform", 0, "nccl")
    with pytest.raises(InputError, match="--ep-dispatch-dtype fp4"):
        routing_from_text("uniform", 0, "deepep", "fp4")
    system = load_system("cloudmatrix-384")
    with pytest.raises(InputError, match="--tp 1"):
        ep_kernel_comm(comm_time_fn(system), load_model("deepseek-v3"), system,
                       ParallelPlan(tp=2, ep=16), "int8", "deepep", "bf16")


def test_cli_names_the_flag_and_the_fix(capsys):
    """A kernel with tp > 1: exit 2 naming --tp 1, no traceback."""
    from xpusim.sim.cli.main import main

    argv = ["infer", "--model", "deepseek-v3", "--system", "cloudmatrix-384", "--tp", "2",
            "--ep", "16", "--dtype", "int8", "--engine", "none", "--ep-dispatch", "deepep"]
    assert main(argv) == 2
    assert "--tp 1" in capsys.readouterr().err
