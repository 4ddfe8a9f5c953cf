"""trtllm-bench's batching heuristic: max_batch_size and max_num_tokens per run.

``trtllm-bench throughput`` (TensorRT-LLM 1.0, PyTorch backend) run without
``--max_batch_size``/``--max_num_tokens`` -- as the v1.0 perf-overview runs are
(docs/source/performance/perf-overview.md, "Running the Benchmark": only
``--extra_llm_api_options`` with a CUDA-graph list) -- picks both from the model, the
quantisation, the mapping, the GPU memory and the dataset's mean ISL/OSL:

- tensorrt_llm/bench/benchmark/utils/general.py ``get_settings`` calls
  ``get_benchmark_engine_settings`` (bench/build/build.py) with the dataset's avg_isl /
  avg_osl and ``kv_cache_free_gpu_mem_fraction``; without chunked prefill (the default)
  it then raises max_num_tokens to at least ``max_isl + max_batch_size``.
- tensorrt_llm/bench/build/tuning.py ``calc_engine_setting``: KV bytes per token
  (2 x layers x max(tp, kv_heads) x head_size x KV bytes), engine size (parameters x
  weight bytes), KV room = (NVML total GiB x GPUs - engine) x fraction, requests that fit
  at ISL+OSL; ``finetune_setting`` rounds both up ("slightly optimistic").

This module reproduces those two functions; ``serve`` uses the result in place of the
engine profile's fixed ``max_num_seqs``/``max_batched_tokens`` when the profile says
``batch_heuristic = "trtllm-bench"``.

``batch_heuristic = "trtllm-bench-build"`` is the TensorRT-engine flow of the same tool
(``trtllm-bench build --dataset``, then ``throughput --engine_dir``; TensorRT-LLM 0.17's
perf-overview): ``build_command`` (bench/build/build.py) sets the engine's max_batch_size
and max_num_tokens from ``calc_engine_setting`` at the dataset's avg ISL/OSL, and the
throughput run takes the engine's values with chunked context on (INFERRED from that
table, whose 20000-token prompts ran on engines the heuristic gives 2048 tokens), so no
max_num_tokens floor of ``max_isl + max_batch_size`` is applied: a long prompt is
prefilled in max_num_tokens chunks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from xpusim.hwprofiles.spec import System
from xpusim.sim.inference.engine_profile import BATCH_HEURISTICS, EngineProfile
from xpusim.sim.inference.kvcache import kv_cache_dtype
from xpusim.sim.inference.workload import Request
from xpusim.sim.models.counting import param_counts
from xpusim.sim.models.spec import ModelSpec
from xpusim.sim.parallel import ParallelPlan

GIB = 1024**3
# tuning.py BYTES_PER_ELEM (QuantAlgo.NO_QUANT 2, FP8 1, FP8_BLOCK_SCALES 1, NVFP4 0.5;
# anything else .get(..., 2)).
_BYTES_PER_ELEM = {"bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "nvfp4": 0.5, "fp4": 0.5}


@dataclass(frozen=True)
class BenchInputs:
    """What calc_engine_setting reads, in the units it reads them."""

    param_count: float  # ModelConfig.param_count
    layers: int  # num_attention_layers
    kv_heads: int  # num_key_value_heads
    head_size: int
    weight_dtype: str  # quant_config.quant_algo
    kv_dtype: str  # quant_config.kv_cache_quant_algo
    tp: int
    pp: int
    device_memory_gib: float  # get_device_memory(): NVML total / 2**30, one GPU
    kv_fraction: float  # kv_cache_free_gpu_mem_fraction


def kv_cache_max_requests(inp: BenchInputs, isl: float, osl: float) -> float:
    """calc_engine_setting: requests that fit in the KV room at ISL+OSL tokens each."""
    kv_bytes = _BYTES_PER_ELEM.get(inp.kv_dtype, 2.0)
    byte_per_token = 2 * inp.layers * max(inp.tp, inp.kv_heads) * inp.head_size * kv_bytes / GIB
    engine_size = inp.param_count * _BYTES_PER_ELEM.get(inp.weight_dtype, 2.0) / GIB
    available = inp.device_memory_gib * inp.tp * inp.pp - engine_size
    cache_memory = available * inp.kv_fraction
    return cache_memory / (byte_per_token * (isl + osl))


def _round_up(x: float, ladder: tuple[tuple[float, int], ...], floor: int) -> int:
    """Round ``x`` up to a multiple of the step of the first (bound, step) with x < bound,
    at least ``floor`` (tuning.py rounds batch size and token count this way)."""
    step = next(step for bound, step in ladder if x < bound)
    return max(floor, step * math.ceil(x / step))


# tuning.py finetune_setting: batch size to 32 below 256, 128 below 1024, else 256 (at
# least 64); tokens to 256 below 4096, 512 below 8192, else 1024 (at least 2048). The
# floors only bind in the first band.
_BS_LADDER = ((256, 32), (1024, 128), (math.inf, 256))
_TOKEN_LADDER = ((4096, 256), (8192, 512), (math.inf, 1024))


def finetune_setting(max_requests: float, isl: float, osl: float, pp: int) -> tuple[int, int]:
    """tuning.py finetune_setting (optimistic tuning): (max_batch_size, max_num_tokens)."""
    raw_bs = min(max_requests, 4096) / pp
    raw_token = min(raw_bs * (1 + isl / osl), 32768)
    return _round_up(raw_bs, _BS_LADDER, 64), _round_up(raw_token, _TOKEN_LADDER, 2048)


def bench_settings(
    inp: BenchInputs, avg_isl: float, avg_osl: float, max_isl: int, chunked: bool = False
) -> tuple[int, int]:
    """general.py get_settings (``chunked`` False: the PyTorch flow without chunked
    prefill) or build.py build_command (``chunked`` True: the TensorRT-engine flow):
    (max_batch_size, max_num_tokens)."""
    max_bs, max_tokens = finetune_setting(
        kv_cache_max_requests(inp, avg_isl, avg_osl), avg_isl, avg_osl, inp.pp
    )
    if chunked:
        return max_bs, max_tokens
    # "Chunked prefill is disabled ... Forcing max_num_tokens to max_isl + max_batch_size".
    return max_bs, max(max_tokens, max_isl + max_bs)


def run_limits(
    engine: EngineProfile,
    spec: ModelSpec,
    system: System,
    plan: ParallelPlan,
    dtype: str,
    requests: Sequence[Request],
) -> tuple[int, int]:
    """(max_num_seqs, max_batched_tokens) of a --serve run with this engine.

    The profile's fixed values unless it sets ``batch_heuristic = "trtllm-bench"`` (or
    ``"trtllm-bench-build"``); then trtllm-bench's choice for this model, mapping, GPU and
    dataset. The GPU memory is the
    device profile's HBM capacity (GiB), standing for NVML's total (a little less on the
    card: 79.6 GiB on an H100 80GB); the KV dtype is the run's KV-cache format
    (``kvcache.kv_cache_dtype``: FP8 for an NVFP4 checkpoint), as in the memory plan.
    """
    if engine.batch_heuristic not in BATCH_HEURISTICS or not requests:
        return engine.max_num_seqs, engine.max_batched_tokens
    inp = BenchInputs(
        param_count=float(param_counts(spec).total),
        layers=spec.layers,
        kv_heads=spec.kv_heads,
        head_size=spec.head_dim,
        weight_dtype=dtype,
        kv_dtype=kv_cache_dtype(dtype),
        tp=plan.tp,
        pp=plan.pp,  # the heuristic's own PP term (finetune_setting: batch / pp)
        device_memory_gib=system.device.hbm_capacity / GIB,
        kv_fraction=engine.memory_utilization,
    )
    avg_isl = sum(r.prompt for r in requests) / len(requests)
    avg_osl = sum(r.output for r in requests) / len(requests)
    return bench_settings(inp, avg_isl, avg_osl, max(r.prompt for r in requests),
                          chunked=engine.batch_heuristic == "trtllm-bench-build")
