"""vLLM V0's GPU multi-step draft: the draft's inputs are prepared once per SD round.

Source: vllm/spec_decode/multi_step_worker.py ``sampler_output`` and
draft_model_runner.py ``TP1DraftModelRunner.execute_model`` (v0.5.5 .. v0.6.3.post1):
one ``execute_model`` call with ``num_steps = gamma``, inputs advanced on the GPU.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from xpusim.hwprofiles import load_system
from xpusim.sim.inference.engine_profile import EngineProfile, load_engine
from xpusim.sim.inference.lowering import StepBatch
from xpusim.sim.inference.speculative import SpeculativeModel, draft_steps_time
from xpusim.sim.models.hf_config import load_model
from xpusim.sim.parallel import ParallelPlan

ENGINE = EngineProfile(
    name="t", description="t", step_overhead_per_seq_s=100e-6, draft_prepare_once=True
)


def test_per_sequence_host_paid_once_per_round():
    # step 2 ms (device + host of 10 rows at 100 us = 1 ms), gamma 4:
    # 4 x 2 ms - 3 x 1 ms = 5 ms (not 8 ms).
    assert draft_steps_time(ENGINE, 2e-3, 10, 4) == pytest.approx(5e-3)
    # gamma 1: one step, nothing saved.
    assert draft_steps_time(ENGINE, 2e-3, 10, 1) == pytest.approx(2e-3)


def test_host_scale_applies_to_the_saved_term():
    # A host 0.75x the reference: per-sequence 75 us, 10 rows 0.75 ms saved 3 times:
    # 4 x 2 ms - 3 x 0.75 ms = 5.75 ms.
    fast = replace(ENGINE, host_scale=0.75)
    assert draft_steps_time(fast, 2e-3, 10, 4) == pytest.approx(5.75e-3)


def test_off_or_overlapped_host_keeps_gamma_full_steps():
    assert draft_steps_time(replace(ENGINE, draft_prepare_once=False), 2e-3, 10, 4) == (
        pytest.approx(8e-3))
    assert draft_steps_time(replace(ENGINE, host_overlap="output"), 2e-3, 10, 4) == (
        pytest.approx(8e-3))


def test_vllm_profiles_carry_the_flag_and_the_refit():
    for name in ("vllm-0.6", "vllm-0.5"):
        eng = load_engine(name)
        assert eng.draft_prepare_once
        assert eng.step_overhead_per_seq_s == pytest.approx(320.6e-6)
        assert eng.draft_step_overhead_s == 0.0
        assert eng.step_overhead_s == 0.0


def test_h800_headline_round_books_the_draft_rows_once():
    """2xH800 (host 0.752x the A800's), Qwen2-57B-A14B + Qwen2-0.5B, gamma 4, B = 12:
    12 + round(12 x 0.9^4 = 7.87) = 20 draft rows; host per round 20 x 320.6 us x scale,
    not 4 x that."""
    m = SpeculativeModel(load_model("qwen2-57b-a14b"), load_model("qwen2-0.5b"),
                         load_system("hgx-h800"), ParallelPlan(2), 4, 0.9,
                         load_engine("vllm-0.6"), 512.0)
    scale = m.draft.engine.host_scale
    assert scale == pytest.approx(0.752, abs=1e-3)
    d_dev = m.draft.run(StepBatch(24, 1, 513.5 * 20 / 24, "decode", 4), host=False).time_s
    row = m.row(12)
    assert row.t_draft_s == pytest.approx(4 * d_dev + 20 * 320.6e-6 * scale)
