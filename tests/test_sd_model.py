"""Speculative decoding: formulas, and the MoESD findings as checks against the paper."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from xpusim.hwprofiles import load_system
from xpusim.sim.errors import InputError
from xpusim.sim.inference.engine_fit import FIT_PARAMS, device_times, peak_speedup
from xpusim.sim.inference.engine_profile import load_engine
from xpusim.sim.inference.moesd_reference import (
    FIT_SELECTION,
    compare_peaks,
    load_reference,
    rescaling_baseline,
)
from xpusim.sim.inference.speculative import (
    SpeculativeModel,
    band_width,
    expected_tokens,
    head_spec,
    peak,
    rejection_device_time,
    rejection_ops,
    sigma_to_alpha,
)
from xpusim.sim.models.hf_config import load_model
from xpusim.sim.parallel import ParallelPlan

REF = load_reference()
BATCHES = REF.batches


@pytest.fixture(scope="module")
def a800():
    return load_system("hgx-a800")


@pytest.fixture(scope="module")
def vllm():
    return load_engine("vllm-0.6")


def _sweep(system, engine, target, draft, gamma=4, alpha=0.95, **kw):
    t = load_model(target) if isinstance(target, str) else target
    d = draft if draft in ("eagle", "mtp") else load_model(draft)
    return SpeculativeModel(t, d, system, ParallelPlan(2), gamma, alpha, engine, **kw).sweep(
        BATCHES
    )


@pytest.fixture(scope="module")
def qwen_rows(a800, vllm):
    return _sweep(a800, vllm, "qwen2-57b-a14b", "qwen2-0.5b")


@pytest.fixture(scope="module")
def opt_rows(a800, vllm):
    return _sweep(a800, vllm, "opt-30b", "opt-350m")


def test_expected_tokens_leviathan():
    assert expected_tokens(0.95, 4) == pytest.approx((1 - 0.95**5) / 0.05)
    assert expected_tokens(0.0, 4) == 1.0
    assert expected_tokens(1.0, 3) == 4.0
    # Per-position rates: 1 + a1 + a1 a2 + ...
    assert expected_tokens((0.9, 0.5), 2) == pytest.approx(1 + 0.9 + 0.45)
    with pytest.raises(InputError):
        expected_tokens((0.9,), 2)


@given(gamma=st.integers(1, 8), alpha=st.floats(0.01, 0.99))
def test_sigma_alpha_round_trip(gamma, alpha):
    sigma = expected_tokens(alpha, gamma) / (gamma + 1)
    assert sigma_to_alpha(sigma, gamma) == pytest.approx(alpha, abs=1e-6)


def test_sigma_of_the_paper_converts():
    # Table 1 Qwen2 humaneval T=0, gamma=4: sigma 0.91 -> alpha ~0.95 (MoESD notes).
    assert sigma_to_alpha(0.91, 4) == pytest.approx(0.953, abs=0.002)


def test_round_is_the_sum_of_its_parts(qwen_rows):
    for r in qwen_rows:
        assert r.t_sd_round_s == pytest.approx(r.t_draft_s + r.t_verify_s + r.t_reject_s)
        assert r.speedup == pytest.approx(r.expected_tokens * r.t_ar_s / r.t_sd_round_s)
        assert r.target_efficiency == pytest.approx(r.t_ar_s / r.t_verify_s)
        assert r.experts_loaded >= r.experts_loaded_ar


def test_rejection_sampler_is_a_priced_memory_pass(a800, vllm):
    """t_reject = two fp32 passes over B x gamma x vocab probabilities (hand-computed)."""
    b, g, vocab = 12, 4, 151_936
    first, second = rejection_ops(b, g, vocab)
    numel = b * g * vocab
    assert first.main_bytes == pytest.approx(numel * 4 * 3)  # read target + draft, write
    assert second.main_bytes == pytest.approx(numel * 4 * 2)  # read recovered, write noise
    dev = vllm.device_for_step(a800.device, None)  # runs eagerly, outside CUDA graphs
    eff = dev.efficiency
    bw = dev.hbm_bandwidth * eff.memory_max
    expected = sum(
        (n + eff.memory_half_bytes) / bw + eff.launch_overhead_s for n in (numel * 12, numel * 8)
    )
    assert rejection_device_time(dev, b, g, vocab) == pytest.approx(expected)


def test_reject_time_grows_with_batch_and_is_in_the_round(qwen_rows):
    rej = [r.t_reject_s for r in qwen_rows]
    assert all(x > 0 for x in rej)
    assert all(a < b for a, b in zip(rej, rej[1:], strict=False))


def test_moe_speedup_rises_then_falls_with_peak_at_medium_batch(qwen_rows):
    s = [r.speedup for r in qwen_rows]
    best = peak(qwen_rows)
    assert 8 <= best.batch <= 32
    assert best.speedup > s[0] * 1.1  # rises from batch 1 ...
    assert s[-1] < best.speedup / 1.5  # ... and falls by batch 100


def test_moe_target_efficiency_rises_then_falls(qwen_rows):
    eff = [r.target_efficiency for r in qwen_rows]
    top = int(np.argmax(eff))
    assert 0 < top < len(eff) - 1
    assert eff[top] > eff[0] + 0.05 and eff[top] > eff[-1] + 0.1


def test_dense_speedup_falls(opt_rows):
    s = np.array([r.speedup for r in opt_rows])
    assert int(np.argmax(s)) == 0
    # With the library choosing the GEMM block shape per problem, the dense speedup
    # falls monotonically with batch (MoESD Fig. 1/5; issue 6). Convex since the
    # 2026-12-06 refit (the per-sequence host term carries the fixed one), so the linear
    # correlation is a loose check; the monotonic fall below is the claim.
    assert np.corrcoef(BATCHES, s)[0, 1] < -0.75
    assert all(s[i] <= s[i - 1] for i in range(1, len(s))), s


def test_moe_beats_dense_above_batch_16(qwen_rows, opt_rows):
    for q, o in zip(qwen_rows, opt_rows, strict=True):
        if q.batch >= 16:
            assert q.speedup > o.speedup, q.batch


@pytest.mark.slow
def test_sparser_topk_moves_peak_later_and_widens_band(a800, vllm):
    qwen = load_model("qwen2-57b-a14b")
    interior, bands = {}, {}
    for k in (16, 8, 4):
        rows = _sweep(a800, vllm, replace(qwen, moe=replace(qwen.moe, top_k=k)), "qwen2-0.5b")
        # The saturation hump (B >= 4); at K=4 the attention/shared-expert share makes
        # batch 1 about as good (documented in docs/speculative_decoding.md).
        interior[k] = peak([r for r in rows if r.batch >= 4]).batch
        bands[k] = band_width(rows)[1]
    assert interior[16] <= interior[8] <= interior[4]
    assert bands[16] < bands[8] < bands[4]


def test_very_sparse_topk_decreases(a800, vllm):
    """The paper's exception: K = 1, 2 on Qwen2 (attention-dominated) fall continuously."""
    qwen = load_model("qwen2-57b-a14b")
    rows = _sweep(a800, vllm, replace(qwen, moe=replace(qwen.moe, top_k=1)), "qwen2-0.5b")
    assert peak(rows).batch == 1


