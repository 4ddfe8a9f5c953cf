"""The serving engine's decode-attention kernel rule (TensorRT-LLM XQA vs masked MHA).

Hand-computed values on the H100 SXM profile: FP32 CUDA-core peak 67 TFLOP/s at
vector_max 0.7 (2.345e13 FP32 lane operations/s), HBM 3.35 TB/s at memory_max 0.9
(3.015e12 B/s), launch overhead 5 us, 132 SMs.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from xpusim.hwprofiles import load_system
from xpusim.hwprofiles.loader import load_device
from xpusim.sim import ops
from xpusim.sim.cost.attention_impl import AttnShape, KernelCostModel
from xpusim.sim.errors import InputError
from xpusim.sim.inference.decode_attention import (
    EngineAttentionModel,
    GenerationAttention,
    masked_mha_cost,
    masked_mha_row_ops,
    with_engine_attention,
)
from xpusim.sim.inference.engine_profile import load_engine
from xpusim.sim.inference.lowering import StepBatch, StepSimulator
from xpusim.sim.models.hf_config import load_model
from xpusim.sim.parallel import ParallelPlan

H100 = load_device("h100-sxm5-80gb")
XQA_010 = GenerationAttention("xqa-or-masked-mha", (8,), (128, 256))


def _shape(batch: float, heads: float, kv_heads: float, dtype: str = "fp16") -> AttnShape:
    return AttnShape(batch, heads, 1, 1000, 128, 128, kv_heads, True, dtype)


def test_xqa_runs_for_group_8_when_enough_ctas():
    # Llama-2-70B at TP8: 8 query heads, 1 KV head per rank (group 8, head size 128).
    # mayHavePerfGain: 1 x 64 x 4 = 256 >= 132 SMs -> XQA.
    assert not XQA_010.picks_masked_mha(_shape(64, 8, 1), 132)
    # 1 x 32 x 4 = 128 < 132 -> masked MHA.
    assert XQA_010.picks_masked_mha(_shape(32, 8, 1), 132)


def test_groups_without_a_precompiled_kernel_run_masked_mha():
    # Mixtral / Llama-3-8B at TP2: 16 query heads over 4 KV heads = group 4: no cubin.
    assert XQA_010.picks_masked_mha(_shape(1000, 16, 4), 132)
    # MHA (Llama-2-7B): group 1.
    assert XQA_010.picks_masked_mha(_shape(1000, 32, 32), 132)
    # Head size 64 has no cubin either.
    assert XQA_010.picks_masked_mha(AttnShape(1000, 8, 1, 1000, 64, 64, 1, True, "fp16"), 132)


def test_fixed_rules():
    assert GenerationAttention("masked-mha").picks_masked_mha(_shape(1000, 8, 1), 132)
    assert not GenerationAttention().picks_masked_mha(_shape(1, 32, 32), 132)
    with pytest.raises(InputError, match="generation_attention"):
        GenerationAttention("mmha")


def test_masked_mha_row_ops_follow_threads_per_key():
    # Head size 128, 16-bit T: 16 threads per key and per value row, 8 elements each,
    # 4 shuffle rounds. K: 16 x (7 sum adds + 4 shuffle adds + 1 scale) = 192 FP32 lane
    # ops; others 16 x (1 load + 4 shuffles + 6 paged-addressing/mask ops + 2 leader
    # ops) = 208. V: 16 logit conversions; others 16 x (1 load + 1 logit smem load + 6
    # paged-addressing/mask ops) = 128.
    assert masked_mha_row_ops(_shape(1, 1, 1)) == (208.0, 336.0)
    # Head size 64: 8 threads x (7 + 3 + 1) + 8 = 96; 8 x (4 + 8) + 8 x 8 = 160.
    assert masked_mha_row_ops(AttnShape(1, 1, 1, 10, 64, 64, 1, True, "fp16")) == (96.0, 160.0)
    # Head size 256: 32 threads (the cap) x (7 + 5 + 1) + 32 = 448; 32 x (6 + 8) + 32 x 8
    # = 704.
    assert masked_mha_row_ops(AttnShape(1, 1, 1, 10, 256, 256, 1, True, "fp16")) == (448.0, 704.0)


def test_paged_addressing_counts_per_key_and_value_row():
    # The paged-KV terms alone: (6 + 2) per K thread and 6 per V thread, 16 threads each
    # at head size 128 = 224 issued lane ops per key plus value row, none on the FP32 pipe.
    from xpusim.sim.inference import decode_attention as da

    assert da.MMHA_PAGED_ROW_OPS == 6 and da.MMHA_KEY_LEADER_OPS == 2
    fp32, other = masked_mha_row_ops(_shape(1, 1, 1))
    assert (fp32, other - 112.0) == (208.0, 224.0)


def test_contiguous_kv_cache_drops_the_block_table_ops():
    # KVLinearBuffer (TRT-LLM 0.5 engines without --paged_kv_cache): clamp, multiply-add
    # and mask check per thread (3) instead of the paged 6. Head size 128: K others
    # 16 x (1 load + 4 shuffles) + 16 x (3 + 2 leader) = 160, V 16 x (2 + 3) = 80: 240
    # (paged 336); the FP32 work is unchanged (208).
    from xpusim.sim.inference import decode_attention as da

    assert da.MMHA_CONTIGUOUS_ROW_OPS == 3
    assert masked_mha_row_ops(_shape(1, 1, 1), "contiguous") == (208.0, 240.0)
    # Head size 64: 8 threads: 8 x (1 + 3) + 8 x (3 + 2) + 8 x (2 + 3) = 112.
    head64 = AttnShape(1, 1, 1, 10, 64, 64, 1, True, "fp16")
    assert masked_mha_row_ops(head64, "contiguous") == (96.0, 112.0)


def test_contiguous_16bit_group4_is_memory_bound():
    # _shape(100, 16, 4): 8.192e8 + 1.6e6 x 208 = 1.152e9 FP32 lane ops, + 1.6e6 x 240
    # = 1.536e9 issued at 2.345e13: 65.50 us, under the 68.20 us of HBM (paged: 72.05 us,
    # compute-bound).
    cost = masked_mha_cost(H100, _shape(100, 16, 4), "contiguous")
    assert cost.compute_s == pytest.approx(65.501e-6, rel=1e-3)
    assert cost.memory_s == pytest.approx(68.199e-6, rel=1e-3)
    assert cost.bound == "memory"
    # FP8 cache: 3 x 4.096e8 + 3.328e8 + 3.84e8 = 1.9456e9 / 2.345e13 = 82.97 us (paged
    # 89.52 us).
    fp8 = masked_mha_cost(H100, _shape(100, 16, 4, "fp8"), "contiguous")
    assert fp8.compute_s == pytest.approx(82.968e-6, rel=1e-3)


def test_engine_model_passes_the_kv_cache_layout():
    rule = GenerationAttention("masked-mha", kv_cache="contiguous")
    model = EngineAttentionModel(KernelCostModel(H100), H100, rule)
    decode = ops.fused_attention("a", 100, 16, 1, 1000, 128, "fp16", True, 4, 128)
    want = masked_mha_cost(H100, _shape(100, 16, 4), "contiguous").time_s
    assert model.time(decode).time_s == pytest.approx(want)
    assert want < masked_mha_cost(H100, _shape(100, 16, 4)).time_s
    with pytest.raises(InputError, match="kv_cache_layout"):
        GenerationAttention("masked-mha", kv_cache="blocked")


def test_masked_mha_cost_16bit_group4_is_near_balance():
    # batch 100, 16 query heads, 4 KV heads, 1000 keys, head size 128, FP16 K/V.
    # Per element: 100 x 16 x 1000 x 256 = 4.096e8 elements x 2 lane ops = 8.192e8;
    # per row: 1.6e6 rows x 208 = 3.328e8 FP32 lane ops, x 336 = 5.376e8 others.
    # H100 issues 128 lanes/clk x 132 SMs x 1.83 GHz x 0.7 = 2.164e13 < the FP32 rate,
    # so everything issues at 2.345e13: 1.6896e9 / 2.345e13 = 72.05 us.
    # HBM: K/V 100 x 4 x 1000 x 256 x 2 B = 2.048e8 B, Q/O 100 x 16 x 256 x 2 B = 819,200 B;
    # 2.056192e8 / 3.015e12 = 68.20 us: a group of 4 with a 16-bit cache is just
    # CUDA-core bound once the paged addressing is counted.
    cost = masked_mha_cost(H100, _shape(100, 16, 4))
    assert cost.compute_s == pytest.approx(72.051e-6, rel=1e-3)
    assert cost.memory_s == pytest.approx(68.199e-6, rel=1e-3)
    assert cost.bound == "compute"
    assert cost.time_s == pytest.approx(72.051e-6 + 5e-6, rel=1e-3)


def test_masked_mha_mha_16bit_is_memory_bound():
    # MHA (16 query heads over 16 KV heads): 4x the HBM bytes for the same work,
    # 8.200192e8 B / 3.015e12 = 272.0 us against 72.05 us of issue: HBM-bound.
    cost = masked_mha_cost(H100, _shape(100, 16, 16))
    assert cost.bound == "memory"
    assert cost.compute_s == pytest.approx(72.051e-6, rel=1e-3)


def test_masked_mha_cost_8bit_cache_is_compute_bound():
    # FP8 K/V: dequantisation adds 1 lane op per element: 3 x 4.096e8 + 3.328e8 + 5.376e8
    # = 2.0992e9 / 2.345e13 = 89.52 us; HBM halves: 1.028096e8 B / 3.015e12 = 34.10 us.
    cost = masked_mha_cost(H100, _shape(100, 16, 4, "fp8"))
    assert cost.compute_s == pytest.approx(89.518e-6, rel=1e-3)
    assert cost.memory_s == pytest.approx(34.099e-6, rel=1e-3)
    assert cost.bound == "compute"


def test_masked_mha_on_ampere_is_fp32_pipe_bound():
    # A100: 64 FP32 lanes/clk/SM (19.5 TFLOP/s) against 128 issued: the loads and
    # shuffles issue beside the FP32 work, which sets the time: 1.152e9 FP32 lane ops.
    a100 = load_device("a100-sxm4-80gb")
    vmax = a100.efficiency.vector_max
    cost = masked_mha_cost(a100, _shape(100, 16, 4))
    assert cost.compute_s == pytest.approx(1.152e9 / (19.5e12 / 2 * vmax), rel=1e-3)


def test_engine_model_routes_only_one_token_steps():
    inner = KernelCostModel(H100)
    model = EngineAttentionModel(inner, H100, XQA_010)
    decode = ops.fused_attention("a", 100, 16, 1, 1000, 128, "fp16", True, 4, 128)
    assert model.time(decode).time_s == pytest.approx(masked_mha_cost(H100, _shape(100, 16, 4)).time_s)
    prefill = ops.fused_attention("a", 4, 16, 512, 512, 128, "fp16", True, 4, 128)
    assert model.time(prefill).time_s == inner.time(prefill).time_s
    # XQA-eligible decode (group 8, enough CTAs) keeps the fused kernel's price.
    xqa = ops.fused_attention("a", 100, 8, 1, 1000, 128, "fp16", True, 1, 128)
    assert model.time(xqa).time_s == inner.time(xqa).time_s


def test_fused_rule_and_other_vendors_are_not_wrapped():
    inner = KernelCostModel(H100)
    assert with_engine_attention(inner, H100, GenerationAttention()) is inner
    ascend = load_device("ascend-910b2")
    ascend_inner = KernelCostModel(ascend)
    assert with_engine_attention(ascend_inner, ascend, XQA_010) is ascend_inner


def test_trtllm_profiles_carry_their_kernel_rule():
    assert load_engine("trtllm-0.10").generation_kernel() == XQA_010
    assert load_engine("trtllm-0.6.1").generation_kernel().kernel == "masked-mha"
    assert load_engine("trtllm-0.5").generation_kernel().kernel == "masked-mha"
    # v0.5 builds default to the contiguous KV cache (examples/llama/build.py); the
    # in-flight-batching profiles keep the paged one.
    assert load_engine("trtllm-0.5").generation_kernel().kv_cache == "contiguous"
    assert load_engine("trtllm-0.6.1").generation_kernel().kv_cache == "paged"
    assert load_engine("trtllm-0.10").generation_kernel().kv_cache == "paged"
    assert load_engine("trtllm-1.0").generation_kernel().kernel == "fused"
    assert load_engine("vllm-0.6").generation_kernel().kernel == "fused"


def test_profile_rejects_a_bad_kv_cache_layout(tmp_path):
    path = tmp_path / "e.toml"
    path.write_text('kind = "engine"\nname = "e"\n[kernels]\nkv_cache_layout = "blocks"\n')
    with pytest.raises(InputError, match="kv_cache_layout"):
        load_engine(str(path))


def test_profile_rejects_a_bad_group_list(tmp_path):
    path = tmp_path / "e.toml"
    path.write_text('kind = "engine"\nname = "e"\n[kernels]\nxqa_group_sizes = [8, "x"]\n')
    with pytest.raises(InputError, match="xqa_group_sizes"):
        load_engine(str(path))


def test_step_simulator_prices_mixtral_fp8_decode_with_masked_mha():
    spec = load_model("mixtral-8x7b")
    system = load_system("dgx-h100")
    plan = ParallelPlan(tp=2)
    engine = load_engine("trtllm-0.10")
    as_fused = replace(engine, generation_attention="fused")
    batch = StepBatch(512, 1, 2048)
    t_trt = StepSimulator(spec, system, plan, engine, "fp8").run(batch, host=False)
    t_fused = StepSimulator(spec, system, plan, as_fused, "fp8").run(batch, host=False)
    assert t_trt.by_kind["attention"] > t_fused.by_kind["attention"]
    # An explicit attention implementation overrides the engine's rule.
    forced = StepSimulator(spec, system, plan, engine, "fp8", attention_impl="flash2")
    assert forced.run(batch, host=False).by_kind["attention"] < t_trt.by_kind["attention"]


def test_one_token_prefill_keeps_the_context_kernel():
    # A context-phase step runs the context FMHA even for a one-token prompt.
    spec = load_model("mixtral-8x7b")
    system = load_system("dgx-h100")
    plan = ParallelPlan(tp=2)
    engine = load_engine("trtllm-0.10")
    batch = StepBatch(1, 1, 0, "prefill")
    t_trt = StepSimulator(spec, system, plan, engine, "fp8").time_s(batch, host=False)
    as_fused = replace(engine, generation_attention="fused")
    assert t_trt == StepSimulator(spec, system, plan, as_fused, "fp8").time_s(batch, host=False)
