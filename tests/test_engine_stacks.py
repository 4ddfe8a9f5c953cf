"""Serving-stack profiles: host-CPU scaling, the overlap rule, batching policies."""

from __future__ import annotations

import pytest
from xpusim.hwprofiles import load_system
from xpusim.sim.errors import InputError
from xpusim.sim.inference.engine_profile import (
    EngineProfile,
    engine_for_system,
    host_speed,
    list_engines,
    load_engine,
)
from xpusim.sim.inference.lowering import StepSimulator
from xpusim.sim.inference.serving import Server
from xpusim.sim.inference.stepcosts import StepCosts
from xpusim.sim.inference.workload import Workload, make_requests
from xpusim.sim.models.hf_config import load_model
from xpusim.sim.parallel import ParallelPlan

STACKS = ("vllm-0.5", "vllm-0.6", "sglang-0.4", "trtllm-0.10", "trtllm-0.17", "trtllm-1.0",
          "mindie-1.0", "vllm-ascend-0.9", "lmdeploy-0.1")


def test_every_stack_loads_with_a_known_reference_host():
    names = list_engines()
    for name in STACKS:
        assert name in names
        engine = load_engine(name)
        assert engine.reference_host
        assert host_speed(engine.reference_host) > 0


def test_host_speed_is_clock_times_ipc():
    # hosts.toml: EPYC 7742 3.4 GHz x 1.0; Xeon 8480 3.8 GHz x 1.19
    assert host_speed("epyc-7742") == pytest.approx(3.4)
    assert host_speed("xeon-8480") == pytest.approx(3.8 * 1.19)


def test_host_terms_scale_with_the_host_cpu_not_the_gpu():
    vllm = load_engine("vllm-0.6")  # reference host xeon-8358 (hgx-a800)
    a800 = engine_for_system(vllm, "hgx-a800")
    h800 = engine_for_system(vllm, "hgx-h800")
    assert a800.host_scale == pytest.approx(1.0)
    assert h800.host_scale == pytest.approx(3.4 / (3.8 * 1.19))
    assert h800.step_host_time(10) == pytest.approx(a800.step_host_time(10) * h800.host_scale)
    # rescaling is applied once
    assert engine_for_system(h800, "hgx-h800").host_scale == h800.host_scale


def test_gh200_runs_its_engine_on_the_superchips_grace_host():
    # hosts.toml: grace 2.8 GHz x 1.19 (ESTIMATE); trtllm-0.17's reference host EPYC 7742 3.4 x 1.0
    engine = engine_for_system(load_engine("trtllm-0.17"), "gh200")
    assert engine.host_scale == pytest.approx(3.4 / (2.8 * 1.19))
    assert load_system("gh200").devices_per_node == 1


def test_overlap_rule():
    serial = EngineProfile("s")
    out = EngineProfile("o", host_overlap="output")
    both = EngineProfile("a", host_overlap="all")
    assert serial.step_time(10.0, 2.0, 3.0) == 15.0
    assert out.step_time(10.0, 2.0, 3.0) == 12.0  # sampling/detok hidden
    assert out.step_time(1.0, 2.0, 3.0) == 5.0  # ... up to the device time
    assert both.step_time(10.0, 2.0, 3.0) == 10.0
    assert both.step_time(4.0, 2.0, 3.0) == 5.0


def test_bad_policy_is_a_clear_error(tmp_path):
    bad = tmp_path / "e.toml"
    bad.write_text('kind = "engine"\nname = "x"\n[scheduler]\npolicy = "fifo"\n')
    with pytest.raises(InputError, match="policy"):
        load_engine(str(bad))


def _serve(engine_name: str, n: int = 40, prompt: int = 64, output: int = 16):
    from xpusim.sim.inference.workload import LengthDist

    sim = StepSimulator(load_model("qwen2-0.5b"), load_system("dgx-a100"), ParallelPlan(1),
                        load_engine(engine_name))
    reqs = make_requests(Workload(n, 1e4, LengthDist("const", prompt), LengthDist("const", output)))
    engine = sim.engine
    server = Server(StepCosts(sim), 1e6, engine.max_num_seqs, engine.max_batched_tokens)
    return server.run(reqs)


