"""CUDA-graph padding of vLLM V0 / V1 and SGLang 0.4 decode steps, and of vLLM V0's
speculative-decoding round (AR step, draft steps, the batch-expanded scoring forward).

Hand-computed values: vLLM V0 captures 1, 2, 4 and 8..256 step 8 (model_runner.py
_BATCH_SIZES_TO_CAPTURE, _get_graph_batch_size), so 12 -> 16, 60 -> 64, 257 -> no graph.
"""

from __future__ import annotations

import pytest
from xpusim.hwprofiles import load_system
from xpusim.sim.inference.engine_profile import load_engine
from xpusim.sim.inference.graph_padding import capture_sizes, padded_batch
from xpusim.sim.inference.lowering import StepBatch
from xpusim.sim.inference.routing import padded_moe_load
from xpusim.sim.inference.speculative import (
    SpeculativeModel,
    all_accepted,
    draft_rows,
    round_graph_sizes,
    scoring_batch,
)
from xpusim.sim.inference.stepcosts import StepCosts
from xpusim.sim.models.hf_config import load_model
from xpusim.sim.parallel import ParallelPlan

V0 = (1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64, 72, 80, 88, 96, 104, 112, 120, 128, 136, 144,
      152, 160, 168, 176, 184, 192, 200, 208, 216, 224, 232, 240, 248, 256)


def _captured(name: str) -> tuple[int, ...]:
    e = load_engine(name)
    return capture_sizes(e.cuda_graph_batch_sizes, e.max_num_seqs, e.max_batched_tokens)


def test_vllm_v0_pads_to_the_next_multiple_of_eight_up_to_256():
    assert load_engine("vllm-0.6").cuda_graph_batch_sizes == V0
    assert load_engine("vllm-0.5").cuda_graph_batch_sizes == V0
    captured = _captured("vllm-0.6")
    assert captured == V0
    pads = {b: padded_batch(b, captured) for b in (1, 2, 3, 5, 12, 20, 28, 60, 100, 256, 257)}
    assert pads == {1: 1, 2: 2, 3: 4, 5: 8, 12: 16, 20: 24, 28: 32, 60: 64, 100: 104,
                    256: 256, 257: 257}


def test_vllm_v1_and_sglang_capture_lists():
    # vLLM v0.10.0: [1, 2, 4] + range(8, 513, 8); decode batches up to max_num_seqs 256.
    nightly = load_engine("vllm-nightly").cuda_graph_batch_sizes
    assert nightly[:5] == (1, 2, 4, 8, 16) and nightly[-1] == 512 and len(nightly) == 67
    assert padded_batch(100, _captured("vllm-nightly")) == 104
    # SGLang v0.4.0: [1, 2, 4] + 8..160 step 8 (cuda_graph_max_bs 160).
    sglang = _captured("sglang-0.4")
    assert sglang[-1] == 160 and len(sglang) == 23
    assert [padded_batch(b, sglang) for b in (3, 150, 160, 161)] == [4, 152, 160, 161]


def test_scoring_forward_shapes():
    v06 = load_engine("vllm-0.6")
    # Batch expansion: 12 requests x (4 + 1) one-token sequences at context 512 + 4/2.
    assert scoring_batch(v06, 12, 4, 512.0) == StepBatch(60, 1, 514.0, "verify")
    # Without it: 12 sequences of 5 query tokens.
    trt = load_engine("trtllm-1.0")
    assert scoring_batch(trt, 12, 4, 512.0) == StepBatch(12, 5, 512.0, "verify")
    assert round_graph_sizes(v06) == (V0, V0)
    graphs, scoring = round_graph_sizes(trt)
    assert graphs and scoring == ()  # TRT-LLM's scoring forward is not padded here


def test_draft_steps_carry_the_bonus_token_rows():
    v06 = load_engine("vllm-0.6")
    assert all_accepted(0.9, 4) == pytest.approx(0.6561)
    assert all_accepted((0.9, 0.8), 2) == pytest.approx(0.72)
    # 12 requests, 65.61% of them ended their last round on the bonus token: 12 + 8 rows.
    assert draft_rows(v06, 12, 0.6561) == 20
    assert draft_rows(v06, 100, 0.6561) == 166
    assert draft_rows(load_engine("trtllm-1.0"), 12, 0.6561) == 12  # no expansion


