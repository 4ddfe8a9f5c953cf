"""Megatron-Core TEGroupedMLP's unfused expert passes (sim/training/megatron_experts.py):
the clamp + cat before gpt-oss's quick-GEGLU and fc2's per-expert bias add. Hand-computed
bytes on gpt-oss-120b (hidden = expert ffn = 2880, 128 experts top-4) at seq 4096, EP 8:
every EP rank receives 4096 x 4 = 16384 routed token copies (uniform routing)."""

from __future__ import annotations

import pytest
from xpusim.sim.errors import InputError
from xpusim.sim.ir import Op
from xpusim.sim.models.hf_config import load_model
from xpusim.sim.parallel import ParallelPlan, validate_plan
from xpusim.sim.training import layers as L
from xpusim.sim.training.backward import backward_op, recompute_items

SEQ = 4096.0
ROUTED = SEQ * 4  # token copies reaching one EP rank's 16 local experts
N = ROUTED * 2880  # elements of one GLU half (= of the fc2 output: ffn == hidden)


def _ctx(model: str = "gpt-oss-120b", framework: str = "eager") -> L.SlotContext:
    spec = load_model(model)
    plan = ParallelPlan(ep=8, seq=int(SEQ), framework=framework, recompute="selective",
                        recompute_modules=("norm", "act"))
    return L.SlotContext(spec, validate_plan(spec, plan, 8), SEQ, {}, {}, False)


def _ops(ctx: L.SlotContext) -> dict[str, Op]:
    return {it.name: it for it in L.layer_items(ctx, 0) if isinstance(it, Op)}


def test_clamp_and_cat_move_both_halves_twice():
    clamp = _ops(_ctx())["experts_clamp"]
    # two clamps (read + write one half each) and the cat (read + write both): 8 N bf16
    assert clamp.main_bytes == pytest.approx(8 * N * 2)
    assert clamp.role.module == "act"
    assert [s.elements for s in clamp.role.saves] == [2 * N]  # the cat output, dropped by act


def test_fc2_bias_add_three_reads_three_writes_in_33_kernels():
    got = {k: o for k, o in _ops(_ctx()).items() if k.startswith("experts_bias")}
    # 16 local experts (128 / EP 8), 1024 routed copies each: b * p (write), t + b * p
    # (2 reads, write) per expert, then the cat (read, write): 6 N bf16 in 2 x 16 + 1 ops
    assert len(got) == 33
    assert got["experts_bias_scale0"].main_bytes == pytest.approx(N / 16 * 2)
    assert got["experts_bias_add15"].main_bytes == pytest.approx(3 * N / 16 * 2)
    assert got["experts_bias_cat"].main_bytes == pytest.approx(2 * N * 2)
    assert sum(o.main_bytes for o in got.values()) == pytest.approx(6 * N * 2)
    assert {o.role.module for o in got.values()} == {"experts"}


def test_order_clamp_before_act_bias_after_down():
    names = [it.name for it in L.layer_items(_ctx(), 0)]
    i = names.index
    assert i("experts_up") < i("experts_clamp") < i("experts_act") < i("experts_down") < i(
        "experts_bias_scale0") < i("experts_bias_cat") < i("unpermute")


def test_selective_act_recompute_reruns_the_clamp_not_the_bias():
    rerun = [it.name for it in recompute_items(L.layer_items(_ctx(), 0), "selective",
                                               ("norm", "act"))]
    assert "experts_clamp" in rerun and "experts_act" in rerun
    assert not [n for n in rerun if n.startswith("experts_bias")]


def test_no_passes_without_clamp_or_bias_or_under_torchtitan():
    for ctx in (_ctx("mixtral-8x7b"), _ctx(framework="torchtitan-eager")):
        assert not [n for n in _ops(ctx) if n in ("experts_clamp", "experts_bias_cat")]


# --- The alltoall dispatcher's sort of the received tokens by local expert ------------
# Qwen3-30B-A3B (hidden 2048, 128 experts top-8) at seq 4096, EP 8: 16 local experts, and
# every EP rank receives 4096 x 8 = 32768 routed token copies (uniform routing).

QWEN_COPIES = SEQ * 8


def _qwen(dispatcher: str = "alltoall", framework: str = "eager") -> L.SlotContext:
    spec = load_model("qwen3-30b-a3b")
    plan = ParallelPlan(ep=8, seq=int(SEQ), framework=framework, moe_dispatcher=dispatcher)
    return L.SlotContext(spec, validate_plan(spec, plan, 8), SEQ, {}, {}, False)


