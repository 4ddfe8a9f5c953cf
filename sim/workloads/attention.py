"""Torch-free IR of the attention kernels in ``kernels/attention.py``.

Each builder returns a ``RankGraph`` holding, in order, the ops the matching kernel
really runs for the given sizes — the same GEMMs, elementwise ops and copies, with
skipped blocks absent — so the simulator can cost exactly the kernel that a
calibration run measures. FLOPs of the GEMMs match PyTorch's ``FlopCounterMode``
on the real kernel (tests/test_attention_kernels.py checks it).

Block classification (``block_kind``) and the key range (``kv_block_limit``) live
here and the kernel imports them, so kernel and description cannot disagree on
which blocks run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from xpusim.sim import ops
from xpusim.sim.errors import InputError
from xpusim.sim.ir import (
    MAIN_MEMORY,
    Collective,
    CollectiveKind,
    Op,
    OpKind,
    RankGraph,
    Stream,
    dtype_bytes,
)
from xpusim.sim.workloads.data_flow import DataFlow

# Vector work of the online softmax per score element of a block (used by the Da Vinci
# blockwise model in sim/attention_model.py): row max (1), subtract the max (1), exp (1),
# row sum (1).
SOFTMAX_FLOPS_PER_SCORE = 4.0
# Vector instructions per element of exp(x): a vectorised exp (ATen's Vectorized<float>
# uses a Sleef/Cephes-style routine) does a range reduction (x = n*ln2 + r: ~3 ops), a
# degree-6 polynomial in r (6 FMAs = 12 FLOPs) and a 2^n scaling (~3 ops): ~20, an
# estimate from the algorithm, not a fit. (Timed on the dev VM, torch.exp of 64 Ki fp32
# elements took 7.5x as long as torch.add of the same size.)
# Which exp runs differs by op (torch 2.13.0, git cf30153c, include/ATen/cpu/vml.h and
# vec512/vec512_float.h): F.silu, torch.sigmoid and torch.softmax call
# Vectorized<float>::exp() = Sleef_expf16_u10 inside their own loop (EXP_FLOPS, kind
# elementwise / softmax); a standalone torch.exp on an MKL build goes through
# at::vml::vexp = MKL's vmsExp(VML_HA), a closed routine whose instruction count is not
# published, so its ops carry OpKind.EXP and a calibration fits that kind's speed from
# the `exp` microbenchmark (calibrate/exp_micro.py). Without a calibration (every GPU
# profile) the kind's speed is 1: the same time as before.
EXP_FLOPS = 20.0
ACC = "fp32"  # FastAttention accumulates in fp32 whatever the input dtype
FP32_BYTES = 4


def _vec(
    name: str,
    numel: float,
    nbytes: float,
    flops_per_element: float = 1.0,
    kind: OpKind = OpKind.ELEMENTWISE,
) -> Op:
    """A vector-unit op over ``numel`` fp32 elements that moves exactly ``nbytes``.

    ``ops.elementwise`` assumes every input is as large as the output; the online
    softmax mixes (rows x cols) tiles with per-row statistics and a broadcast mask
    slice, so its ops state their bytes directly.
    """
    op = ops.elementwise(name, numel, ACC, flops_per_element, 1, 1, kind)
    return replace(op, bytes=MappingProxyType({MAIN_MEMORY: float(nbytes)}))


def _fill(name: str, numel: float, dtype: str = ACC) -> Op:
    """torch.full / torch.zeros: write ``numel`` elements, read nothing."""
    return ops.elementwise(name, numel, dtype, 1.0, 0, 1)


def _cast(name: str, numel: float, src: str, dst: str) -> Op:
    """A dtype conversion (``.to``): read in ``src``, write in ``dst``."""
    op = ops.elementwise(name, numel, dst, 1.0, 1, 1)
    nbytes = numel * (dtype_bytes(src) + dtype_bytes(dst))
    return replace(op, bytes=MappingProxyType({MAIN_MEMORY: nbytes}))


def block_kind(
    q_start: int, rows: int, k_start: int, cols: int, causal: bool, q_offset: int = 0
) -> str:
    """Classify the (rows x cols) block at (q_start, k_start): "visible", "masked", "partial".

    Key j is visible to query i iff j <= i + q_offset. In block coordinates that is
    c - r <= delta with delta = q_start + q_offset - k_start, so the block is fully
    visible iff cols - 1 <= delta and fully masked iff -(rows - 1) > delta.
    """
    if not causal:
        return "visible"
    delta = q_start + q_offset - k_start
    if cols - 1 <= delta:
        return "visible"
    if -(rows - 1) > delta:
        return "masked"
    return "partial"


def kv_block_limit(kv_len: int, kv_lens: Sequence[int] | None) -> int:
    """Keys the blockwise kernel visits: beyond the longest valid length every block is padding."""
    return int(max(kv_lens)) if kv_lens is not None else kv_len


def padding_applies(k_start: int, cols: int, kv_lens: Sequence[int] | None) -> bool:
    """True when some batch element's valid length ends inside (or before) this key block."""
    return kv_lens is not None and any(n - k_start < cols for n in kv_lens)


