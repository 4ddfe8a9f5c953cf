"""Facts about the Hopper attention kernels that ``attention_impl`` reads, each from its source.

* ``colfax`` — Colfax Research's CUTLASS FMHA (ColfaxResearch/cutlass-kernels; Bikshandi &
  Shah, "A Case Study in CUDA Kernel Fusion: Implementing FlashAttention-2 on NVIDIA Hopper
  Architecture using the CUTLASS Library", arXiv 2312.11918), the "cutlass" kernel
  pytorch/benchmark's flash_attention operator loads as ``torch.ops.cutlass.fmha_forward``
  (``colfax_cutlass``; corpus C1). PR #2296 (the C1 rows) adds ``install.py --userbenchmark
  triton --cutlass``, whose ``install_colfax_cutlass`` (userbenchmark/triton/cutlass_kernels/
  install.py, every stored revision) compiles the non-pipelined ``src/fmha/fmha_forward.cu``
  (through its ``register_op.cu``) with no ``QBLKSIZE``/``KBLKSIZE``/``CTA256`` flag, so the
  source's defaults hold (INFERRED that the PR's table came from that build: its commands are
  the open-source ones): ``kQueriesPerBlock`` = ``kKeysPerBlock`` = 64, one warpgroup (128
  threads), grid = q blocks x heads x batch. Its header: "The algorithm is based on
  FlashAttention-2". Per key block (``fmhaForward``): V_j's TMA load is issued, QK^T waits for
  K_j and runs as an SS ``wgmma`` (Q and K from shared memory; "RS version has a
  synchronization bug and hence not used"), K_{j+1}'s load is issued, the online softmax
  rescales O, and PV runs as an RS ``wgmma`` (P from registers) after V_j's barrier; each GEMM
  is waited to completion (``warpgroup_wait<0>``). K and V are single-buffered, each load issued
  a GEMM and a softmax before its use. None of FlashAttention-3's two softmax/GEMM overlaps (the
  ping-pong between consumer warpgroups and the intra-warpgroup pipelining, FA3 paper, arXiv
  2407.08608 s3.1-3.2): each block runs MMA then softmax, as FA2 does, at the ``wgmma`` rate.
  ``src/fmha-pipeline`` (software pipelining, optional producer warpgroup ``WSPL``) is the FP8
  operator's ``fmha_forward_pipeline``, not this one. Its QK^T operands are priced by
  ``wgmma_port_s`` with the 64 x 64 tile: (64 + 64) d x 2 B for 2 x 64 x 64 d FLOP is
  32 FLOP/B, the SM's 16-bit MMA-to-port ratio, so the port stays under the derated MMA time.
* ``triton`` on Hopper — the FA3 paper's Triton rows (corpus B3/B4/B6, B11-B14; Triton nightly
  3.0.0.post20240424) and pytorch/benchmark's (C1, C2) run the fused-attention tutorial
  (python/tutorials/06-fused-attention.py; INFERRED for the 16-bit FA3 rows): the FA3 benchmarks
  that ask for a Triton nightly import it as a local copy, ``from triton_fused_attention import
  attention`` (flash-attention hopper/benchmark_attn.py @ 20b84d6, which times it only for
  head_dim <= 128 in 16 bits, as the corpus has no 16-bit d = 256 Triton row, and
  hopper/benchmark_flash_attention_fp8.py); hopper/benchmark_flash_attention.py imports
  ``triton.ops.flash_attention`` instead, whose forward (BLOCK_M 128, BLOCK_N 64) is the
  tutorial's at d = 64. Until triton-lang/triton#3892 (reviewed 2024-06-06) moved it to
  autotuning, the tutorial's ``forward`` fixed the launch with a "Tuning for H100" branch (the
  pre-#3892 text as carried by han811/AI_Compiler entrance_exam/test.py @ a4c56d1; INFERRED to
  be the nightly's): 16-bit BLOCK_M 128, BLOCK_N 64 if d <= 64 else 32, ``num_warps`` 8,
  ``num_stages`` 7; FP8 (its ``float8_e5m2`` branch, whose transposed V the FA3 FP8 benchmark
  passes; that benchmark passes e4m3, so its copy was edited: INFERRED) d < 256: BLOCK_M 64 (128
  when causal) x BLOCK_N 128, 4 warps; d = 256: 128 x 128, 8 warps. ``triton_hopper_tile``.
* The tutorial's ``tl.dot(q, k)`` takes q from shared memory (``q = tl.load(Q_block_ptr)`` "will
  stay in SRAM throughout": an SS ``wgmma``, both operands from shared memory; in 2024 Triton
  staged even an A operand it had modified in registers back through shared memory,
  openxla/triton#17: "Triton previously will ... copy to shared memory to perform SS WGMMA"),
  and ``tl.dot(p, v, acc)`` takes P from registers (RS; for FP8 through the register permute of
  triton-lang/triton#3370, 2024-03-14). PTX ISA: ``wgmma.mma_async`` is m64nNk16 (16-bit) or
  m64nNk32 (8-bit), A from registers or a shared-memory descriptor, B always from shared memory,
  and each instruction reads its operands anew. So per (Br x Bc) block QK^T reads q (Br x d)
  once more and K (Bc x d) once per 64-row group, and PV reads V (Bc x d_v) once per 64-row
  group, through the SM's shared-memory port (128 B/clk, CUDA C Programming Guide: 32 banks x
  4 B). QK^T at BLOCK_N 32 moves (128 d + 2 x 32 d) x 2 B = 384 d B for 8,192 d FLOP, 21 FLOP/B,
  where the SM's 16-bit MMA needs 4,096 FLOP/clk / 128 B/clk = 32: the port, not the tensor
  pipe, sets that GEMM's time (2/3 of peak, below ``matrix_max``). At BLOCK_N 64 (d = 64) and in
  the FP8 tiles (BLOCK_N 128) the port stays under the derated MMA time. Each GEMM pays what its
  port time exceeds its MMA time (``wgmma_port_s``, for the kernels in ``SS_QK_WGMMA``; K/V
  fills, cp.async or TMA writes issued ahead of their use, are left out).
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
* FlashAttention-3's FP8 forward has no intra-warpgroup pipelining: the FA3 paper (arXiv
  2407.08608v2, s3.2) gives its Algorithm 2 (QK_j issued before P V_{j-1}, softmax_j under
  the in-flight P V) as "the consumer path ... for FP16 precision", and the FP8 consumer
  (hopper/mainloop_fwd_sm90_tma_gmma_ws.hpp, ``mma_fp8``, Dao-AILab/flash-attention @
  5e0a82d; the in-kernel-transpose FP8 path came in PR #1100, 2024-07-26, "in-kernel
  transpose of V in producer") issues every WGMMA with ``wg_wait=0``: QK_j, wait,
  softmax_j, P V_j, wait; the 16-bit ``mma`` of the same file issues QK_j and P V_{j-1}
  with ``wg_wait=-1`` and ``warpgroup_wait<1>`` before the softmax. So every FP8 key
  block hides only the ping-pong share ``FIRST_BLOCK_OVERLAP`` (``steady_overlap``), and its
  first block has nothing extra to pay. The ping-pong stays:
  ``warp_scheduler_barrier_sync/arrive`` wrap the FP8 GEMMs (the named barrier is compiled
  in for FP8 at d >= 128; at d = 64 the hardware warp scheduler interleaves the consumer
  warpgroups), so the same 0.23 is used, nothing new fitted.
* FlashAttention-3 writes the output of an FP8 forward in BF16 (hopper/flash_api.cpp: ``out_type
  = q_type == at::ScalarType::Float8_e4m3fn ? at::ScalarType::BFloat16 : q_type``), so its O
  store moves 2 bytes per element where Q, K and V move 1. cuDNN's FP8 SDPA and the Triton
  tutorial write O in the input dtype (the FA3 FP8 benchmark allocates cuDNN's ``o_gpu`` with
  ``dtype=qkv.dtype``; the tutorial's ``o = torch.empty_like(q)``).
"""