@pytest.mark.parametrize("name", ["trtllm-0.10", "sglang-0.4", "trtllm-0.6.1", "vllm-0.6"])
def test_every_policy_completes_every_request(name):
    result = _serve(name)
    assert all(r.finish_s is not None and r.generated == r.output for r in result.requests)
    assert result.preemptions == 0


def test_static_batching_runs_one_prefill_and_output_minus_one_decodes():
    # 40 requests in one static batch: one prefill step, then 15 decode steps.
    result = _serve("trtllm-0.6.1")
    assert result.prefill_steps == 1
    assert result.steps == 15


def test_mixed_batching_shares_the_token_budget():
    # trtllm-0.10: budget 2048 tokens -> 40 prompts of 64 tokens = 2560 need >= two
    # steps with prompt chunks, and decodes run in the same steps (no decode-only wait)
    result = _serve("trtllm-0.10")
    assert result.prefill_steps >= 2
    assert result.steps < result.prefill_steps + 16 + 2


def _run_40_queued(engine: EngineProfile) -> tuple[float, int, float]:
    """40 requests of 64 prompt / 16 output tokens, all queued at t~0: (end, steps, scale)."""
    from xpusim.sim.inference.workload import LengthDist

    sim = StepSimulator(load_model("qwen2-0.5b"), load_system("dgx-a100"), ParallelPlan(1),
                        engine)
    reqs = make_requests(Workload(40, 1e9, LengthDist("const", 64), LengthDist("const", 16)))
    server = Server(StepCosts(sim), 1e6, engine.max_num_seqs, engine.max_batched_tokens)
    result = server.run(reqs)
    return max(r.finish_s for r in result.requests), result.steps, sim.engine.host_scale


def test_per_request_host_work_is_paid_once_per_request():
    # A serial-host engine charges request_overhead_s once when a request is admitted,
    # so with every request queued at t~0 (same admissions, same steps) the run is
    # longer by exactly n x request_overhead x host_scale.
    from dataclasses import replace

    base = replace(load_engine("trtllm-0.10"), response_per_token_s=0.0)
    with_r, steps_r, scale = _run_40_queued(replace(base, request_overhead_s=2e-3))
    without, steps_0, _ = _run_40_queued(replace(base, request_overhead_s=0.0))
    assert steps_r == steps_0
    assert with_r - without == pytest.approx(40 * 2e-3 * scale, rel=1e-9)


def test_streamed_response_is_paid_per_generated_token():
    # trtllm-0.10 (serial host, --streaming): one response per active request per
    # iteration, so 40 requests x 16 output tokens cost 640 x response_per_token x scale
    # on top of the same steps; nothing is charged per admission.
    from dataclasses import replace

    base = load_engine("trtllm-0.10")
    assert base.response_per_token_s == pytest.approx(21.05e-6)  # fit: I9 (docs/inference.md)
    assert base.request_overhead_s == 0.0
    with_r, steps_r, scale = _run_40_queued(base)
    without, steps_0, _ = _run_40_queued(replace(base, response_per_token_s=0.0))
    assert steps_r == steps_0
    assert with_r - without == pytest.approx(640 * base.response_per_token_s * scale, rel=1e-9)


def test_tensorrt_llm_0x_attends_every_cached_key():
    # Mistral-7B-v0.1 windows every layer at 4096 keys; TensorRT-LLM 0.x's attention window
    # is max_attention_window_size (max_seq_len unless set), so its engines price none.
    spec = load_model("mistral-7b")
    assert set(spec.layer_windows) == {4096}
    for name in ("trtllm-0.5", "trtllm-0.6.1", "trtllm-0.10", "trtllm-0.17"):
        assert load_engine(name).priced_model(spec).layer_windows == ()
    for name in ("trtllm-1.0", "vllm-0.6"):
        assert load_engine(name).priced_model(spec) is spec


def test_system_hosts_and_unknown_cpu():
    from xpusim.hwprofiles.errors import ProfileError
    from xpusim.hwprofiles.hosts import system_host

    assert system_host("dgx-b200") == "xeon-8570"  # DGX B200 datasheet
    assert system_host("gb200-nvl72") == system_host("gb300-nvl72") == "grace"
    assert system_host("aws-p5") is None
    with pytest.raises(ProfileError, match="unknown host CPU 'pentium'"):
        host_speed("pentium")