def _check(
    batch: int, heads: int, seq: int, head_dim: int, kv_heads: int | None, kv_len: int | None
) -> tuple[int, int]:
    for name, value in (("batch", batch), ("heads", heads), ("seq", seq), ("head_dim", head_dim)):
        if value < 1:
            raise InputError(f"attention: {name} must be >= 1, got {value}")
    kvh = kv_heads or heads
    if heads % kvh:
        raise InputError(f"attention: heads ({heads}) must be a multiple of kv_heads ({kvh})")
    length = kv_len if kv_len is not None else seq
    if length < 1:
        raise InputError(f"attention: kv_len must be >= 1, got {length}")
    return kvh, length


def describe_standard_attention(
    batch: int,
    heads: int,
    seq: int,
    head_dim: int,
    causal: bool = False,
    kv_heads: int | None = None,
    kv_len: int | None = None,
    dtype: str = "fp32",
    padded: bool = False,
) -> RankGraph:
    """Ops of ``standard_attention``: [repeat K/V], [build mask], QK^T, scale, mask add, softmax, PV.

    ``seq`` is the query length, ``kv_len`` the key length (default ``seq``); ``padded``
    means a per-batch padding mask is part of the mask tensor.
    """
    kvh, length = _check(batch, heads, seq, head_dim, kv_heads, kv_len)
    graph = _FreshOutputs(RankGraph(rank=0))
    bh = batch * heads
    scores = bh * seq * length
    elt = dtype_bytes(dtype)
    if kvh != heads:  # repeat_interleave copies K and V once per query head
        for name in ("repeat_k", "repeat_v"):
            graph.add(ops.memcpy(name, batch * heads * length * head_dim * elt),
                      batch * heads * length * head_dim * elt)
    mask_rows = 0.0  # rows of the mask tensor, broadcast over heads (and batch if causal only)
    if causal:  # full(-inf) then triu: write, then read + write the q x kv mask
        graph.add(_fill("mask_full", seq * length, dtype), seq * length * elt)
        graph.add(ops.elementwise("mask_triu", seq * length, dtype, 1.0, 1, 1), seq * length * elt)
        mask_rows = seq
    if padded:  # arange of key positions, compare, zeros, masked_fill (+ add to causal)
        idx = dtype_bytes("int8")
        graph.add(
            replace(
                _fill("pad_arange", length, dtype),
                bytes=MappingProxyType({MAIN_MEMORY: 8.0 * length}),
            ),
            8.0 * length,
        )
        graph.add(
            replace(
                ops.elementwise("pad_ge", batch * length, dtype, 1.0, 1, 1),
                bytes=MappingProxyType({MAIN_MEMORY: batch * length * (8 + idx)}),
            ),
            batch * length * idx,
        )
        graph.add(_fill("pad_zeros", batch * length, dtype), batch * length * elt)
        graph.add(ops.elementwise("pad_masked_fill", batch * length, dtype, 1.0, 1, 1),
                  batch * length * elt)
        if causal:
            graph.add(ops.elementwise("mask_combine", batch * seq * length, dtype, 1.0, 1, 1),
                      batch * seq * length * elt)
            mask_rows = batch * seq
        else:
            mask_rows = batch
    graph.add(ops.gemm("qk", seq, length, head_dim, dtype, bh), scores * elt)
    graph.add(ops.elementwise("scale", scores, dtype, 1.0, 1, 1), scores * elt)
    if causal or padded:  # S + mask: the mask is read once per broadcast copy at most
        add = ops.elementwise("mask_add", scores, dtype, 1.0, 1, 1)
        nbytes = (2 * scores + mask_rows * length) * elt
        graph.add(replace(add, bytes=MappingProxyType({MAIN_MEMORY: nbytes})), scores * elt)
    if dtype != "fp32":
        # torch.softmax(..., dtype=float32) converts S to fp32 first, and the kernel casts
        # P back to the input dtype: two conversions around an fp32 softmax.
        acc = dtype_bytes(ACC)
        graph.add(_cast("cast_s", scores, dtype, ACC), scores * acc)
        graph.add(ops.softmax("softmax", bh * seq, length, ACC), scores * acc)
        graph.add(_cast("cast_p", scores, ACC, dtype), scores * elt)
    else:
        graph.add(ops.softmax("softmax", bh * seq, length, dtype), scores * elt)
    graph.add(ops.gemm("pv", seq, head_dim, length, dtype, bh), bh * seq * head_dim * elt)
    return graph.graph


