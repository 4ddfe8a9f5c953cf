"""An inference step's low-latency EP kernel with its same-node copies NIC to NIC
(``--ll-intranode nic``, the default) or over NVLink (``fabric``): infer, serve and sd
carry the choice to ``xpusim ep``'s model (sim/inference/ep_dispatch.py, docs/ep.md)."""

from __future__ import annotations

import json

import pytest
from xpusim.hwprofiles import load_system
from xpusim.sim.api.ep import EpRequest, ep
from xpusim.sim.api.infer import InferRequest, infer
from xpusim.sim.api.sd import SdRequest, sd
from xpusim.sim.cli.main import main
from xpusim.sim.errors import InputError
from xpusim.sim.inference.engine_profile import load_engine
from xpusim.sim.inference.lowering import StepBatch, StepSimulator
from xpusim.sim.inference.routing import UNIFORM, routing_from_text
from xpusim.sim.ir import CollectiveKind
from xpusim.sim.models.hf_config import load_model
from xpusim.sim.parallel import ParallelPlan

MOE_LAYERS = 58  # DeepSeek-V3: 61 layers, the first 3 dense
A2A = str(CollectiveKind.ALL_TO_ALL)


def _step(ep_size: int, path: str, batch: int = 64):
    """A DeepSeek-V3 FP8 decode step, ``batch`` requests a GPU, over ``ep_size`` H800s
    (8 a node), the low-latency kernel dispatching in FP8."""
    system = load_system("hgx-h800", nodes=max(1, ep_size // 8))
    routing = routing_from_text("uniform", 0, "low-latency", "fp8", path)
    sim = StepSimulator(load_model("deepseek-v3"), system, ParallelPlan(tp=1, ep=ep_size),
                        load_engine("none"), "fp8", routing)
    return sim.run(StepBatch(batch * ep_size, 1, 2048))


def test_default_path_is_nic():
    assert UNIFORM.ll_intranode == "nic"
    assert routing_from_text("uniform", 0, "low-latency", "fp8") == routing_from_text(
        "uniform", 0, "low-latency", "fp8", "nic")


@pytest.mark.parametrize("ep_size", [8, 16])
def test_fabric_is_faster_when_copies_stay_in_the_node(ep_size):
    """One node (every copy same-node) and two (7 of 15 peers in the node): NVLink
    stores beside the NIC make the MoE all-to-alls strictly faster and nothing else moves."""
    nic, fab = _step(ep_size, "nic"), _step(ep_size, "fabric")
    assert fab.by_kind[A2A] < nic.by_kind[A2A]
    assert fab.time_s < nic.time_s
    rest = {k: v for k, v in nic.by_kind.items() if k != A2A}
    assert rest == pytest.approx({k: v for k, v in fab.by_kind.items() if k != A2A},
                                 rel=1e-12)


@pytest.mark.parametrize("batch", [1, 8, 128])
def test_fabric_is_never_slower(batch):
    """Two nodes at a few decode batches: the fabric path is never the slower."""
    assert _step(16, "fabric", batch).time_s <= _step(16, "nic", batch).time_s


def test_priced_as_xpusim_ep_prices_it():
    """Each MoE layer's dispatch is `xpusim ep --ll-intranode fabric`'s FP8 dispatch for
    64 tokens a rank, its combine the BF16 combine."""
    step = _step(16, "fabric")
    req = EpRequest(model="deepseek-v3", system="hgx-h800", nodes=2, ep=16,
                    tokens_per_device=64, dispatch="low-latency", ll_intranode="fabric")
    dispatch = ep(EpRequest(**{**vars(req), "dtype": "fp8"})).dispatch_time_s
    combine = ep(EpRequest(**{**vars(req), "dtype": "bf16"})).combine_time_s
    assert step.by_kind[A2A] == pytest.approx(MOE_LAYERS * (dispatch + combine), rel=1e-12)


@pytest.mark.parametrize("kernel", ["collective", "deepep"])
def test_refused_without_the_low_latency_kernel(kernel):
    with pytest.raises(InputError, match="--ep-dispatch low-latency"):
        routing_from_text("uniform", 0, kernel, "bf16", "fabric")
    with pytest.raises(InputError, match="--ll-intranode"):
        infer(InferRequest(model="deepseek-v3", system="hgx-h800", nodes=2, tp=1, ep=16,
                           dtype="fp8", engine="none", ep_dispatch=kernel,
                           ll_intranode="fabric"))
    with pytest.raises(InputError, match="--ll-intranode"):
        sd(SdRequest(target="deepseek-v3", draft="mtp", system="hgx-h800", ep_dispatch=kernel,
                     ll_intranode="fabric"))


def test_unknown_path_is_refused():
    with pytest.raises(InputError, match="--ll-intranode nvlink: choose one of nic, fabric"):
        routing_from_text("uniform", 0, "low-latency", "bf16", "nvlink")


ARGS = ["infer", "--model", "deepseek-v3", "--system", "hgx-h800", "--nodes", "2", "--tp",
        "1", "--ep", "16", "--dtype", "fp8", "--engine", "none", "--batch", "1024",
        "--ep-dispatch", "low-latency", "--ep-dispatch-dtype", "fp8", "--json"]


def _cli_step_s(capsys, *extra: str) -> float:
    assert main(ARGS + list(extra)) == 0
    return float(json.loads(capsys.readouterr().out)["time_s"])


def test_cli_flag(capsys):
    """`infer --ll-intranode fabric` is faster than the default, which is `nic`."""
    default = _cli_step_s(capsys)
    assert _cli_step_s(capsys, "--ll-intranode", "nic") == default
    assert _cli_step_s(capsys, "--ll-intranode", "fabric") < default


@pytest.mark.parametrize("argv", [
    ["infer", "--model", "deepseek-v3", "--system", "hgx-h800", "--ll-intranode", "nic"],
    ["infer", "--model", "deepseek-v3", "--system", "hgx-h800", "--ep-dispatch", "deepep",
     "--ll-intranode", "fabric"],
    ["sd", "--target", "deepseek-v3", "--draft", "mtp", "--system", "hgx-h800",
     "--ll-intranode", "fabric"],
])
def test_cli_refuses_it_without_low_latency(capsys, argv):
    """Even the default path, given without the low-latency kernel, would be ignored:
    exit 2 naming the fix, no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--ep-dispatch low-latency" in err and "Traceback" not in err


def test_serve_carries_it():
    """A short serving run on two nodes: the same requests decode faster over NVLink."""
    from xpusim.sim.api.serve import ServeRequest, serve

    def tpot(path: str) -> float:
        run = serve(ServeRequest(model="deepseek-v3", system="hgx-h800", nodes=2, tp=1, ep=16,
                                 dtype="fp8", engine="none", ep_dispatch="low-latency",
                                 ep_dispatch_dtype="fp8", ll_intranode=path, rate=1000.0,
                                 requests=32, prompt_len="128", output_len="16"))
        assert run.tpot_mean_s is not None
        return run.tpot_mean_s

    assert tpot("fabric") < tpot("nic")