def test_identical_padding_rows_touch_one_tokens_experts():
    qwen = load_model("qwen2-57b-a14b")  # 64 routed experts, top-8
    load = padded_moe_load(qwen, 16.0, 4.0, 1)
    # 12 real tokens + the 4 dummies' one routing: 64 x (1 - (56/64)^13) = 52.72
    assert load.active_experts == pytest.approx(52.72, abs=0.01)
    assert load.tokens == pytest.approx(16 * 8)  # every row's 8 assignments
    # Distinct rows: 64 x (1 - (56/64)^16) = 56.44
    assert padded_moe_load(qwen, 16.0, 0.0, 1).active_experts == pytest.approx(56.44, abs=0.01)


@pytest.fixture(scope="module")
def qwen_sd():
    return SpeculativeModel(load_model("qwen2-57b-a14b"), load_model("qwen2-0.5b"),
                            load_system("hgx-a800"), ParallelPlan(2), 4, 0.9,
                            load_engine("vllm-0.6"), 512.0)


def test_sd_round_prices_the_padded_batches(qwen_sd):
    m = qwen_sd
    row = m.row(12)
    per_seq = m.target.engine.step_overhead_per_seq_s  # the A800 host is the reference one
    assert m.target.engine.host_scale == 1.0
    # AR: 12 requests run as 16 rows (4 identical dummies) holding 12 x 512 KV tokens;
    # host work of the 12 real sequences.
    ar_dev = m.target.run(StepBatch(16, 1, 384.0, "decode", 4), host=False).time_s
    assert row.t_ar_s == pytest.approx(ar_dev + m.target.engine.step_overhead_s + 12 * per_seq)
    # Scoring: 60 one-token sequences at mean context 514 run as 64 rows.
    v_dev = m.target.run(StepBatch(64, 1, 514.0 * 60 / 64, "verify", 4), host=False).time_s
    assert row.t_verify_s == pytest.approx(v_dev + m.target.engine.step_overhead_s
                                           + 60 * per_seq)
    # Each draft step: 12 requests + round(12 x 0.9^4 = 7.87) = 8 bonus-expanded rows = 20
    # rows, run as 24 at mean context 513.5; host work of the 20 rows, their inputs
    # prepared once per round (vLLM V0 GPU multi-step draft: draft_prepare_once).
    d_dev = m.draft.run(StepBatch(24, 1, 513.5 * 20 / 24, "decode", 4), host=False).time_s
    assert row.t_draft_s == pytest.approx(4 * (d_dev + m.draft.engine.step_overhead_s)
                                          + 20 * per_seq)
    # Padding costs device time: the padded AR step is slower than an unpadded one.
    assert ar_dev > m.target.run(StepBatch(12, 1, 512.0, "decode"), host=False).time_s


def test_captured_sizes_and_too_large_batches_run_unpadded(qwen_sd):
    m = qwen_sd
    row = m.row(16)  # 16 and 16 x 5 = 80 are captured sizes
    assert row.t_ar_s == m.target.run(StepBatch(16, 1, 512.0, "decode")).time_s
    assert row.t_verify_s == m.target.run(StepBatch(80, 1, 514.0, "verify")).time_s
    # 52 x 5 = 260 > 256: the scoring forward has no graph, runs eagerly and unpadded.
    row = m.row(52)
    assert row.t_verify_s == m.target.run(StepBatch(260, 1, 514.0, "verify")).time_s


def test_serving_sd_round_matches_the_study(qwen_sd):
    m = qwen_sd
    costs = StepCosts(m.target, m.draft, 4, graph_sizes=_captured("vllm-0.6"),
                      bonus_share=0.9**4)
    row = m.row(12)
    # The study adds the rejection sampler's device passes; the serving round does not.
    reject_device = row.t_reject_s - m.engine.reject_time(60)
    expected = row.t_sd_round_s - reject_device
    assert costs.sd_round(12, 512.0) == pytest.approx(expected, rel=2e-3)


def test_serving_decode_step_pads_with_identical_rows(qwen_sd):
    m = qwen_sd
    costs = StepCosts(m.target, graph_sizes=_captured("vllm-0.6"))
    engine = m.target.engine
    # A generation-only step of 12 requests at context 512: 16 rows, 4 of them one token
    # to the MoE layers; V0's serial host work of the 12 real requests around it.
    device = m.target.run(StepBatch(16, 1, 384.0, "decode", 4), host=False).time_s
    host = engine.step_host_time(12) + engine.sampling_time(12)
    assert costs.mixed(12, 512.0, [], 12, 0) == pytest.approx(device + host, rel=1e-9)
    distinct = m.target.run(StepBatch(16, 1, 384.0, "decode"), host=False).time_s
    assert distinct > device  # 16 distinct tokens would load more experts
