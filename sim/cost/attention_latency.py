"""Latency a fused attention kernel cannot hide: the dependent chain of one key block.

``attention_impl.block_terms`` prices a (Br x Bc) block by its throughput: the SM's tensor
pipes, special-function units, FP32 lanes and shared-memory banks. A CTA also waits: on a
global load whose consumer follows it with nothing prefetched, on a shared-memory value another
warp wrote behind a ``__syncthreads()``, on the first operand fragment of each GEMM that reads
shared memory. Other CTAs resident on the SM run their work during those waits, so a block
costs the SM

    per_block = max(block_s, (block_s + chain_s) / ctas_per_sm)

(each CTA's critical path is its own work plus its chain; ``ctas_per_sm`` of them share the
SM's pipes). The exposed part, ``per_block - block_s``, is added to every block. Latencies
come from the device profile's ``[latency]`` table (load-to-use cycles from microbenchmark
studies); a device without them, or a kernel whose chain was not read from its source, gets
nothing.

The chain of each kernel, per key block and CTA, read from its source. Counted: (a) L2 round
trips, a global load whose first use follows it in program order with no independent work in
between and no pipeline stage prefetching it (the operands are L2-resident: re-read tiles,
a workspace the CTA wrote); (b) shared-memory round trips that every warp of the CTA waits on
at once: the first operand fragment of a GEMM that follows a ``__syncthreads()`` (``ldmatrix``
before the first MMA; the rest of a GEMM is software-pipelined, and between barriers the warps
drift apart and cover one another's first loads), a shared-memory atomic before a barrier, an
element-wise read of values other warps stored behind a barrier. ``__syncthreads()`` are
listed but not priced: no source for a barrier's own cost was found (docs/attention.md).

* ``xformers`` forward (xformers csrc/attention/cuda/fmha/kernel_forward.h, sm80 f16, d <= 64:
  64 x 64 CTA of 4 warps, ``kMinBlocksPerSm`` = 16 warps / 4 = 4): MM0's multistage
  prologue waits for its first Q/K stage (1 L2 trip: Q is re-loaded every key block, K is
  L2-resident); shared memory: MM0's first fragment, ``atomicMaxFloat(&mi[row])``, the
  ``m_prime``/``mi`` reads after it, the ``m_prime`` read that rescales the output, the ``mi``
  read before ``exp2f``, ``atomicAdd(&s_prime[row])``, MM1's first fragment of P (7). V's
  prologue is issued before the softmax and waited after it (hidden). Nine ``__syncthreads``.
* ``xformers`` backward (kernel_backward.h ``processBlockIJ``, 64 x 64, 4 warps,
  ``kMinBlocksPerSm`` = 12 warps / 4 = 3): ``loadDi`` (delta from global, stored to shared
  memory before the QK GEMM), ``accumApplyLSEToSmem`` (logsumexp from global, used at once),
  the fp32 dQ partial (``gmem_tile.load(accum)`` right before its GEMM): 3 L2 trips; Q, K, V,
  dO are prefetched one GEMM ahead (``kPreloadMmas``). Shared memory: the five GEMMs' first
  fragments, the element-wise reads of ``di`` and ``attn_T`` that form dS (6). Eleven barriers.
* ``triton2`` backward (Triton 2.0 python/triton/ops/flash_attention.py ``_bwd_kernel``,
  BLOCK 128 x 128, ``num_warps`` 8, ``num_stages`` 1): ``q = tl.load(q_ptrs)`` feeds
  ``tl.dot(q, tl.trans(k))`` at once and ``m = tl.load(m_ptrs ...)`` feeds the exp right after
  that dot (2 L2 trips); ``do``, ``Di`` and ``dq`` are loaded a GEMM or an exp before their use
  (hidden). Shared memory: each of the five ``tl.dot`` reads an operand converted through
  shared memory (5). One CTA per SM: the loop's live tiles alone (dk, dv accumulators 2 x 128
  x 64 fp32, k and v 2 x 128 x 64 fp16, two 128 x 128 fp32 score tiles) need >= 224 registers
  per thread x 256 threads of the 65,536 an SM has.
* ``triton2`` forward (``_fwd_kernel``, 128 x 128, 4 warps, ``num_stages`` 2): K and V are
  pipelined one iteration ahead; shared memory: the K and V operands of the two dots (2). Two
  CTAs per SM (acc 128 x 64 fp32 + q + one 128 x 128 fp32 tile >= 224 registers x 128 threads).
* ``flash2`` (flash-attention csrc/flash_attn/src/flash_fwd_kernel.h / flash_bwd_kernel.h):
  forward, V's copy is issued before QK^T and the next K's after it, P stays in registers and
  the row max/sum are warp shuffles: 0 L2 trips, 2 shared (each GEMM follows the barrier that
  publishes its K or V tile); two CTAs per SM (128 x 128, 4 warps: acc_o 64 + S 128 registers
  per thread). Backward (``compute_dq_dk_dv_1colblock``, d <= 64: 128 x 128, 8 warps): the next
  Q and dO are issued two or more GEMMs before the loop-top ``cp_async_wait<0>``, LSE and
  dot(dO, O) a GEMM before use, dQ by ``atomicAdd`` (no wait): 0 L2 trips; three barriers per
  block (loop top; after dS is stored; after the dV GEMM), each followed by a GEMM (S, dV, dQ;
  dP and dK follow a GEMM without one): 3 shared; one CTA per SM (Q and dO double buffers, K,
  V, P and dS tiles: ~160 KB of shared memory).
* ``flash3`` (hopper/ mainloops): a producer warp loads every tile by TMA into a multi-stage
  pipeline and ``wgmma`` reads shared memory asynchronously: 0 and 0.
* ``triton`` on Hopper (the fused-attention tutorial's H100 launch, forward, ``num_stages`` 7
  in 16 bits, 3-4 in FP8; attention_hopper): K and V pipelined, q resident in shared memory,
  P to the second ``wgmma`` from registers: 0 L2 trips, 0 shared counted (its operand bytes are
  a port term, ``attention_hopper.wgmma_port_s``).
* ``colfax`` (ColfaxResearch/cutlass-kernels src/fmha ``fmhaForward``, the build corpus C1
  ran; attention_hopper): K_{j+1}'s TMA load is issued after QK^T_j and waited before
  QK^T_{j+1} (a softmax and a GEMM between), V_j's at the loop top and waited before PV_j (a
  GEMM and a softmax between): 0 L2 trips; both GEMMs are ``wgmma`` reading shared memory
  asynchronously, their operand bytes a port term: 0 shared. Nothing to price, so no entry.
* ``flash1``, ``cudnn``, ``triton`` on Ampere: not read for this; no term.
"""

