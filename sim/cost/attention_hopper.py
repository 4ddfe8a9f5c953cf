"""Facts about the Hopper attention kernels that ``attention_impl`` reads, each from its source.

* ``colfax`` — Colfax Research's CUTLASS FMHA (ColfaxResearch/cutlass-kernels
  ``src/fmha-pipeline``; Bikshandi & Shah, "A Case Study in CUDA Kernel Fusion: Implementing
  FlashAttention-2 on NVIDIA Hopper Architecture using the CUTLASS Library", arXiv 2312.11918),
  the "cutlass" kernel pytorch/benchmark's flash_attention operator loads as
  ``torch.ops.cutlass.fmha_forward`` (``colfax_cutlass``; corpus C1). Its source header: "The
  algorithm is based on FlashAttention-2"; it issues ``wgmma`` (GEMM-I shared-memory operands,
  GEMM-II with P from registers) fed by TMA with software pipelining and an optional producer
  warpgroup (``WSPL``), but has neither of FlashAttention-3's two softmax/GEMM overlaps (the
  ping-pong between consumer warpgroups and the intra-warpgroup pipelining, which the FA3 paper,
  arXiv 2407.08608 s3.1-3.2, introduces): each block runs MMA then softmax, as FA2 does, at the
  ``wgmma`` rate. One CTA per query tile (grid = q blocks x heads x batch), launch order.
  Tile: ``QBLKSIZE`` x ``KBLKSIZE`` compile flags, "tested for {64,128}x{64,128}" (the README);
  which the benchmark's build used is not stated, so 128 x 128 (the largest tested) is an
  estimate.
* ``triton`` on Hopper — two kernels carry this name in the corpus, both with BLOCK_N = 64:
  the FA3 paper's 16-bit benchmark imports ``triton.ops.flash_attention``
  (flash-attention hopper/benchmark_flash_attention.py), whose forward is launched with
  ``BLOCK_M = 128``, ``BLOCK_N = 64``, ``num_warps = 4 if d <= 64 else 8``, ``num_stages = 4``
  (python/triton/ops/flash_attention.py, ``_attention.forward``); its FP8 benchmark and
  pytorch/benchmark (C1, C2) run the fused-attention tutorial (06-fused-attention.py), whose
  autotune space is ``BLOCK_M`` in {64, 128} x ``BLOCK_N`` in {32, 64}. So 128 x 64.
* FlashAttention-3's first key block of a work tile: the intra-warpgroup pipelining (FA3 paper
  s3.2, Algorithm 2; hopper mainloop ``mma``: QK_0 is issued and waited alone, then
  ``online_softmax</*Is_first=*/true>``, and only from the second block does each softmax run
  while the warpgroup's previous P V GEMM is in flight) has no GEMM of its own warpgroup to
  overlap with the first softmax, so that block gets only the ping-pong between the two
  consumer warpgroups. ``attention_impl.OVERLAP["flash3"]`` (0.63) is the share the two
  together hide per block; ``FIRST_BLOCK_OVERLAP`` is the ping-pong-alone share, from the same
  FA3 ablation (Table 2, d = 128, seq 8k: 661 TFLOP/s with both, 582 with warp specialisation
  but no GEMM-softmax pipelining): 0.23 is the share that makes the model's 8k, d = 128
  forward 582/661 of its own price with 0.63. Not a corpus row. Every work tile pays the
  difference once, which weighs on short sequences (few key blocks per tile) and in FP8, where
  the softmax is the longer phase. Forward only; the split-KV decode path keeps its price.
* FlashAttention-3 writes the output of an FP8 forward in BF16 (hopper/flash_api.cpp: ``out_type
  = q_type == at::ScalarType::Float8_e4m3fn ? at::ScalarType::BFloat16 : q_type``), so its O
  store moves 2 bytes per element where Q, K and V move 1. cuDNN's FP8 SDPA and the Triton
  tutorial write O in the input dtype (the FA3 FP8 benchmark allocates cuDNN's ``o_gpu`` with
  ``dtype=qkv.dtype``; the tutorial's ``o = torch.empty_like(q)``).
"""

from __future__ import annotations

from xpusim.sim.ir import dtype_bytes

# Share of min(MMA, softmax) hidden on a work tile's first key block (module docstring).
FIRST_BLOCK_OVERLAP = {"flash3": 0.23}
COLFAX_TILE = (128, 128)  # estimate: the largest of the README's tested {64,128}x{64,128}
TRITON_HOPPER_TILE = (128, 64)  # triton.ops.flash_attention BLOCK_M/BLOCK_N; tutorial BN <= 64


def hopper_fwd_tile(impl: str, async_mma: bool) -> tuple[int, int] | None:
    """Forward (Br, Bc) of ``colfax`` and of ``triton`` on a wgmma device (module docstring);
    None for the other kernels and devices (``attention_impl.tiles`` decides)."""
    if impl == "colfax":
        return COLFAX_TILE
    if impl == "triton" and async_mma:
        return TRITON_HOPPER_TILE
    return None


def first_block_extra_s(impl: str, overlap: float, mma_s: float, softmax_s: float) -> float:
    """Time a work tile's first key block adds over a steady-state block of ``impl``, whose
    steady state hides ``overlap`` of min(MMA, softmax) (module docstring); 0 for kernels
    without intra-warpgroup pipelining."""
    first = FIRST_BLOCK_OVERLAP.get(impl)
    if first is None:
        return 0.0
    return max(0.0, overlap - first) * min(mma_s, softmax_s)


def out_bytes(impl: str, dtype: str) -> float:
    """Bytes per element of the O tensor ``impl`` writes for inputs of ``dtype``."""
    elt = float(dtype_bytes(dtype))
    if impl == "flash3" and elt == 1.0:
        return 2.0  # FP8 in, BF16 out (module docstring)
    return elt


__all__ = [
    "COLFAX_TILE",
    "FIRST_BLOCK_OVERLAP",
    "TRITON_HOPPER_TILE",
    "first_block_extra_s",
    "hopper_fwd_tile",
    "out_bytes",
]
