"""A serving run's KV room reserves activations for the run's own token budget."""

from __future__ import annotations

import pytest
from xpusim.sim.api.infer import load_deployment
from xpusim.sim.api.serve import ServeRequest, run_kv_tokens
from xpusim.sim.inference.kvcache import activation_bytes, kv_bytes_per_token


def _dep():
    req = ServeRequest(model="llama-3.1-70b", system="dgx-h100", tp=1, dtype="fp8",
                       engine="trtllm-0.17")
    return load_deployment(req, lambda *a: {})


def test_the_profile_limits_keep_the_deployment_plan() -> None:
    dep = _dep()
    assert (dep.engine.max_batched_tokens, dep.engine.max_num_seqs) == (8192, 2048)
    assert run_kv_tokens(dep, "fp8", 8192, 2048) == dep.memory.kv_tokens


def test_a_smaller_budget_frees_its_activation_reserve_for_the_cache() -> None:
    # Llama-3.1-70B FP8 on one H100: trtllm-bench builds 128/2048 with a 2,048-token
    # budget and batch 224; the reserve of 8,192 - 2,048 tokens of residual and FFN rows and
    # of 2,048 - 224 fp32 logit rows (kvcache.activation_bytes) becomes KV room at 160 KiB
    # per token (FP8 cache).
    dep = _dep()
    spec = dep.spec
    freed = (activation_bytes(spec, 8192, "fp8", 1, logit_rows=2048)
             - activation_bytes(spec, 2048, "fp8", 1, logit_rows=224))
    assert freed == pytest.approx((6144 * (2 * 8192 + 2 * 28672) + 1824 * 128256 * 4), rel=1e-12)
    per_token = kv_bytes_per_token(spec, "fp8", 1)
    assert per_token == 2 * 80 * 8 * 128
    gained = run_kv_tokens(dep, "fp8", 2048, 224) - dep.memory.kv_tokens
    assert gained == pytest.approx(freed / per_token, rel=1e-9)


def test_logits_only_for_the_sampled_rows() -> None:
    # One logit row per sequence of the step (max_num_seqs), not per token of the budget.
    spec = _dep().spec
    all_rows = activation_bytes(spec, 8192, "fp8", 1)
    sampled = activation_bytes(spec, 8192, "fp8", 1, logit_rows=256)
    assert all_rows - sampled == pytest.approx((8192 - 256) * 128256 * 4)
    assert activation_bytes(spec, 100, "fp8", 1, logit_rows=256) == activation_bytes(
        spec, 100, "fp8", 1)

