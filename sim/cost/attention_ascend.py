"""Ascend attention calls (``npu_fusion_attention``, ``fastattention``) priced as CANN runs them.

* Prefill / training (``q_len == kv_len``) and non-MLA decode: the Cube/Vector pipeline of
  ``sim.attention_model.fast_attention_cost`` (the ``xpusim attention`` model) over the
  work units of ``ascend_decode_units`` (IncreFlashAttention's split of a decode call).
* MLA's absorbed decode (``fia_mla_decode_cost``): FusedInferAttentionScore's MLA template,
  the kernel vllm-ascend's MLA decode calls (``_forward_decode``:
  ``torch_npu.npu_fused_infer_attention_score(q_nope, k_nope, k_nope, query_rope=q_pe,
  key_rope=k_pe, num_key_value_heads=1, ...)``, TND layout with ``sparse_mode=3`` for an
  MTP verify step; 22dimensions/vllm-ascend ``vllm_ascend/attention/mla_v1.py`` @
  05d8b7867d9d3b70a2fdf4c943bcac6e0be20a19). Sources (hicann/ops-transformer @
  359e786a4451b9b11c911e383672345aa16ae3a8, ``attention/fused_infer_attention_score/``):

  - ``op_host/arch22/fia_tiling_nonquant_mla.cpp`` ``IsCapable``: fp16/bf16 Q and KV,
    the rope passed separately, Q/K/V head dim 512 with a 64-wide rope, one KV head
    (``n2Size == 1``), group G in {1, 2, 4, ..., 128} (registered for DAV_2201, the
    910B/910C). ``CalcInnerSize``: key block ``sInnerSize_ = 512``; header
    ``fia_tiling_nonquant_mla.h``: ``mBaseSize_ = 256`` query rows (G x S1) per block.
    ``Split`` hands the (batch x KV head, G S1 block, key block) tasks to the cores by
    ``SplitCore`` (``attention/common/op_host/split_core.cpp``, mirror-cann/ops-transformer
    @ 49f2f0ab6d3bb66d6525b5113c260ed254e3d806: equal-cost contiguous ranges, a row's key
    blocks split between cores when a boundary falls inside it: flash decode, reduced
    afterwards).
  - ``op_kernel/arch22/fia_kernel_nonquant_mla.h``: ``N_BUFFER_M_BASIC_SIZE = 256``,
    ``PRELOAD_NUM = 2`` (two tasks in flight: Cube, Vector and copies overlap).
  - ``op_kernel/arch22/fia_block_cube_nonquant_mla.h`` ``ProcessMm1``: per 128-key slice,
    the K block (512 latent + 64 rope columns, in two 288-wide halves) is copied GM -> L1
    once and reused by every 128-row query slice (``M_L1_SPLIT_SIZE``) of the task;
    ``ProcessMm2`` copies the V block (the first 512 columns of the same latent) into L1
    again and reuses it for every query slice; Q is copied once per task; S (fp32), P
    (16-bit) and the PV partial (fp32) cross GM between the AIC and the AIVs
    (``mm1ResGm``, ``vec1ResGm``, ``mm2ResGm``).

  So the latent is read once per (sequence, KV head, key block) for all G x S1 <= 256 query
  rows, instead of once per 16-row block as the generic tile model's L0-sized tiles give
  at head_dim 576.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from xpusim.hwprofiles.spec import Device
from xpusim.sim.cost.base import OpCost
from xpusim.sim.ir import dtype_bytes
from xpusim.sim.workloads.attention import SOFTMAX_FLOPS_PER_SCORE

if TYPE_CHECKING:
    from xpusim.sim.cost.attention_impl import AttnShape

# CANN IncreFlashAttention (the decode kernel behind torch_npu's incremental attention):
# IsFlashDecode splits the keys over cores when batch x KV heads < 0.4 x cores and, with
# GQA, the context is >= 2048 keys (its "experience values"); SplitBNS then gives each
# (batch, KV head) cores // (batch x KV heads) parts, fewer while a part would be < 512 keys.
# MiracleDrawer/cann_ops_adv src/transformer/incre_flash_attention/ophost/
# incre_flash_attention_tiling.cc @ 0b37367185baa4d23b9a5d4013ab32a5553727bd.
IFA_FLASH_DECODE_BN_RATIO = 0.4
# FusedInferAttentionScore hands a call to IncreFlashAttention only for one query token
# (IsGqaIfa: queryS == 1) or an MTP / verify step of at most 16 (IsGqaMtp, IsMlaIfaOrMtp:
# 1 < queryS <= 16); every longer query runs PromptFlashAttention (TilingProcess4PFA), one
# unit per (sequence, query head) like a prefill, its causal mask skipping the key blocks
# past the diagonal. repo-mirror-test/ops-transformer attention/fused_infer_attention_score/
# op_host/fused_infer_attention_score_tiling.cpp @ 7ab1fa15861d6c7733d1b03fc201a6a32e25ec8b.
IFA_MAX_QUERY = 16
IFA_FLASH_DECODE_GQA_MIN_KEYS = 2048
IFA_MIN_KEYS_PER_PART = 512

# FusedInferAttentionScore's MLA template (module docstring for the files).
FIA_MLA_HEAD_DIM = 512  # qkHeadDim == vHeadDim == 512 (the latent, kv_lora_rank)
FIA_MLA_ROPE_DIM = 64  # ropeHeadDim
FIA_MLA_GROUPS = (1, 2, 4, 8, 16, 32, 64, 128)  # gSizeSupportList
FIA_MLA_M_BASE = 256  # mBaseSize_ / N_BUFFER_M_BASIC_SIZE: query rows (G x S1) per task
FIA_MLA_S2_BASE = 512  # sInnerSize_: keys per task
FIA_MLA_PRELOAD = 2  # PRELOAD_NUM: tasks in flight per core
ACC_BYTES = 4.0  # fp32 scores and PV partials in the GM workspace
# Cross-core hand-off: the same estimate as sim.attention_model (SYNC_CYCLES_PER_HANDOFF).
SYNC_CYCLES_PER_HANDOFF = 800.0


def runs_ifa(shape: AttnShape, pass_: str = "fwd") -> bool:
    """Whether CANN runs the call as IncreFlashAttention: a forward of at most IFA_MAX_QUERY
    queries (FIA routes by queryS alone, whatever the cache length). IFA is an inference
    kernel: a backward runs FlashAttentionScoreGrad, one unit per (sequence, query head)."""
    return pass_ == "fwd" and shape.q_len <= IFA_MAX_QUERY


def ascend_decode_units(shape: AttnShape, cores: int,
                        pass_: str = "fwd") -> tuple[float, float, float]:
    """(work units, query rows per unit, keys per unit) of an Ascend attention call.

    A decode or verify step (``q_len <= IFA_MAX_QUERY``, forward: ``runs_ifa``) runs CANN's
    IncreFlashAttention, whose work unit is one (sequence, KV head) holding the G = heads /
    kv_heads query heads of the group as rows of one tile (tiling ``nNumOfQInOneGroup = numHeads / numKvHeads``;
    SplitBN divides ``batchSize x numKvHeads`` over the cores), so each K/V block is read
    once per group, not once per query head. Flash decode splits the keys of few units
    (above). Otherwise (prefill, training, a chunk of a longer prompt: PromptFlashAttention)
    one unit per (sequence, query head) as before.
    """
    if not runs_ifa(shape, pass_):
        return shape.batch * shape.heads, shape.q_len, shape.kv_len
    group = shape.heads / shape.kvh
    units = shape.batch * shape.kvh
    parts = 1
    splits = units < IFA_FLASH_DECODE_BN_RATIO * cores and (
        group == 1 or shape.kv_len >= IFA_FLASH_DECODE_GQA_MIN_KEYS)
    if splits:
        parts = max(1, int(cores // max(1.0, units)))
        while parts > 1 and shape.kv_len / parts < IFA_MIN_KEYS_PER_PART:
            parts -= 1
    return units * parts, shape.q_len * group, math.ceil(shape.kv_len / parts)


def is_fia_mla(shape: AttnShape) -> bool:
    """Whether a call is MLA's absorbed decode that FIA's MLA template runs (``IsCapable``;
    it also needs fp16/bf16, checked by ``ascend_cost``): fewer queries than keys, one KV head, a 512-wide latent plus a 64-wide rope for Q/K
    and the 512-wide latent as V, and a supported group size."""
    group = shape.heads / shape.kvh
    return (
        shape.q_len < shape.kv_len
        and shape.kvh == 1
        and shape.vd == FIA_MLA_HEAD_DIM
        and shape.head_dim == FIA_MLA_HEAD_DIM + FIA_MLA_ROPE_DIM
        and group in FIA_MLA_GROUPS
        and not shape.window
    )


@dataclass(frozen=True)
class MlaTask:
    """Time of one FIA MLA task (``m`` query rows x ``n`` keys) on one AIC + its AIVs."""

    cube_s: float
    vector_s: float
    gm_s: float
    sync_s: float

    @property
    def steady_s(self) -> float:
        """In steady state (PRELOAD_NUM tasks in flight) the stages overlap."""
        return max(self.cube_s, self.vector_s, self.gm_s) + self.sync_s

    @property
    def series_s(self) -> float:
        """The first task of a core pays its stages one after the other."""
        return self.cube_s + self.vector_s + self.gm_s + self.sync_s


def _pad(x: float, tile: int) -> float:
    return math.ceil(x / tile) * tile


def mla_task(device: Device, m: float, n: float, dtype: str, masked: bool) -> MlaTask:
    """One task of ``m`` query rows against ``n`` keys (fia_block_cube_nonquant_mla.h).

    Cube: QK^T over 576 columns (latent + rope) and PV over 512, padded to the 16^3
    fractal. Vector (both AIVs): the online softmax (``SOFTMAX_FLOPS_PER_SCORE`` per score,
    +1 for the mask of a verify step's last block) and the rescale-accumulate of the PV
    partial (2 per output element). GM at the core's L2 share (reads and writes on
    separate ports, as sim.attention_model): the K block (576 wide) and the V block (512
    wide) copied into L1 once for all ``m`` rows, Q once, S (fp32) and P (16-bit) each
    written once and read once, the PV partial (fp32) written and read.
    """
    d, dv = FIA_MLA_HEAD_DIM + FIA_MLA_ROPE_DIM, FIA_MLA_HEAD_DIM
    elt = dtype_bytes(dtype)
    cores = device.matrix_cores
    eff = device.efficiency
    tm, tn, tk = device.matrix_tile
    cube_rate = device.peak_for("matrix", dtype) / cores * eff.matrix_max
    cube = 2 * _pad(m, tm) * _pad(n, tn) * (_pad(d, tk) + _pad(dv, tk)) / cube_rate
    vec_per_core = max(1, device.vector_cores // cores)
    vec_rate = (device.peak_for("vector", "fp32") / device.vector_cores * vec_per_core
                * eff.vector_max)
    scores = m * n
    vector = (scores * (SOFTMAX_FLOPS_PER_SCORE + (1 if masked else 0)) + 2 * m * dv) / vec_rate
    l2 = device.level("l2")
    l2_rate = (l2.bandwidth / cores * eff.memory_max if l2 and l2.bandwidth
               else device.main_memory_rate(eff.memory_max) / cores)
    reads = n * (d + dv) * elt + m * d * elt + scores * (ACC_BYTES + elt) + m * dv * ACC_BYTES
    reads += scores * elt if masked else 0.0  # the mask slice
    writes = scores * (ACC_BYTES + elt) + m * dv * ACC_BYTES
    gm = max(reads, writes) / l2_rate
    sync = 2 * SYNC_CYCLES_PER_HANDOFF / device.clock_hz
    return MlaTask(cube, vector, gm, sync)


def _v_reread_from_hbm(device: Device, elt: float) -> bool:
    """ProcessMm2 copies the V block (the latent's first 512 columns) again right after
    ProcessMm1 read the K block of the same task: it comes from L2 while the blocks in
    flight (PRELOAD_NUM tasks a core, every core) fit in half of L2 (the other half: the
    GM workspace), as sim.attention_model assumes for K/V shared through L2."""
    l2 = device.level("l2")
    in_flight = (device.matrix_cores * FIA_MLA_PRELOAD * FIA_MLA_S2_BASE
                 * (FIA_MLA_HEAD_DIM + FIA_MLA_ROPE_DIM) * elt)
    return not (l2 and in_flight <= l2.capacity_bytes / 2)


def fia_mla_decode_cost(device: Device, shape: AttnShape, dtype: str) -> OpCost:
    """MLA absorbed decode / verify on Ascend as FIA's MLA template runs it (module doc).

    Tasks: per (sequence, KV head) the G x q_len query rows in blocks of 256, each against
    the keys in blocks of 512 (the last block the remainder). SplitCore gives every core an
    equal share of the task cost, so the busiest core runs the total over the cores,
    rounded up to whole full tasks, plus its first task's pipeline fill. Where a core
    boundary falls inside a row of tasks (rows not a multiple of the cores) the split row
    is reduced afterwards (flash decode: each core boundary leaves a head and a tail
    partial, fp32 output + max/sum, read back at the chip's L2 rate). HBM: the latent once
    per (sequence, KV head, query-row block), V again only if L2 cannot hold the blocks
    in flight, Q read and O written once. The kernel takes the longer of the two.
    """
    d, dv = FIA_MLA_HEAD_DIM + FIA_MLA_ROPE_DIM, FIA_MLA_HEAD_DIM
    elt = dtype_bytes(dtype)
    cores = device.matrix_cores
    eff = device.efficiency
    rows_total = shape.q_len * shape.heads / shape.kvh
    m_full, m_tail = divmod(rows_total, FIA_MLA_M_BASE)
    m_sizes = [(float(FIA_MLA_M_BASE), int(m_full))] + ([(m_tail, 1)] if m_tail else [])
    kv = math.ceil(shape.kv_len)
    n_full, n_tail = divmod(kv, FIA_MLA_S2_BASE)
    masked = shape.causal and shape.q_len > 1  # sparse_mode 3: the last block is masked
    per_seq = 0.0
    tasks = 0
    for m, count in m_sizes:
        if not count:
            continue
        t_full = mla_task(device, m, FIA_MLA_S2_BASE, dtype, False).steady_s
        row = n_full * t_full
        if n_tail:
            row += mla_task(device, m, n_tail, dtype, masked).steady_s
        elif masked:  # the row's last full block carries the mask
            row += mla_task(device, m, FIA_MLA_S2_BASE, dtype, True).steady_s - t_full
        per_seq += count * row
        tasks += count * (n_full + (1 if n_tail else 0))
    seqs = shape.batch * shape.kvh
    biggest = mla_task(device, min(rows_total, FIA_MLA_M_BASE), min(kv, FIA_MLA_S2_BASE),
                       dtype, False)
    unit = biggest.steady_s
    busiest = math.ceil(seqs * per_seq / cores / unit - 1e-9) * unit
    pipeline_s = busiest + biggest.series_s - biggest.steady_s
    rows = seqs * (m_full + (1 if m_tail else 0))  # (sequence, query-row block) rows
    fd_s = 0.0
    if rows % cores and tasks * seqs > 1:
        m_row = min(rows_total, FIA_MLA_M_BASE)
        parts = 2 * (min(cores, tasks * seqs) - 1)
        fd_bytes = parts * m_row * (dv + 2) * ACC_BYTES
        l2 = device.level("l2")
        l2_chip = (l2.bandwidth * eff.memory_max if l2 and l2.bandwidth
                   else device.main_memory_rate(eff.memory_max))
        fd_s = fd_bytes / l2_chip + biggest.sync_s
    latent_reads = seqs * (m_full + (1 if m_tail else 0))
    kv_bytes = latent_reads * kv * d * elt
    if _v_reread_from_hbm(device, elt):
        kv_bytes += latent_reads * kv * dv * elt
    qo_bytes = shape.batch * shape.heads * shape.q_len * (d + dv) * elt
    hbm_bytes = kv_bytes + qo_bytes
    hbm_s = hbm_bytes / device.main_memory_rate(eff.memory_max)
    compute_s = pipeline_s + fd_s
    launch = eff.launch_overhead_s
    time_s = max(compute_s, hbm_s) + launch
    terms = {"cube": biggest.cube_s, "vector": biggest.vector_s, "gm": biggest.gm_s}
    bound = "hbm" if hbm_s >= compute_s else max(terms, key=lambda k: terms[k])
    details = {
        "rows": float(min(rows_total, FIA_MLA_M_BASE)),
        "cols": float(min(kv, FIA_MLA_S2_BASE)),
        "block_cube_s": biggest.cube_s,
        "block_vector_s": biggest.vector_s,
        "block_gm_s": biggest.gm_s,
        "sync_s": biggest.sync_s,
        "pipeline_s": compute_s,
        "hbm_s": hbm_s,
        "hbm_bytes": hbm_bytes,
        "flash_decode_s": fd_s,
        "tasks": float(tasks * seqs),
    }
    return OpCost(time_s, compute_s, hbm_s, launch, bound, details)


def ascend_cost(device: Device, shape: AttnShape, pass_: str) -> OpCost:
    """An Ascend attention call: FIA's MLA template for MLA's absorbed decode (forward),
    otherwise ``sim.attention_model.fast_attention_cost`` (the ``xpusim attention`` model)
    over ``ascend_decode_units``."""
    from xpusim.sim.attention_model import fast_attention_cost  # the study module imports sim.cost

    dtype = shape.dtype if shape.dtype in ("fp16", "bf16", "fp32") else "fp16"
    if pass_ == "fwd" and dtype in ("fp16", "bf16") and is_fia_mla(shape):
        return fia_mla_decode_cost(device, shape, dtype)
    bh, q_rows, keys = ascend_decode_units(shape, device.matrix_cores, pass_)
    reps = max(1, round(bh))
    # PromptFlashAttention masks causally (the queries are the last q_len positions);
    # IncreFlashAttention's few queries see every key of the cache.
    causal = shape.causal and not runs_ifa(shape, pass_)
    cost = fast_attention_cost(
        device, 1, reps, int(keys), int(shape.head_dim), causal, dtype,
        q_len=int(q_rows),
    )
    scale = bh / reps * (2.5 if pass_ == "bwd" else 1.0)
    if shape.window:  # npu_fusion_attention's band mode (sparse_mode 4) skips the pairs
        scale *= shape.pairs() / replace(shape, window=0).pairs()  # outside the window
    launch = device.efficiency.launch_overhead_s
    time_s = (cost.time_s - launch) * scale + launch
    d = cost.details
    details = {k: float(d[k]) for k in ("rows", "cols", "block_cube_s", "block_vector_s",
                                        "block_gm_s", "sync_s", "pipeline_s", "hbm_s")}
    details["hbm_bytes"] = float(d["hbm_bytes"]) * scale  # the traffic hbm_s * scale prices
    return OpCost(time_s, d["pipeline_s"] * scale, d["hbm_s"] * scale, launch, cost.bound,
                  details)


__all__ = [
    "ascend_cost",
    "ascend_decode_units",
    "fia_mla_decode_cost",
    "is_fia_mla",
    "mla_task",
]