from __future__ import annotations

import math

from xpusim.sim.ir import dtype_bytes

# Share of min(MMA, softmax) hidden on a work tile's first key block (module docstring).
FIRST_BLOCK_OVERLAP = {"flash3": 0.23}
# src/fmha defaults (kQueriesPerBlock, kKeysPerBlock), built with no tile flags (docstring).
COLFAX_TILE = (64, 64)
# Forward kernels whose QK^T is an SS wgmma (Q re-read from shared memory) and PV an RS one.
SS_QK_WGMMA = ("triton", "colfax")
WGMMA_M = 64  # rows of one wgmma instruction (PTX ISA: wgmma.mma_async.m64nNk16 / m64nNk32)


def triton_hopper_tile(head_dim: float, dtype: str, causal: bool) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_N) of the fused-attention tutorial's H100 launch before autotuning
    (module docstring): 16-bit 128 x 64 (d <= 64) or 128 x 32; FP8 64 x 128 (128 x 128 when
    causal) below d = 256, 128 x 128 at d = 256."""
    if dtype_bytes(dtype) == 1:
        return (128, 128) if head_dim >= 256 or causal else (64, 128)
    return (128, 64) if head_dim <= 64 else (128, 32)


def hopper_fwd_tile(impl: str, async_mma: bool, head_dim: float = 64, dtype: str = "bf16",
                    causal: bool = False) -> tuple[int, int] | None:
    """Forward (Br, Bc) of ``colfax`` and of ``triton`` on a wgmma device (module docstring);
    None for the other kernels and devices (``attention_impl.tiles`` decides)."""
    if impl == "colfax":
        return COLFAX_TILE
    if impl == "triton" and async_mma:
        return triton_hopper_tile(head_dim, dtype, causal)
    return None


def wgmma_port_s(tile: tuple[int, int], head_dim: float, v_head_dim: float, dtype: str,
                 mma_s: float, smem_bytes_per_s: float) -> float:
    """Seconds one forward block of a ``SS_QK_WGMMA`` kernel (the Triton tutorial, Colfax's
    FMHA) on sm_90 adds because its ``wgmma`` operands reach the tensor cores through the
    shared-memory port more slowly than the MMA runs (module docstring): QK^T (SS) reads Q and,
    per 64-row group, K; PV (RS) reads V per group.
    ``mma_s`` is the block's MMA time, split between the two GEMMs by their FLOPs."""
    br, bc = tile
    elt = dtype_bytes(dtype)
    groups = math.ceil(br / WGMMA_M)
    qk_bytes = (br + groups * bc) * head_dim * elt
    pv_bytes = groups * bc * v_head_dim * elt
    qk_mma = mma_s * head_dim / (head_dim + v_head_dim)
    return (max(0.0, qk_bytes / smem_bytes_per_s - qk_mma)
            + max(0.0, pv_bytes / smem_bytes_per_s - (mma_s - qk_mma)))