@pytest.mark.slow
def test_table1_peak_speedups_and_skill(a800, vllm):
    """All 24 peak speedups of MoESD Table 1 (2xA800); 6 were used to fit the engine.

    Per row within 17%: since the draft's bonus-token rows (2026-12-06) Qwen2 mtbench T0
    gamma 4 reads +15.7%, since the draft's inputs are prepared once per round (vLLM V0
    GPU multi-step, same day) +16.4% (the acceptance-rescaling baseline: +10.7%; the
    paper's gamma 4 there is below its gamma 3, 1.19 vs 1.29). Skill (issue 17):
    on the 18 held-out rows the model's median |error| beats the naive baseline that
    rescales the fitted row of the same pair and gamma by acceptance."""
    results = compare_peaks(REF.table1, load_model, a800, 2, vllm, BATCHES)
    assert len(results) == 24
    for c in results:
        assert abs(c.error) <= 0.17, c.as_dict()
    held_out = [c for c in results if not FIT_SELECTION(c.case)]
    assert len(held_out) == 18
    fitted = [c for c in REF.table1 if FIT_SELECTION(c)]
    base_err = []
    for c in held_out:
        base = rescaling_baseline(c.case, fitted)
        assert base is not None
        base_err.append(abs(base / c.case.peak_speedup - 1.0))
    model_err = [abs(c.error) for c in held_out]
    assert np.median(model_err) < np.median(base_err), (np.median(model_err), np.median(base_err))


