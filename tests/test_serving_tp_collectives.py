"""A quantised model's activations are 16-bit: TP collectives, norms, residuals (issue 17).

TensorRT-LLM's FP8 configurations keep ``"dtype": "float16"`` and all-reduce the 16-bit
output of the FP8 GEMM (RowLinear.multiply_reduce); the expected buffers below are
computed by hand from the model shapes.
"""

from xpusim.sim.inference.lowering import StepBatch, flatten, sixteen_bit_activations, step_blocks
from xpusim.sim.ir import CollectiveKind, Op, OpKind
from xpusim.sim.models.hf_config import load_model
from xpusim.sim.parallel import ParallelPlan
from xpusim.sim.workloads.transformer import CommNeed


def _tp_reduces(dtype: str, tp: int = 8, sequences: int = 10) -> list[CommNeed]:
    spec = load_model("llama-2-70b")
    items = flatten(step_blocks(spec, StepBatch(sequences=sequences, q_len=1, context=512),
                       ParallelPlan(tp=tp), dtype))
    return [it for it in items if isinstance(it, CommNeed) and it.name.endswith("_tp_reduce")]


def test_fp8_tp_all_reduce_is_16_bit() -> None:
    # 10 decode tokens x hidden 8192 x 2 bytes = 163,840 bytes per all-reduce; two per
    # layer (attention output, FFN output) over 80 layers.
    reduces = _tp_reduces("fp8")
    assert len(reduces) == 160
    assert {r.nbytes for r in reduces} == {10 * 8192 * 2}
    assert {r.kind for r in reduces} == {CollectiveKind.ALL_REDUCE}


def test_fp8_and_fp16_tp_all_reduce_carry_the_same_bytes() -> None:
    assert [r.nbytes for r in _tp_reduces("fp8")] == [r.nbytes for r in _tp_reduces("fp16")]


def test_16_bit_dtype_is_unchanged() -> None:
    items = [CommNeed("x_tp_reduce", CollectiveKind.ALL_REDUCE, 100.0, "tp")]
    assert sixteen_bit_activations(items, "bf16") == items


def test_int4_weights_scale_by_four_and_ep_all_to_all_is_left_alone() -> None:
    tp = CommNeed("x_tp_reduce", CollectiveKind.ALL_REDUCE, 100.0, "tp")
    ep = CommNeed("moe_dispatch", CollectiveKind.ALL_TO_ALL, 100.0, "ep")
    out = sixteen_bit_activations([tp, ep], "int4")
    assert out[0].nbytes == 400.0  # 0.5 byte -> 2 bytes per element
    assert out[1] is ep
    assert sixteen_bit_activations([tp, ep], "fp8")[0].nbytes == 200.0


def test_fp8_norms_and_residuals_are_16_bit_and_gemms_stay_fp8() -> None:
    # 10 tokens x hidden 8192: RMSNorm reads and writes one 16-bit row per token,
    # 10 x 8192 x (2 + 2) = 327,680 bytes (the per-channel weight is 8192 x 2 more);
    # the FP8 and FP16 steps price the same norm, residual and embedding bytes.
    spec = load_model("llama-2-70b")
    batch = StepBatch(sequences=10, q_len=1, context=512)
    fp8 = flatten(step_blocks(spec, batch, ParallelPlan(tp=8), "fp8"))
    fp16 = flatten(step_blocks(spec, batch, ParallelPlan(tp=8), "fp16"))
    by_name = {it.name: it for it in fp16 if isinstance(it, Op)}
    for it in fp8:
        if not isinstance(it, Op):
            continue
        if it.kind in (OpKind.NORM, OpKind.ELEMENTWISE, OpKind.EMBEDDING):
            assert it.dtype == "fp16"
            assert it.bytes == by_name[it.name].bytes, it.name
        elif it.kind == OpKind.GEMM:
            assert it.dtype == "fp8"
    qkv8 = next(it for it in fp8 if isinstance(it, Op) and it.name == "qkv_proj")
    assert qkv8.main_bytes < by_name["qkv_proj"].main_bytes


def test_lm_head_16bit_doubles_the_fp8_head_weights() -> None:
    # Llama-2-70B LM head at TP8: 32,000 x 8,192 / 8 = 32.768 M weights per rank,
    # 32.768 MB in FP8 and 65.536 MB at 16 bits (plus the same activations and logits).
    spec = load_model("llama-2-70b")
    batch = StepBatch(sequences=1, q_len=1, context=512)

    def head(**kw) -> Op:
        items = flatten(step_blocks(spec, batch, ParallelPlan(tp=8), "fp8", **kw))
        return next(it for it in items if isinstance(it, Op) and it.name == "lm_head")

    narrow, wide = head(), head(lm_head_16bit=True)
    assert narrow.dtype == "fp8" and wide.dtype == "fp16"
    assert wide.main_bytes - narrow.main_bytes >= 32_000 * 8_192 / 8 * (2 - 1)
    assert wide.main_bytes - narrow.main_bytes < 32_000 * 8_192 / 8 * 1.01


def test_trtllm_profiles_keep_the_lm_head_16_bit() -> None:
    from xpusim.sim.inference.engine_profile import load_engine

    assert load_engine("trtllm-0.10").lm_head_16bit
    assert load_engine("trtllm-1.0").lm_head_16bit
    assert not load_engine("vllm-0.6").lm_head_16bit