@dataclass
class _FreshOutputs:
    """A graph being built whose ops each allocate their output (``standard_attention``
    runs out-of-place torch ops: every intermediate is a new tensor): ``add`` records the
    output's size as the op's ``fresh_bytes`` (priced only on a CPU, and only from the
    allocator's mmap threshold on: sim/cost/page_faults.py)."""

    graph: RankGraph

    def add(self, op: Op, out_bytes: float) -> int:
        return self.graph.add(replace(op, fresh_bytes=out_bytes))


@dataclass
class _Fast:
    """A FastAttention call being described: sizes, blocks and the graph. Each op names
    the buffers it reads and writes (sim/workloads/data_flow.py: the bytes on a buffer
    no earlier op touched are first touches): the kernel's inputs and output slices stay
    unnamed (first touches), every intermediate is named after its role in
    ``fast_attention``."""

    graph: RankGraph
    batch: int
    heads: int
    kv_heads: int
    head_dim: int
    dtype: str
    inner: int
    causal: bool
    q_offset: int
    kv_lens: Sequence[int] | None
    flow: DataFlow = field(default_factory=DataFlow)

    @property
    def group(self) -> int:
        return self.heads // self.kv_heads

    def add(self, op: Op, touches: Mapping[str, float] | None = None) -> None:
        self.graph.add(self.flow.touch(op, touches or {}))

    def query_block(self, q_start: int, rows: int, outer: int, limit: int) -> None:
        """One query block: cast and scale Q, the running statistics, every unmasked key
        block, the final normalisation and the store into the output slice."""
        qrow = f"q{q_start}"
        q_elems = self.batch * self.heads * rows * self.head_dim
        f = FP32_BYTES
        q_in = {}
        if self.dtype != ACC:
            self.add(_cast(f"{qrow}.cast_q", q_elems, self.dtype, ACC), {"q_cast": q_elems * f})
            q_in = {"q_cast": q_elems * f}
        self.add(_vec(f"{qrow}.scale", q_elems, 2 * q_elems * f), {**q_in, "q_blk": q_elems * f})
        stats = self.batch * self.heads * rows  # one running max / sum per query row
        self.add(_fill(f"{qrow}.init_max", stats), {"m": stats * f})
        self.add(_fill(f"{qrow}.init_sum", stats), {"denom": stats * f})
        self.add(_fill(f"{qrow}.init_o", q_elems), {"o": q_elems * f})
        for k_start in range(0, limit, outer):
            cols = min(outer, limit - k_start)
            kind = block_kind(q_start, rows, k_start, cols, self.causal, self.q_offset)
            if kind != "masked":
                self.key_block(f"{qrow}.k{k_start}", q_start, rows, k_start, cols, kind, q_elems)
        self.add(_vec(f"{qrow}.normalise", q_elems, (2 * q_elems + stats) * f),
                 {"o": q_elems * f, "denom": stats * f, "o_n": q_elems * f})
        elt = dtype_bytes(self.dtype)
        last = "o_n"
        if self.dtype != ACC:
            self.add(_cast(f"{qrow}.cast_out", q_elems, ACC, self.dtype),
                     {"o_n": q_elems * f, "o_cast": q_elems * elt})
            last = "o_cast"
        # The store reads the normalised block and writes the output slice (unnamed).
        self.add(ops.memcpy(f"{qrow}.store", q_elems * elt), {last: q_elems * elt})

    def key_block(self, tag: str, q_start: int, rows: int, k_start: int, cols: int,
                  kind: str, q_elems: float) -> None:
        """One (query block, key block) pair: K/V casts, the inner-tile QK^T GEMMs, the
        mask, the online-softmax vector ops and the PV GEMMs with their accumulation."""
        bkv = self.batch * self.kv_heads  # GEMM batch: a group's query heads stacked as rows
        f = FP32_BYTES
        kv_elems = bkv * cols * self.head_dim
        if self.dtype != ACC:
            self.add(_cast(f"{tag}.cast_k", kv_elems, self.dtype, ACC), {"k_blk": kv_elems * f})
            self.add(_cast(f"{tag}.cast_v", kv_elems, self.dtype, ACC), {"v_blk": kv_elems * f})
        kv_in = self.dtype != ACC  # K / V read from the casts' outputs, else from the inputs
        tiles = range(0, cols, self.inner)
        for t in tiles:
            n = min(self.inner, cols - t)
            out = "s" if len(tiles) == 1 else f"tile{t}"
            rows_b = self.batch * self.heads * rows
            self.add(ops.gemm(f"{tag}.qk{t}", self.group * rows, n, self.head_dim, ACC, bkv),
                     {"q_blk": q_elems * f, out: rows_b * n * f,
                      "k_blk": kv_elems * f * n / cols if kv_in else 0.0})
        n = self.batch * self.heads * rows * cols  # score elements of the block
        if len(tiles) > 1:  # torch.cat of the inner tiles: one copy of the block
            tile_bytes = {f"tile{t}": n * f * min(self.inner, cols - t) / cols for t in tiles}
            self.add(ops.memcpy(f"{tag}.cat", n * f), {**tile_bytes, "s": n * f})
        self.mask(tag, rows, k_start, cols, kind, n)
        masked = self.heads * masked_scores(rows, k_start, cols, kind == "partial", q_start,
                                            self.q_offset, self.kv_lens, self.batch)
        self.online_softmax(tag, rows, n, q_elems, masked)
        for t in tiles:
            n_t = min(self.inner, cols - t)
            self.add(ops.gemm(f"{tag}.pv{t}", self.group * rows, self.head_dim, n_t, ACC, bkv),
                     {"p": n * f * n_t / cols, "pv": q_elems * f,
                      "v_blk": kv_elems * f * n_t / cols if kv_in else 0.0})
            self.add(_vec(f"{tag}.acc{t}", q_elems, 3 * q_elems * f),
                     {"o": 2 * q_elems * f, "pv": q_elems * f})

    def mask(self, tag: str, rows: int, k_start: int, cols: int, kind: str, n: float) -> None:
        """The block's mask: padding rows stacked from the template (and combined with the
        causal slice), then added to S when the block needs a mask."""
        f = FP32_BYTES
        padding = padding_applies(k_start, cols, self.kv_lens)
        if padding:  # torch.stack of one template row per batch element
            self.add(ops.memcpy(f"{tag}.pad_stack", self.batch * cols * f))
            if kind == "partial":  # causal slice + padding rows
                self.add(_vec(f"{tag}.mask_combine", self.batch * rows * cols,
                              (2 * self.batch + 1) * rows * cols * f))
        if kind == "partial" or padding:
            # S + mask slice: read S and the (rows x cols) slice, write S.
            self.add(_vec(f"{tag}.mask_add", n, (2 * n + rows * cols) * f),
                     {"s": 2 * n * f, "template": rows * cols * f})

    def online_softmax(self, tag: str, rows: int, n: float, q_elems: float,
                       masked: float = 0.0) -> None:
        """Row max, rescale of the running max, sum and output, exp of the scores
        (``masked`` of the ``n`` exp inputs are -inf)."""
        f = FP32_BYTES
        stats = self.batch * self.heads * rows
        st = stats * f
        self.add(_vec(f"{tag}.rowmax", n, (n + stats) * f, 1.0, OpKind.REDUCTION),
                 {"s": n * f, "rmax": st})
        self.add(_vec(f"{tag}.max_update", stats, 3 * st), {"m": st, "rmax": st, "m_new": st})
        self.add(_vec(f"{tag}.sub_max", n, (2 * n + stats) * f),
                 {"s": n * f, "m_new": st, "x": n * f})
        # torch.exp (kernels/attention.py): MKL VML's exp, its own kind (see EXP_FLOPS);
        # its -inf inputs (s - m_new where the mask added -inf) run VML's slow path, so
        # they are their own op of kind exp_masked (see exp_ops). Each reads its share
        # of s - m_new and writes its share of p.
        for op in exp_ops(f"{tag}.exp", n, masked):
            half = op.main_bytes / 2
            self.add(op, {"x": half, "p": half})
        self.add(_vec(f"{tag}.alpha_sub", stats, 3 * st), {"m": st, "m_new": st, "a": st})
        self.add(_vec(f"{tag}.alpha_exp", stats, 2 * st, EXP_FLOPS, OpKind.EXP),
                 {"a": st, "alpha": st})
        self.add(_vec(f"{tag}.sum_rescale", stats, 3 * st),
                 {"denom": st, "alpha": st, "denom_a": st})
        self.add(_vec(f"{tag}.rowsum", n, (n + stats) * f, 1.0, OpKind.REDUCTION),
                 {"p": n * f, "psum": st})
        self.add(_vec(f"{tag}.sum_add", stats, 3 * st), {"denom_a": st, "psum": st, "denom": st})
        self.add(_vec(f"{tag}.o_rescale", q_elems, (2 * q_elems + stats) * f),
                 {"o": 2 * q_elems * f, "alpha": st})


