"""NVLS (NVLink SHARP) all-reduce inside one node: the chunk pipeline.

NCCL's tuner prices NVLS with one latency and a flat bandwidth (tuning.cc), and the
link model here gives the in-switch traffic at the profile's ``nvls_efficiency``, fit
at 16 GiB. What neither shows is how the kernel walks the buffer (NVIDIA/nccl
device/all_reduce.h, ``RunWorkColl<AllReduce, NVLS, Simple>``, one node): each of
NCCL's NVLS channels loops over ``nHeads x chunk`` bytes, scatter warps handing one
chunk to each head, the head multimem-reducing and multicasting its chunk, gather
warps copying the results out, the three warp groups pipelined across loops. The chunk
shrinks from 128 KiB to 64, 32 and 16 KiB as the message gets smaller (enqueue.cc),
so mid-size messages pay more per-chunk handshakes per byte, and every call pays the
pipeline's fill. The constants and their sources are in sim/data/nccl_tuning.toml,
[nvls]; docs/collective.md has the check against nccl-tests on 8 x H100.
"""

from __future__ import annotations

from xpusim.sim.network.protocols import tuning


def chunk_bytes(nbytes: float, heads: int) -> int:
    """The NVLS chunk NCCL uses for an all-reduce of ``nbytes`` with ``heads`` heads
    (enqueue.cc: start at nvlsChunkSize, step down while the message is small against
    concurrentOps = channels x heads)."""
    cfg = tuning().nvls
    ops = cfg.channels * heads
    chunk = cfg.max_chunk_bytes
    for mult, ceiling in cfg.chunk_rules:
        if nbytes < mult * ops * chunk and chunk > ceiling:
            chunk = ceiling
    return chunk


def pipeline_s(nbytes: float, heads: int, transfer_s: float) -> float:
    """Seconds the chunk pipeline adds to an NVLS all-reduce of ``nbytes`` on one node
    whose bandwidth-bound time (at the 128 KiB-chunk asymptote) is ``transfer_s``.

    With L = channels x heads x chunk bytes per loop (all channels), tau = heads x the
    per-chunk handshake and B the bandwidth without handshakes, the kernel takes
    (nbytes / L + fill) x (L / B + tau). ``transfer_s`` = nbytes x (1/B + tau / L_max)
    already holds the handshakes at the largest chunk, so the addition is
    nbytes x tau x (1/L - 1/L_max) + fill x (L / B + tau).
    """
    if nbytes <= 0 or heads < 2 or transfer_s <= 0:
        return 0.0
    cfg = tuning().nvls
    tau = heads * cfg.step_overhead_us * 1e-6
    loop = cfg.channels * heads * chunk_bytes(nbytes, heads)
    loop_max = cfg.channels * heads * cfg.max_chunk_bytes
    per_byte = max(0.0, transfer_s / nbytes - tau / loop_max)  # 1 / B
    fill = cfg.pipeline_fill_loops
    return nbytes * tau * (1 / loop - 1 / loop_max) + fill * (loop * per_byte + tau)
