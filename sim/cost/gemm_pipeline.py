"""A GEMM main loop as a two-station pipeline with a finite buffer: the loss near the ridge.

A CUTLASS/cuBLAS GEMM on an NVIDIA GPU runs its main loop as a producer/consumer ring of
shared-memory stages: the producer (TMA on Hopper and Blackwell, ``cp.async`` on Ampere)
loads the next K-slices of A and B into the free stages while the tensor cores consume the
full ones (CUTLASS docs, "Efficient GEMM in CUDA", software pipelining; CUTLASS 3
``PipelineTmaAsync``). With ``C`` stages the two sides decouple by at most ``C`` slices, so
the loop reaches the slower side's rate only if neither side ever waits; when the memory and
MMA times per stage are close (the roofline's ridge), any variation in either makes the other
idle. The roofline's max(compute, memory) assumes an infinite buffer.

Model (docs/cost_model.md, "The ridge: a finite pipeline"): a birth-death chain on the number
of full stages n in 0..C, filled at the memory rate mu1 while n < C (the loads in flight share
the HBM bandwidth, processor sharing) and drained at the MMA rate mu2 while n > 0, both with
exponential service times. Its throughput is the classical two-station tandem line with a
finite buffer (Hillier and Boling 1967; Buzacott and Shanthikumar, "Stochastic Models of
Manufacturing Systems", 1993, ch. 4):

    X = mu2 * (rho - rho**(C + 1)) / (1 - rho**(C + 1)),   rho = mu1 / mu2,

which is min(mu1, mu2) far from the ridge and mu * C / (C + 1) at it (rho = 1). Exponential
service is the assumption: no source gives the variance of a stage's load or MMA time, and
the MMA side is closer to deterministic, so this is the largest loss a depth of C allows.

Depth: a stage holds one K-slice of 128 bytes per operand row, ``(bm + bn) x 128`` bytes for a
``bm x bn`` output tile (CUTLASS's 16-bit tiles take K = 64, its 8-bit ones K = 128 and TF32
K = 32: cutlass_library/generator.py ``GenerateSM90_TensorOp_16b_WGMMA_gemm`` /
``..._fp8_WGMMA_gemm``, ``cutlass/gemm/device/default_gemm_configuration.h`` Sm80 128x256x64),
and the kernel keeps as many stages as the SM's shared memory holds (CUTLASS 3
``StageCountAutoCarveout``: capacity / stage bytes; the Sm80 default 128x256x64 kernel's
``kStages = 3`` is the same floor of 164 KB / 48 KB). NVIDIA's own SM100 GEMM template states
the same rule (cudnn-frontend ``python/cudnn/sdpa/bwd/kernels/bprop_matmul_blackwell.py`` @
0a35d61d: "K per operand stage is ONE 128-byte swizzle row per operand row"; ``ab_stages`` 6
for 128 + 128 rows per CTA and 4 for 256 + 128 at the 227 KiB budget less 32 KiB of epilogue
staging, which this floor ignores: it gives 7 and 4).
"""

from __future__ import annotations

# Bytes of one operand row in a stage: the 128-byte swizzle width of a K-slice.
STAGE_ROW_BYTES = 128


def pipeline_stages(block_m: int, block_n: int, smem_bytes: float) -> int:
    """Shared-memory stages of a ``block_m x block_n`` GEMM tile: how many K-slices of A
    and B the SM's shared memory holds (at least 1)."""
    stage_bytes = (block_m + block_n) * STAGE_ROW_BYTES
    return max(1, int(smem_bytes // stage_bytes))


def pipelined_time(compute_s: float, memory_s: float, stages: int) -> float:
    """Seconds of a main loop whose MMAs alone take ``compute_s`` and whose operand loads
    alone take ``memory_s``, run through ``stages`` buffers (module docstring): >=
    max(compute_s, memory_s), equal to it far from the ridge, ``(C + 1) / C`` times it at
    the ridge. ``stages`` <= 0 or a zero side: the plain max."""
    if stages <= 0 or compute_s <= 0 or memory_s <= 0:
        return max(compute_s, memory_s)
    rho = compute_s / memory_s  # mu1 / mu2: the memory rate over the MMA rate
    c = stages
    if abs(rho - 1.0) < 1e-9:
        share = c / (c + 1.0)
    elif rho > 1.0:
        # Divide through by rho**(C + 1) so that large rho cannot overflow.
        inv = 1.0 / rho
        share = (inv**c - 1.0) / (inv ** (c + 1) - 1.0)
    else:
        share = (rho - rho ** (c + 1)) / (1.0 - rho ** (c + 1))
    # share = X / mu2: the fraction of its own rate the MMA side reaches.
    return max(compute_s / share, compute_s, memory_s)