def first_block_extra_s(impl: str, overlap: float, mma_s: float, softmax_s: float,
                        dtype: str = "bf16") -> float:
    """Time a work tile's first key block adds over a steady-state block of ``impl``, whose
    steady state hides ``overlap`` of min(MMA, softmax) for 16-bit inputs (module docstring);
    0 for kernels without intra-warpgroup pipelining, FA3's FP8 forward included."""
    first = FIRST_BLOCK_OVERLAP.get(impl)
    if first is None:
        return 0.0
    return max(0.0, steady_overlap(impl, dtype, overlap) - first) * min(mma_s, softmax_s)


def steady_overlap(impl: str, dtype: str, overlap: float) -> float:
    """Share of min(MMA, softmax) ``impl`` hides on a steady-state key block for inputs of
    ``dtype``: FA3's FP8 mainloop has no intra-warpgroup pipelining (module docstring), so
    only the ping-pong share is left; ``overlap`` (``attention_impl.OVERLAP``) otherwise."""
    if impl == "flash3" and dtype_bytes(dtype) == 1:
        return FIRST_BLOCK_OVERLAP["flash3"]
    return overlap


def out_bytes(impl: str, dtype: str) -> float:
    """Bytes per element of the O tensor ``impl`` writes for inputs of ``dtype``."""
    elt = float(dtype_bytes(dtype))
    if impl == "flash3" and elt == 1.0:
        return 2.0  # FP8 in, BF16 out (module docstring)
    return elt


__all__ = [
    "COLFAX_TILE",
    "FIRST_BLOCK_OVERLAP",
    "SS_QK_WGMMA",
    "WGMMA_M",
    "first_block_extra_s",
    "hopper_fwd_tile",
    "out_bytes",
    "steady_overlap",
    "triton_hopper_tile",
    "wgmma_port_s",
]
