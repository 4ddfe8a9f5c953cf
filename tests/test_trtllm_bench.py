"""trtllm-bench's max_batch_size / max_num_tokens heuristic (sim/inference/trtllm_bench.py).

Expected values are worked by hand from tensorrt_llm/bench/build/tuning.py
(calc_engine_setting, finetune_setting) and bench/benchmark/utils/general.py get_settings.
"""

from dataclasses import replace

import pytest
from xpusim.sim.inference.engine_profile import load_engine
from xpusim.sim.inference.trtllm_bench import (
    BenchInputs,
    bench_settings,
    finetune_setting,
    kv_cache_max_requests,
    run_limits,
)

# Llama-3.1-8B FP8 (FP8 KV) on one 80 GiB GPU, fraction 0.95: engine 8.03e9 B = 7.4785 GiB,
# KV room (80 - 7.4785) x 0.95 = 68.895 GiB; 2 x 32 x 8 x 128 x 1 B = 64 KiB per token.
LLAMA8_H100 = BenchInputs(8.03e9, 32, 8, 128, "fp8", "fp8", 1, 1, 80.0, 0.95)


def test_requests_in_kv_room() -> None:
    # 68.895 GiB / (2176 tokens x 64 KiB = 0.1328 GiB) = 518.7 requests
    assert kv_cache_max_requests(LLAMA8_H100, 128, 2048) == pytest.approx(518.74, abs=0.01)


def test_finetune_rounding() -> None:
    assert finetune_setting(518.74, 128, 2048, 1) == (640, 2048)  # 128 x ceil(4.05); floor 2048
    assert finetune_setting(4409.0, 128, 128, 1) == (4096, 8192)  # capped at 4096; 2 x 4096
    assert finetune_setting(20.0, 128, 128, 1) == (64, 2048)  # minimum 64 and 2048
    assert finetune_setting(205.23, 5000, 500, 1) == (224, 2304)  # 2257.6 -> 256 x 9


@pytest.mark.parametrize(
    ("isl", "osl", "expected"),
    [
        (128, 2048, (640, 2048)),
        (128, 128, (4096, 8192)),  # 4409 requests fit; cap 4096
        (5000, 500, (224, 5224)),  # no chunked prefill: max_isl 5000 + 224
    ],
)
def test_bench_settings(isl: int, osl: int, expected: tuple[int, int]) -> None:
    assert bench_settings(LLAMA8_H100, isl, osl, isl) == expected


def test_70b_tp1_h200() -> None:
    # 70.55e9 B = 65.70 GiB; (141 - 65.70) x 0.95 = 71.53 GiB; 160 KiB per token;
    # 2176 tokens: 215.4 requests -> 224; 215.4 x 17 = 3662 tokens -> 3840.
    inp = BenchInputs(70.55e9, 80, 8, 128, "fp8", "fp8", 1, 1, 141.0, 0.95)
    assert bench_settings(inp, 2048, 128, 2048) == (224, 3840)


def test_profile_switch() -> None:
    engine = load_engine("trtllm-1.0")
    assert engine.batch_heuristic == "trtllm-bench"
    fixed = replace(engine, batch_heuristic="none")
    assert run_limits(fixed, None, None, None, "fp8", []) == (  # type: ignore[arg-type]
        fixed.max_num_seqs,
        fixed.max_batched_tokens,
    )


def test_engine_build_flow_keeps_the_heuristic_token_budget() -> None:
    # TensorRT-engine flow (trtllm-bench build --dataset; throughput with chunked
    # context): 5000/500 keeps finetune's 2304 tokens (256 x ceil(2257.6 / 256)) instead
    # of the PyTorch flow's max_isl + max_batch_size = 5224; other lengths are unchanged.
    assert bench_settings(LLAMA8_H100, 5000, 500, 5000, chunked=True) == (224, 2304)
    assert bench_settings(LLAMA8_H100, 128, 2048, 128, chunked=True) == (640, 2048)


def test_trtllm_017_profile_uses_the_engine_build_flow() -> None:
    engine = load_engine("trtllm-0.17")
    assert engine.batch_heuristic == "trtllm-bench-build"
    assert not engine.cuda_graphs
    assert engine.memory_utilization == 0.95
    assert engine.response_per_token_s == 0.0  # trtllm-bench throughput does not stream
