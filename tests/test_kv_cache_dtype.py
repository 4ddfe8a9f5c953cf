"""The KV cache's format under a narrow weight format (sim/inference/kvcache.kv_cache_dtype).

ModelOpt's NVFP4 checkpoints keep an FP8 KV cache (hf_ptq.py --kv_cache_qformat default
"fp8"; hf_quant_config.json "kv_cache_quant_algo": "FP8"), so a --dtype nvfp4 run sizes,
reads and plans its cache at 1 byte per element, not NVFP4's 0.5625. Values by hand.
"""

from __future__ import annotations

import pytest
from xpusim.hwprofiles import load_system
from xpusim.sim import ops
from xpusim.sim.inference.engine_profile import load_engine
from xpusim.sim.inference.kvcache import in_kv_format, kv_cache_dtype, plan_memory
from xpusim.sim.inference.lowering import StepBatch, StepSimulator, step_blocks
from xpusim.sim.inference.trtllm_bench import run_limits
from xpusim.sim.inference.workload import Request
from xpusim.sim.ir import Op, OpKind
from xpusim.sim.models.hf_config import load_model
from xpusim.sim.parallel import ParallelPlan

LLAMA70 = load_model("llama-3.1-70b")  # 80 layers, 8 KV heads of 128, 70,553,706,496 params
GIB = 2**30


def test_nvfp4_caches_fp8_others_their_own() -> None:
    assert kv_cache_dtype("nvfp4") == "fp8"
    for dtype in ("fp8", "bf16", "fp16", "mxfp4", "int8"):
        assert kv_cache_dtype(dtype) == dtype


def test_memory_plan_prices_an_fp8_token() -> None:
    # 2 (K, V) x 8 heads x 128 x 80 layers x 1 B = 163,840 B per token at TP1 (NVFP4's
    # 0.5625 B would give 92,160); 180 GiB x 0.95 - weights - activations over it.
    plan = plan_memory(LLAMA70, 180 * GIB, 1, 1, "nvfp4", 0.95, 8192)
    assert plan.kv_bytes_per_token == 163_840
    assert plan.kv_tokens == pytest.approx(plan.kv_cache / 163_840)
    assert plan_memory(LLAMA70, 180 * GIB, 1, 1, "fp8", 0.95, 8192).kv_bytes_per_token == 163_840
    assert plan_memory(LLAMA70, 180 * GIB, 1, 1, "bf16", 0.95, 8192).kv_bytes_per_token == 327_680


def test_attention_op_in_kv_format() -> None:
    # 4 sequences, 64 query heads x 1 token, 8 KV heads x 1024 keys, head 128:
    # elements 4 x (64 x 256 + 8 x 1024 x 256) = 8,454,144 -> 8,454,144 B at FP8.
    op = ops.fused_attention("attn", 4, 64, 1, 1024, 128, "nvfp4", True, 8)
    assert op.bytes["hbm"] == pytest.approx(8_454_144 * 0.5625)
    fp8 = in_kv_format(op, "nvfp4")
    assert fp8.dtype == "fp8" and fp8.bytes["hbm"] == pytest.approx(8_454_144)
    assert fp8.flops == op.flops and fp8.shape == op.shape
    gemm = ops.gemm("qkv", 4, 10240, 8192, "nvfp4")
    assert in_kv_format(gemm, "nvfp4") is gemm
    same = ops.fused_attention("attn", 4, 64, 1, 1024, 128, "fp8", True, 8)
    assert in_kv_format(same, "fp8") is same


def test_decode_step_reads_fp8_kv() -> None:
    # Decode, 4 sequences at context 1024 (1025 keys with the new token), TP1:
    # 4 x (64 x 256 + 8 x 1025 x 256) = 8,462,336 B per layer's attention core.
    blocks = step_blocks(LLAMA70, StepBatch(4, 1, 1024), ParallelPlan(tp=1), "nvfp4")
    cores = [it for block, _ in blocks for it in block
             if isinstance(it, Op) and it.kind == OpKind.ATTENTION]
    assert cores and all(c.dtype == "fp8" for c in cores)
    assert cores[0].bytes["hbm"] == pytest.approx(8_462_336)
    # the step reports the KV it reads at FP8: 4 x 1024 x 163,840 B
    sim = StepSimulator(LLAMA70, load_system("dgx-b200"), ParallelPlan(tp=1),
                        load_engine("trtllm-1.0"), "nvfp4")
    assert sim.run(StepBatch(4, 1, 1024)).kv_bytes_read == pytest.approx(4 * 1024 * 163_840)


def test_trtllm_bench_sizes_the_batch_with_fp8_kv() -> None:
    # B200 (180 GiB), TP1, 128/2048: engine 70,553,706,496 x 0.5 B = 32.854 GiB;
    # (180 - 32.854) x 0.95 = 139.79 GiB; 2176 tokens x 163,840 B = 0.33203 GiB a request:
    # 421.0 requests -> 128 x ceil(3.29) = 512; tokens 447 -> 2048. (NVFP4 KV: 842 -> 896.)
    reqs = [Request(i, 0.0, 128, 2048) for i in range(8)]
    limits = run_limits(load_engine("trtllm-1.0"), LLAMA70, load_system("dgx-b200"),
                        ParallelPlan(tp=1), "nvfp4", reqs)
    assert limits == (512, 2048)