def test_table2_reference_rows():
    """MoESD Table 2: Qwen2 on 2xH800, 4xA800 and 4xL40, 12 peaks each, the headline one
    of them; the acceptance-rescaling baseline has a fitted row for every one."""
    platforms = [pc.platform for pc in REF.table2]
    assert {p: platforms.count(p) for p in set(platforms)} == {
        "2xhgx-h800": 12,
        "4xhgx-a800": 12,
        "4xpcie-l40": 12,
    }
    h = REF.headline
    assert [
        pc for pc in REF.table2
        if (pc.system, pc.devices, pc.case) == (REF.headline_system, REF.headline_devices, h)
    ]
    fitted = [c for c in REF.table1 if FIT_SELECTION(c)]
    assert all(rescaling_baseline(pc.case, fitted) is not None for pc in REF.table2)


@pytest.mark.slow
def test_table2_platform_transfer(vllm):
    """The 36 held-out peaks of MoESD Table 2, predicted without refitting (2026-12-07:
    other-platform median |error| 8.4%, bias -7.4%; the rescaling baseline 4.4%, -1.5%).
    Per row within 20% (4xA800 HumanEval T=0 gamma 4 reads -17.8%). The paper's
    orderings the model keeps: 4xA800 below 2xA800, 4xL40 above 4xA800 (HumanEval T=0
    gamma 4); it does not keep 2xH800 above 2xA800 (docs/speculative_decoding.md)."""
    peaks = {}
    for pc in REF.table2:
        cmp = compare_peaks([pc.case], load_model, load_system(pc.system), pc.devices, vllm,
                            BATCHES)[0]
        assert abs(cmp.error) <= 0.20, (pc.platform, cmp.as_dict())
        peaks[(pc.platform, pc.case.label)] = cmp.model_speedup
    a800_2 = compare_peaks([c for c in REF.table1 if c.label == REF.headline.label],
                           load_model, load_system("hgx-a800"), 2, vllm, BATCHES)[0]
    a800_4 = peaks[("4xhgx-a800", REF.headline.label)]
    assert a800_4 < a800_2.model_speedup
    assert peaks[("4xpcie-l40", REF.headline.label)] > a800_4


def test_fit_decomposition_matches_full_model(a800, vllm):
    """engine_fit adds host terms to device times; that must equal the full simulation."""
    case = next(c for c in REF.table1 if FIT_SELECTION(c))
    times = device_times(case, load_model, a800, 2, vllm, BATCHES)
    params = np.array([getattr(vllm, p) for p in FIT_PARAMS])
    full = compare_peaks([case], load_model, a800, 2, vllm, BATCHES)[0]
    assert peak_speedup(times, params) == pytest.approx(full.model_speedup, rel=1e-9)


def test_heads():
    mixtral = load_model("mixtral-8x7b")
    eagle, fc = head_spec(mixtral, "eagle")
    assert eagle.layers == 1 and eagle.moe is None and eagle.ffn == 14336 and fc == 2 * 4096
    mtp, _ = head_spec(load_model("deepseek-v3"), "mtp")
    assert mtp.layers == 1 and mtp.is_moe_layer(0)
    with pytest.raises(InputError):
        head_spec(mixtral, "medusa")