def exp_ops(name: str, numel: float, masked: float = 0.0) -> list[Op]:
    """One ``torch.exp`` over ``numel`` fp32 elements of which ``masked`` are -inf:
    an ``exp`` op over the ordinary elements and, when there are any, an ``exp_masked``
    op over the -inf ones (each reads and writes its own elements).

    MKL VML's vsExp (``VML_HA | VML_FTZDAZ_OFF``, pytorch aten/src/ATen/cpu/vml.h @
    0137745d) took 6.6 us for 36,864 ordinary floats and 81 us with half of them -inf
    (docs/calibration_notes.md, nineteenth session): a per-element cost the calibration fits
    for the kind. Two ops for one call: the second also pays a launch overhead.
    """
    f = FP32_BYTES
    out = [_vec(name, numel - masked, 2 * (numel - masked) * f, EXP_FLOPS, OpKind.EXP)]
    if masked > 0:
        out.append(_vec(f"{name}_masked", masked, 2 * masked * f, EXP_FLOPS,
                        OpKind.EXP_MASKED))
    return out


def masked_scores(
    rows: int,
    k_start: int,
    cols: int,
    causal_partial: bool,
    q_start: int,
    q_offset: int,
    kv_lens: Sequence[int] | None,
    batch: int,
) -> int:
    """-inf scores of one (rows x cols) block per head, summed over the batch: what the
    kernel's mask (``_block_mask``) sets to -inf. Row r sees keys c <= delta + r
    (causal partial block, delta = q_start + q_offset - k_start) and c < kv_lens[b] -
    k_start (padding); every other key of the block is masked."""
    delta = q_start + q_offset - k_start
    if kv_lens is not None and padding_applies(k_start, cols, kv_lens):
        pads = [min(cols, max(0, n - k_start)) for n in kv_lens]
    elif causal_partial:
        pads = [cols] * batch
    else:
        return 0
    total = 0
    for pad in pads:
        for r in range(rows):
            seen = min(cols, max(0, delta + r + 1)) if causal_partial else cols
            total += cols - min(seen, pad)
    return total


