"""Pipeline parallelism of a single inference step (``xpusim infer --pp P``).

Stage split: vLLM 0.6's get_pp_indices (remainder on the last stage). Latency: the sum
of the stage times and the hand-offs; each stage priced by the same lowering as a
whole-model step. Memory: each stage holds its own layers' weights and KV.
"""

from __future__ import annotations

import json

import pytest
from xpusim.hwprofiles import load_system
from xpusim.sim.cli.main import main
from xpusim.sim.errors import InputError, NegativeVerdict
from xpusim.sim.inference.engine_profile import load_engine
from xpusim.sim.inference.kvcache import plan_memory, stage_memory
from xpusim.sim.inference.lowering import StepBatch, StepSimulator, plan_for
from xpusim.sim.inference.pipeline import PipelineSimulator
from xpusim.sim.inference.stages import activation_send, stage_layers
from xpusim.sim.models.counting import param_counts, stage_param_counts
from xpusim.sim.models.hf_config import load_model
from xpusim.sim.network import cost_collective
from xpusim.sim.parallel import ParallelPlan

import xpusim


@pytest.fixture(scope="module")
def h100():
    return load_system("dgx-h100")


@pytest.fixture(scope="module")
def llama7():
    return load_model("llama-2-7b")


def test_stage_split_is_vllm_06s_remainder_on_the_last_stage():
    assert stage_layers(80, 1) == [(0, 80)]
    assert stage_layers(80, 2) == [(0, 40), (40, 80)]
    # 10 // 3 = 3 per stage, the remaining 1 on the last: 3, 3, 4.
    assert stage_layers(10, 3) == [(0, 3), (3, 6), (6, 10)]
    # Llama-3.1-405B's 126 layers over 4 stages: 31, 31, 31, 33.
    assert stage_layers(126, 4) == [(0, 31), (31, 62), (62, 93), (93, 126)]
    assert stage_layers(3, 3) == [(0, 1), (1, 2), (2, 3)]
    for bad in (0, 4):
        with pytest.raises(InputError, match="--pp"):
            stage_layers(3, bad)


def test_activation_send_is_hidden_and_residual_split_over_tp():
    # 8 decode tokens of a 4096-wide model: 2 tensors x 8 x 4096 x 2 bytes = 131,072.
    assert activation_send(8, 4096, 1) == 131_072
    assert activation_send(8, 4096, 2) == 65_536  # each TP rank sends its half
    assert activation_send(8, 4096, 1, "fp32") == 262_144


def test_stage_parameters_add_up_to_the_model():
    llama70 = load_model("llama-2-70b")
    # One layer of Llama-2-70B: q, o 8192^2 each, k, v 8192 x 1024 each, SwiGLU
    # 3 x 8192 x 28672, two RMSNorms of 8192.
    layer = 2 * 8192 * 8192 + 2 * 8192 * 1024 + 3 * 8192 * 28672 + 2 * 8192
    table = 32000 * 8192
    assert stage_param_counts(llama70, 0, 40) == (table + 40 * layer, 0)
    assert stage_param_counts(llama70, 40, 80) == (40 * layer + table + 8192, 0)
    assert sum(stage_param_counts(llama70, 0, 80)) == param_counts(llama70).total
    # A tied table is held by the first stage (embedding) and the last (LM head).
    opt = load_model("opt-350m")
    assert opt.tie_embeddings
    first, last = (sum(stage_param_counts(opt, a, b)) for a, b in stage_layers(opt.layers, 2))
    assert first + last == param_counts(opt).total + param_counts(opt).embedding
    # MoE: the routed experts of the stage's own layers.
    qwen = load_model("qwen2-57b-a14b")
    halves = [stage_param_counts(qwen, a, b)[1] for a, b in stage_layers(qwen.layers, 2)]
    assert halves[0] == halves[1] == param_counts(qwen).routed_experts / 2


def test_each_stage_holds_half_the_weights_and_kv(h100):
    spec = load_model("llama-2-70b")
    hbm = h100.device.hbm_capacity
    whole = plan_memory(spec, hbm, 1, 1, "bf16", 0.9, 8192)
    stages = stage_memory(spec, hbm, 1, 1, 2, "bf16", 0.9, 8192)
    layer = 2 * 8192 * 8192 + 2 * 8192 * 1024 + 3 * 8192 * 28672 + 2 * 8192
    assert stages[0].weights == (32000 * 8192 + 40 * layer) * 2
    assert stages[0].weights + stages[1].weights == pytest.approx(whole.weights, rel=1e-15)
    # KV per token: 40 of the 80 layers, 2 x 8 KV heads x 128 x 2 bytes each.
    assert stages[0].kv_bytes_per_token == stages[1].kv_bytes_per_token == 40 * 2 * 8 * 128 * 2
    assert whole.kv_bytes_per_token == 2 * stages[0].kv_bytes_per_token
    # Only the last stage keeps the logits workspace (8192 tokens x 32000 x fp32).
    assert stages[1].activations - stages[0].activations == 8192 * 32000 * 4
    # The deployment caches what its tightest stage can (vLLM: min blocks over workers).
    paired = plan_memory(spec, hbm, 1, 1, "bf16", 0.9, 8192, pp=2)
    assert paired == min(stages, key=lambda m: m.kv_tokens) == stages[1]
    assert paired.kv_tokens == pytest.approx(
        (hbm * 0.9 - stages[1].weights - stages[1].activations) / stages[1].kv_bytes_per_token
    )