def test_alltoall_sorts_received_tokens_by_local_expert_and_back():
    items = L.layer_items(_qwen(), 0)
    names = [it.name for it in items]
    i = names.index
    # Permutation 2 after the permute, Unpermutation 2 before the unpermute
    assert i("permute") < i("moe_sort_chunks") < i("experts_up")
    assert i("experts_down") < i("moe_unsort_chunks") < i("unpermute")
    ops_ = {it.name: it for it in items if isinstance(it, Op)}
    # a read and a write of every received bf16 token copy: 2 x 32768 x 2048 x 2 B
    for name in ("moe_sort_chunks", "moe_unsort_chunks"):
        assert ops_[name].main_bytes == pytest.approx(2 * QWEN_COPIES * 2048 * 2)
        assert ops_[name].main_bytes == pytest.approx(ops_["permute"].main_bytes)


def test_sort_chunks_backward_is_another_pass():
    sort = {it.name: it for it in L.layer_items(_qwen(), 0)}["moe_sort_chunks"]
    (bwd,) = backward_op(sort)
    assert bwd.main_bytes == pytest.approx(2 * QWEN_COPIES * 2048 * 2)


def test_no_sort_with_flex_one_local_expert_or_torchtitan():
    for ctx in (_qwen("flex"), _qwen(framework="torchtitan-eager"), _ctx("mixtral-8x7b")):
        names = [it.name for it in L.layer_items(ctx, 0)]
        assert "moe_sort_chunks" not in names and "moe_unsort_chunks" not in names
        assert "permute" in names


def test_unknown_dispatcher_is_an_input_error():
    spec = load_model("qwen3-30b-a3b")
    with pytest.raises(InputError, match="moe_dispatcher"):
        validate_plan(spec, ParallelPlan(ep=8, seq=int(SEQ), moe_dispatcher="deepep"), 8)


# --- Megatron-Core's cross-entropy (sim/training/megatron_loss.py) ---------------------

LOGITS = SEQ * 201088  # one micro-batch's logits on a TP-1 rank


def _head(ctx: L.SlotContext) -> dict[str, Op]:
    return {it.name: it for it in L.head_items(ctx) if isinstance(it, Op)}


def test_cross_entropy_forward_26_bytes_per_bf16_logit():
    head = _head(_ctx())
    # .float() + row max: read 2, write 4 (a copy op moves nbytes twice)
    assert head["loss_upcast"].main_bytes == pytest.approx(LOGITS * 6)
    # exp in place 8, row sum 4, divide in place 8
    assert head["loss_softmax"].main_bytes == pytest.approx(LOGITS * 20)
    assert "logits_softmax" not in head


def test_cross_entropy_backward_14_bytes_per_logit():
    head = _head(_ctx())
    (soft_bwd,) = backward_op(head["loss_softmax"])
    (cast_bwd,) = backward_op(head["loss_upcast"])
    assert soft_bwd.main_bytes == pytest.approx(LOGITS * 8)  # in-place scale
    assert cast_bwd.main_bytes == pytest.approx(LOGITS * 6)  # fp32 read, bf16 write


def test_cross_entropy_unchanged_under_torchtitan():
    head = _head(_ctx(framework="torchtitan-eager"))
    assert "loss_upcast" not in head
    assert head["logits_softmax"].main_bytes == pytest.approx(LOGITS * 8)


def test_cross_entropy_fp32_logits_need_no_copy():
    spec = load_model("gpt-oss-120b")
    plan = validate_plan(spec, ParallelPlan(ep=8, seq=int(SEQ), dtype="fp32"), 8)
    head = _head(L.SlotContext(spec, plan, SEQ, {}, {}, False))
    assert "loss_upcast" not in head
    assert head["loss_softmax"].main_bytes == pytest.approx(LOGITS * 24)  # + the max's read


def test_flash_attn_fused_cross_entropy_reads_the_logits_once():
    """flash-attn's fused loss (framework flash-attn-training): forward one read of the
    bf16 logits (2 B), backward a read and a gradient write (4 B); no fp32 copy."""
    head = _head(_ctx(framework="flash-attn-training"))
    assert "loss_upcast" not in head and "loss_softmax" not in head
    xent = head["loss_flash_xent"]
    assert xent.main_bytes == pytest.approx(LOGITS * 2)
    (bwd,) = backward_op(xent)
    assert bwd.main_bytes == pytest.approx(LOGITS * 4)