def describe_fast_attention(
    batch: int,
    heads: int,
    seq: int,
    head_dim: int,
    causal: bool = False,
    kv_heads: int | None = None,
    kv_len: int | None = None,
    dtype: str = "fp32",
    outer_block: int = 128,
    inner_block: int = 64,
    q_offset: int = 0,
    kv_lens: Sequence[int] | None = None,
) -> RankGraph:
    """Ops of ``fast_attention``: per unmasked (query block, key block) pair, the inner-tile
    GEMMs, the mask add when the block needs one, the online-softmax vector ops, and a
    final normalisation per query block. Fully masked blocks contribute nothing.

    The kernel computes in fp32 whatever the input dtype, so every op is fp32.
    """
    kvh, length = _check(batch, heads, seq, head_dim, kv_heads, kv_len)
    if outer_block < 1 or inner_block < 1:
        raise InputError("attention: outer_block and inner_block must be >= 1")
    fast = _Fast(RankGraph(rank=0), batch, heads, kvh, head_dim, dtype,
                 min(inner_block, outer_block), causal, q_offset, kv_lens)
    size = 2 * outer_block  # the tiling-mask template: full(-inf) then triu(1)
    t_bytes = size * size * FP32_BYTES
    fast.add(_fill("template_full", size * size), {"template": t_bytes})
    fast.add(ops.elementwise("template_triu", size * size, ACC, 1.0, 1, 1),
             {"template": 2 * t_bytes})
    limit = kv_block_limit(length, kv_lens)
    for q_start in range(0, seq, outer_block):
        fast.query_block(q_start, min(outer_block, seq - q_start), outer_block, limit)
    return fast.graph