def test_pipeline_step_is_the_sum_of_stages_and_sends(h100, llama7):
    engine = load_engine("vllm-0.6")
    for batch in (StepBatch.for_phase("decode", 8, 1024), StepBatch.for_phase("prefill", 2, 512)):
        one = StepSimulator(llama7, h100, ParallelPlan(tp=1), engine).run(batch)
        pipe = PipelineSimulator(llama7, h100, ParallelPlan(tp=1, pp=2), engine).run(batch)
        assert pipe.layers == ((0, 16), (16, 32)) and pipe.first_devices == (0, 1)
        # Each stage is the whole-model lowering restricted to its layers: together they
        # are the pp=1 step's device time (each op priced the same).
        assert sum(s.device_s for s in pipe.stages) == pytest.approx(one.device_s, rel=1e-12)
        # The hand-off: hidden + residual, tokens x 4096 x 2 bytes each, device 0 -> 1.
        send = cost_collective(h100, "send-recv", (0, 1), 2 * batch.tokens * 4096 * 2).time_s
        assert pipe.sends_s == (send,)
        assert pipe.step.device_s == pytest.approx(one.device_s + send, rel=1e-12)
        # vLLM 0.6's engine runs its host work serially around the forward, once.
        assert pipe.step.host_s == pytest.approx(one.host_s, rel=1e-12)
        assert pipe.step.time_s == pytest.approx(one.time_s + send, rel=1e-12)
        assert pipe.step.time_s > one.time_s
        assert pipe.bottleneck in (0, 1)
        assert pipe.stages[pipe.bottleneck].device_s == max(s.device_s for s in pipe.stages)


def test_tp_stages_send_slices_then_all_gather(h100, llama7):
    batch = StepBatch.for_phase("decode", 8, 1024)
    pipe = PipelineSimulator(llama7, h100, ParallelPlan(tp=2, pp=2)).run(batch)
    assert pipe.first_devices == (0, 2)
    # Each TP rank sends half of the 131,072 bytes to its peer, then stage 1's TP group
    # (devices 2, 3) all-gathers the whole tensors.
    expected = (cost_collective(h100, "send-recv", (0, 2), 65_536).time_s
                + cost_collective(h100, "all-gather", (2, 3), 131_072).time_s)
    assert pipe.sends_s == (pytest.approx(expected, rel=1e-12),)


def test_stages_on_two_nodes_send_across_the_network():
    two = load_system("dgx-h100", nodes=2)
    spec = load_model("llama-2-70b")
    batch = StepBatch.for_phase("decode", 16, 2048)
    pipe = PipelineSimulator(spec, two, ParallelPlan(tp=8, pp=2)).run(batch)
    assert pipe.first_devices == (0, 8)  # stage 1 is the second node
    nbytes = 2 * 16 * 8192 * 2
    expected = (cost_collective(two, "send-recv", (0, 8), nbytes / 8).time_s
                + cost_collective(two, "all-gather", tuple(range(8, 16)), nbytes).time_s)
    assert pipe.sends_s[0] == pytest.approx(expected, rel=1e-12)


def test_bad_pipeline_inputs_name_the_flag(h100, llama7):
    with pytest.raises(InputError, match="--pp must be >= 1"):
        plan_for(None, 1, pp=0)
    with pytest.raises(InputError, match="--pp needs --tp"):
        plan_for(None, None, pp=2)
    with pytest.raises(InputError, match="--pp 33 exceeds the 32 layers"):
        PipelineSimulator(llama7, h100, ParallelPlan(tp=1, pp=33))
    with pytest.raises(InputError, match="plan needs 16 devices"):
        PipelineSimulator(llama7, h100, ParallelPlan(tp=8, pp=2))
    with pytest.raises(InputError, match="one pipeline stage"):
        StepSimulator(llama7, h100, ParallelPlan(tp=1, pp=2))
    with pytest.raises(InputError, match="--pp 2 with --serve: engine 'sglang-0.4' states no"):
        xpusim.serve(model="llama-2-7b", system="dgx-h100", tp=1, pp=2, requests=2,
                     engine="sglang-0.4")


def test_pipeline_fits_what_one_device_cannot():
    kwargs = dict(model="llama-2-70b", system="dgx-h100", phase="decode", batch=8)
    with pytest.raises(NegativeVerdict):
        xpusim.infer(tp=1, **kwargs)
    r = xpusim.infer(tp=1, pp=2, **kwargs)
    assert r.plan.devices == 2 and r.pipeline is not None
    assert len(r.stage_memory) == 2 and r.memory == r.stage_memory[1]


def test_cli_reports_stages_and_the_bottleneck(capsys):
    args = ["infer", "--model", "llama-2-7b", "--system", "dgx-h100", "--tp", "1", "--pp",
            "2", "--phase", "prefill", "--batch", "2", "--context", "512"]
    assert main([*args, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["pp"] == 2 and out["devices"] == 2
    pipe = out["pipeline"]
    assert [s["layers"] for s in pipe["stages"]] == [[0, 16], [16, 32]]
    assert pipe["stages"][1]["send_s"] == 0.0 and pipe["sends_s"] == pipe["stages"][0]["send_s"]
    assert pipe["bottleneck_s"] == max(s["device_s"] for s in pipe["stages"])
    devices = sum(s["device_s"] for s in pipe["stages"]) + pipe["sends_s"]
    assert out["device_s"] == pytest.approx(devices, rel=1e-12)
    assert out["time_s"] == pytest.approx(out["device_s"] + out["host_s"])
    assert pipe["stages"][0]["memory"]["weights_bytes"] > 0
    api = xpusim.infer(model="llama-2-7b", system="dgx-h100", tp=1, pp=2, phase="prefill",
                       batch=2, context=512)
    assert api.as_dict()["time_s"] == out["time_s"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "pp=2" in text and "bottleneck stage" in text
