"""Eager (uncompiled) elementwise passes of torchtitan's Llama, beyond the fused ops the
model builder prices.

The builder gives each layer one norm pass (read + write of the activations), one
SwiGLU pass (read two halves, write one) and no rotary embedding: the fused kernels of
Megatron-LM / TransformerEngine. torchtitan's Llama without ``torch.compile`` runs each
PyTorch op as its own kernel (pytorch/torchtitan torchtitan/models/llama/model.py,
early 2024; ``compile = false`` in the train configs its docs/performance.md used), so
every intermediate makes a trip through HBM:

- ``RMSNorm``: ``(x.float() * rsqrt(x.float().pow(2).mean(-1) + eps)).type_as(x) *
  weight``: cast (read 2 B, write 4 B), pow (4 + 4), mean (4), multiply (4 + 4),
  ``type_as`` (4 + 2), weight multiply (2 + 2) = 36 B per element, 32 B above the one
  fused pass;
- ``apply_rotary_emb`` on Q and K: ``view_as_complex(x.float())`` (2 + 4), the complex
  multiply (4 + 4), ``type_as`` (4 + 2) = 20 B per element of the Q and K widths;
- ``repeat_kv`` (grouped-query attention): ``expand(...).reshape(...)`` materialises K
  and V at the query head count (read the KV heads, write the Q-width copies);
- the attention output's ``transpose(1, 2).contiguous()``: one copy (2 + 2 B);
- ``F.silu(w1(x)) * w3(x)``: a separate SiLU pass (2 + 2 B per element of the FFN
  width) before the multiply the builder already counts.

Each extra pass is an elementwise op on the HBM roofline; the backward (2x bytes, the
sim's elementwise rule) and the recompute follow its module like any other op.
Their saved tensors are not added (the memory model keeps the fused count).
"""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

from xpusim.sim import ops
from xpusim.sim.ir import MAIN_MEMORY, GemmShape, Op, OpKind, Role
from xpusim.sim.training.framework import framework_profile
from xpusim.sim.training.items import Comm, Item, SlotContext, act_dtype

NORM_EXTRA_BYTES = 32.0  # per element: 36 B of the eager RMSNorm minus the fused 4 B
ROTARY_BYTES = 20.0  # per element of Q and K: float cast, complex multiply, type_as
COPY_BYTES = 4.0  # per element of a bf16 copy: read 2 B + write 2 B
SILU_BYTES = 4.0  # per element of the FFN width: the separate SiLU pass


def eager_passes_on(ctx: SlotContext) -> bool:
    """Whether the plan's framework runs the model's elementwise ops unfused."""
    return framework_profile(ctx.plan.framework).eager_elementwise


def _pass(name: str, numel: float, bytes_per_element: float, module: str, ctx: SlotContext) -> Op:
    op = ops.elementwise(name, numel, act_dtype(ctx.plan), 1.0, role=Role(module))
    return replace(op, bytes=MappingProxyType({MAIN_MEMORY: numel * bytes_per_element}))


def norm_passes(name: str, tokens: float, ctx: SlotContext) -> list[Op]:
    """The eager RMSNorm's passes beyond the fused norm (recomputed with the norm)."""
    return [_pass(f"{name}_eager", tokens * ctx.spec.hidden, NORM_EXTRA_BYTES, "norm", ctx)]


def attention_passes(ctx: SlotContext) -> list[Op]:
    """Rotary embedding on Q and K, ``repeat_kv`` when grouped, and the output
    transpose copy, on this rank's heads (the attention core's module)."""
    spec, tp, t = ctx.spec, ctx.plan.tp, ctx.tokens
    if spec.mla is not None:
        return []  # MLA's decoupled rope is another layout: not torchtitan's Llama
    q_width = spec.heads * spec.head_dim / tp
    kv_width = spec.kv_heads * spec.head_dim / tp
    out = [_pass("rotary_eager", t * (q_width + kv_width), ROTARY_BYTES, "core_attn", ctx)]
    if spec.kv_heads < spec.heads:
        # K and V: read the KV heads (2 B), write the query-width copies (2 B).
        numel = t * 2 * q_width
        nbytes = ctx.b * t * 2 * (q_width + kv_width)
        out.append(_pass("repeat_kv_eager", numel, nbytes / numel, "core_attn", ctx))
    out.append(_pass("attn_out_transpose_eager", t * q_width, COPY_BYTES, "core_attn", ctx))
    return out


def ffn_passes(ctx: SlotContext, layer: int) -> list[Op]:
    """The separate SiLU pass of a dense SwiGLU FFN (the activation's module)."""
    spec = ctx.spec
    if spec.is_moe_layer(layer) or not spec.gated_ffn:
        return []
    inner = (spec.moe.dense_ffn if spec.moe and spec.moe.dense_ffn else spec.ffn) / ctx.plan.tp
    return [_pass("silu_eager", ctx.tokens * inner, SILU_BYTES, "act", ctx)]


def _mm_widths(op: Op, tp: int, ffn_inner: float) -> list[float]:
    """The output widths of the ``aten.mm`` calls a builder GEMM stands for, in
    torchtitan's forward order: the fused QKV projection is ``wq, wk, wv`` (Llama's
    query width is the hidden size, split over ``tp``); the fused gated up projection
    (twice the down projection's input ``ffn_inner``) is ``w1, w3``; any other GEMM is
    one mm."""
    s = op.shape
    assert isinstance(s, GemmShape)
    if op.name == "qkv_proj":
        q = s.k / tp
        kv = (s.n - q) / 2
        return [q, kv, kv]
    if op.name == "mlp_up" and s.n == 2 * ffn_inner:
        return [s.n / 2, s.n / 2]
    return [s.n]


def _ffn_inner(items: list[Item]) -> float:
    for it in items:
        if isinstance(it, Op) and it.name == "mlp_down" and isinstance(it.shape, GemmShape):
            return it.shape.k
    return 0.0


def op_sac_recompute(items: list[Item], tp: int) -> list[Item]:
    """What torchtitan's op-level selective activation checkpointing re-runs before a
    layer's backward (``mode = 'selective'``, ``selective_ac_option = 'op'``;
    torchtitan's ``_apply_ac_to_transformer_block``: ``_save_list`` = ``aten.mm``, the
    SDPA flash / efficient kernels and the reduce-scatter; its policy saves every mm
    except every second one in forward order, counted afresh per checkpointed block).

    The recompute re-runs the layer's forward with the saved outputs taken from the
    cache: every op not in the save list (norms, rotary, SiLU, residuals: all the
    elementwise passes) and the even-numbered mms (for Llama wk, wo, w3); the attention
    core and the odd mms are not re-run. Collectives are not re-run (none at tp=1)."""
    out: list[Item] = []
    count = 0
    inner = _ffn_inner(items)
    for it in items:
        if isinstance(it, Comm) or it.kind == OpKind.ATTENTION:
            continue
        if it.kind != OpKind.GEMM or not isinstance(it.shape, GemmShape):
            out.append(it)
            continue
        s = it.shape
        redo = 0.0
        for width in _mm_widths(it, tp, inner):
            count += 1
            if count % 2 == 0:
                redo += width
        if redo > 0:
            out.append(ops.gemm(f"{it.name}_sac", s.m, redo, s.k, it.dtype, s.batch,
                                role=Role(it.role.module)))
    return out
