"""The backward grids of the fused attention kernels (docs/attention.md, "Implementations"):
which CTAs a backward launches per (batch, head) and what each one walks. Split out of
``attention_impl`` so that module stays within the size limit; ``attention_impl`` re-exports
the constants."""

from __future__ import annotations

from types import MappingProxyType
from typing import TYPE_CHECKING

from xpusim.hwprofiles.spec import Device
from xpusim.sim.cost.attention_blocks import (
    bwd_prologue_bytes_per_cta,
    l2_bytes_per_s,
    xformers_key_splits,
)
from xpusim.sim.cost.attention_items import key_block_items
from xpusim.sim.ir import dtype_bytes

if TYPE_CHECKING:
    from xpusim.sim.cost.attention_impl import AttnShape

# Kernels whose backward runs one program per (batch, head) walking all its blocks in series:
# Triton 2.0's ``triton.ops.flash_attention`` (python/triton/ops/flash_attention.py,
# ``_bwd_kernel[(ctx.grid[1],)]``: grid = batch x heads, BLOCK 128 x 128, num_warps 8,
# num_stages 1, dQ read-modify-written in fp32 per block). The FA2 paper's "Triton" rows.
PER_HEAD_BWD = ("triton2",)
# The FlashAttention repository's Triton kernel (flash_attn/flash_attn_triton.py, copied into
# MosaicML llm-foundry as llmfoundry/models/layers/flash_attn_triton.py @ 0227d9f, its
# attn_impl 'triton'): the same 128 x 128 blocks, num_stages 1, fp32 dQ accumulated per block,
# priced with ``triton2``'s block terms and side kernels (INFERRED: the same Triton-2.0-era
# structure; its forward differs in num_warps 8 at d > 64 and num_stages 1). Its backward is
# autotuned over two grids (``@triton.autotune`` of ``_bwd_kernel``: SEQUENCE_PARALLEL False,
# one program per (batch, head) walking every key block, or True, one program per key block
# per (batch, head), dQ by ``tl.atomic_add``): the autotuner times both and keeps the faster,
# so the model prices both and takes the minimum.
SEQ_PARALLEL_AUTOTUNED_BWD = MappingProxyType({"triton-fa": "triton2"})
# Kernels whose backward grid is one CTA per key block of each (batch, head), walking the query
# blocks that see it, dQ accumulated in fp32 through L2 (``attention_items.key_block_items``):
# FA2 (csrc/flash_attn/src/flash_bwd_launch_template.h ``run_flash_bwd_seqk_parallel``: ``dim3
# grid_n(num_n_block, params.b, params.h)``), FA3 (hopper/flash_bwd_launch_template.h
# ``run_flash_bwd``: the tile scheduler over ``num_blocks_n = ceil_div(seqlen_k, kBlockN)`` x h x
# b, ``SingleTileBwdLPTScheduler`` when causal), xFormers >= 0.0.20 (``num_splits_key`` CTAs per
# (batch, head), attention_blocks).
KEY_BLOCK_BWD = ("flash2", "flash3", "xformers")


def bwd_grid_items(device: Device, shape: AttnShape, impl: str, per_head_bwd: bool,
                   items: list[float], blocks: float, grid: tuple[int, int, int, int],
                   full_s: float, diag_s: float) -> tuple[list[float], float]:
    """The backward's work items in launch order, from the query-block ``items`` the forward
    layout gives; ``grid`` = (query blocks, key blocks, block rows, block columns)."""
    q_blocks, kv_blocks, br, bc = grid
    if impl in KEY_BLOCK_BWD:
        return key_block_grid(device, shape, impl, q_blocks, kv_blocks, br, bc, full_s, diag_s)
    if per_head_bwd:
        return [sum(items)], blocks  # one program walks every block of its (batch, head)
    if impl in PER_HEAD_BWD:
        # Sequence-parallel grid: one program per key block, walking the query blocks that
        # see it (causal: key block j is seen by query blocks j.., the mirror of the query
        # blocks' loads), launched key block 0, the heaviest, first (program_id(0)).
        return items[::-1], blocks
    return items, blocks


def key_block_grid(device: Device, shape: AttnShape, impl: str, q_blocks: int,
                    kv_blocks: int, br: int, bc: int, full_s: float,
                    diag_s: float) -> tuple[list[float], float]:
    """(seconds of each backward CTA of one batch x head, in launch order; blocks visited) of a
    ``KEY_BLOCK_BWD`` kernel. A key block's CTA loads its K and V tiles and the first Q and dO
    tiles before its first block (the later ones are prefetched during the block before) and
    writes dK and dV at the end, at the SM's HBM share. xFormers runs ``xformers_key_splits``
    CTAs per (batch, head), CTA s taking key blocks s, s + S, ... (kernel_backward.h
    ``attention_kernel``: ``key_start += num_splits_key * kBlockSizeJ``), each first reading the
    head's O and dO for delta from L2 (``bwd_prologue_bytes_per_cta``)."""
    sms = device.matrix_cores
    sm_bw = device.hbm_bandwidth * device.efficiency.memory_max / sms
    row = (shape.head_dim + shape.vd) * dtype_bytes(shape.dtype)
    io_s = (2.0 * bc + br) * row / sm_bw
    items, blocks = key_block_items(shape, q_blocks, kv_blocks, br, bc, full_s, diag_s, io_s)
    if impl == "xformers":
        splits = min(kv_blocks, xformers_key_splits(shape.batch, shape.heads, shape.kv_len,
                                                    shape.head_dim))
        prologue_s = bwd_prologue_bytes_per_cta(impl, "bwd", shape.q_len, shape.vd,
                                                shape.dtype) / (l2_bytes_per_s(device) / sms)
        items = [sum(items[s::splits]) + prologue_s for s in range(splits)]
    return items, blocks