def attention_matmul_flops(graph: RankGraph) -> float:
    """FLOPs of the GEMMs only — what ``FlopCounterMode`` counts on the real kernel."""
    return sum(op.flops for op in graph.ops() if op.kind == OpKind.GEMM)


def describe_tp_attention_tiling_allreduce(
    batch: int,
    heads: int,
    seq: int,
    head_dim: int,
    tp: int,
    blocks: int,
    causal: bool = False,
    dtype: str = "fp16",
    overlap: bool = True,
    rank: int = 0,
) -> RankGraph:
    """One TP rank of ``kernels.tiling_allreduce.tp_attention_tiling_allreduce``.

    Per sequence block (compute stream): fused attention of the rank's ``heads/tp``
    heads for the block's queries (causal: against the keys up to the block's end,
    the only ones not masked), then its rows of W_o; the block's all-reduce runs on
    the comm stream once that projection is done. ``overlap=False`` makes the next
    block wait for the all-reduce (the non-overlapped schedule); ``blocks=1`` is
    attention, projection, then one all-reduce.
    """
    _check(batch, heads, seq, head_dim, None, None)
    if tp < 1 or heads % tp:
        raise InputError(f"attention: heads ({heads}) must be divisible by the TP size ({tp})")
    if not 1 <= blocks <= seq:
        raise InputError(f"attention: blocks must be in [1, seq={seq}], got {blocks}")
    hidden = heads * head_dim
    local = heads // tp
    step = -(-seq // blocks)
    group = tuple(range(tp))
    graph = RankGraph(rank=rank)
    last_comm: int | None = None
    for i, start in enumerate(range(0, seq, step)):
        rows = min(step, seq - start)
        kv = start + rows if causal else seq
        deps = [last_comm] if (not overlap and last_comm is not None) else []
        attn = graph.add(
            ops.fused_attention(f"b{i}.attn", batch, local, rows, kv, head_dim, dtype, causal),
            deps=deps,
            label=f"block{i}",
        )
        proj = graph.add(
            ops.gemm(f"b{i}.wo", batch * rows, hidden, local * head_dim, dtype),
            deps=[attn],
            label=f"block{i}",
        )
        nbytes = batch * rows * hidden * dtype_bytes(dtype)
        last_comm = graph.add(
            Collective(f"b{i}.allreduce", CollectiveKind.ALL_REDUCE, group, nbytes, tag=i),
            stream=Stream.COMM,
            deps=[proj],
            label=f"block{i}",
        )
    return graph