from __future__ import annotations

from dataclasses import dataclass

from xpusim.hwprofiles.spec import Device


@dataclass(frozen=True)
class BlockTerms:
    """One (Br x Bc) block on one SM and its parts (``attention_impl.block_terms``)."""

    mma_s: float
    exp_s: float
    alu_s: float
    softmax_s: float
    block_s: float
    reduce_s: float = 0.0  # backward dQ reduction through L2; FA1's O round trip through HBM
    latency_s: float = 0.0  # dependent-chain latency other CTAs do not hide (module docstring)


@dataclass(frozen=True)
class Chain:
    """One key block's dependent latency chain in one CTA (module docstring)."""

    l2_trips: float  # global loads waited on at once, hitting L2
    smem_trips: float  # shared-memory round trips on the critical path
    barriers: float  # __syncthreads() per block: listed, unpriced (no sourced cost)
    ctas_per_sm: int  # CTAs resident per SM that overlap one another's waits


CHAINS: dict[tuple[str, str], Chain] = {
    ("xformers", "fwd"): Chain(l2_trips=1, smem_trips=7, barriers=9, ctas_per_sm=4),
    ("xformers", "bwd"): Chain(l2_trips=3, smem_trips=6, barriers=11, ctas_per_sm=3),
    ("triton2", "fwd"): Chain(l2_trips=0, smem_trips=2, barriers=2, ctas_per_sm=2),
    ("triton2", "bwd"): Chain(l2_trips=2, smem_trips=5, barriers=5, ctas_per_sm=1),
    ("flash2", "fwd"): Chain(l2_trips=0, smem_trips=2, barriers=2, ctas_per_sm=2),
    ("flash2", "bwd"): Chain(l2_trips=0, smem_trips=3, barriers=3, ctas_per_sm=1),
    ("flash3", "fwd"): Chain(l2_trips=0, smem_trips=0, barriers=0, ctas_per_sm=1),
    ("flash3", "bwd"): Chain(l2_trips=0, smem_trips=0, barriers=0, ctas_per_sm=1),
}
HOPPER_ONLY = {("triton", "fwd"): Chain(l2_trips=0, smem_trips=0, barriers=0, ctas_per_sm=1)}


def chain_of(impl: str, pass_: str, async_mma: bool) -> Chain | None:
    """The chain of ``impl``'s ``pass_`` ("fwd" or "bwd"), None where not read from source."""
    if async_mma and (impl, pass_) in HOPPER_ONLY:
        return HOPPER_ONLY[(impl, pass_)]
    return CHAINS.get((impl, pass_))


def chain_s(device: Device, chain: Chain) -> float | None:
    """Seconds of one chain on ``device``; None if the profile lacks a latency it needs."""
    lat = device.latency
    cycles = 0.0
    for trips, latency in ((chain.l2_trips, lat.l2_hit_cycles), (chain.smem_trips, lat.smem_cycles)):
        if trips:
            if latency is None:
                return None
            cycles += trips * latency
    return cycles / device.clock_hz


def exposed_latency_s(block_s: float, chain_seconds: float, ctas_per_sm: int) -> float:
    """Time a block adds on its SM when each of ``ctas_per_sm`` resident CTAs waits
    ``chain_seconds`` per block besides its ``block_s`` of work: the SM finishes one block of
    each CTA in max(ctas x block_s, block_s + chain), i.e. the chain shows only where it
    exceeds the work the other CTAs overlap with it. Never negative; grows with the chain."""
    per_block = max(block_s, (block_s + chain_seconds) / ctas_per_sm)
    return per_block - block_s


def block_latency_s(device: Device, impl: str, pass_: str, block_s: float) -> float:
    """Exposed latency of one block of ``impl`` on ``device`` (0 where no chain or no
    latency is known)."""
    chain = chain_of(impl, pass_, device.kernels.async_mma)
    if chain is None:
        return 0.0
    seconds = chain_s(device, chain)
    if seconds is None:
        return 0.0
    return exposed_latency_s(block_s, seconds, chain.ctas_per_sm)


__all__ = [
    "BlockTerms",
    "CHAINS",
    "Chain",
    "block_latency_s",
    "chain_of",
    "chain_s",
    "exposed_latency_s",
]
