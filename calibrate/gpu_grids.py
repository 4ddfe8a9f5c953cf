"""Shapes a GPU (or NPU) calibration times in place of the CPU grids of ``suites.py``.

The CPU grids are sized for one core of the dev VM (a 1024^3 GEMM, 16 MiB vectors). On
an H100 they would all be launch-bound: a 1024^3 bf16 GEMM is 2.1 GFLOP, ~3 us at 700
TFLOP/s, under the ~5 us a framework launch costs (the profiles' `launch_overhead_us`),
and a 16 MiB vector sits in the 50 MiB L2 (60 MiB on H200), so no case would see HBM.
These grids run from launch-bound sizes up to ones that fill the chip and stream well
past the L2 (every memory-bound suite goes to >= 512 MiB per tensor), so the fit sees
the launch overhead, the fill (half-size) curve, the cache term and the bandwidth apart.

Size limits: each tensor <= 1 GiB at bf16 (2 GiB at fp32), so every case fits an 80 GB
card; the slowest quick cases (FastAttention's block loop at seq 2048, ~0.04 s a call
predicted on H100) keep ``--quick`` (one warm-up call, then >= 5 reps or 0.25 s of them
per case) near one minute of timing on an H100 (tests/test_calibrate_gpu.py estimates it
from the simulator's own prediction of every case).

Which suites run on a GPU at all is ``suites.CPU_ONLY``; a suite without a grid here
keeps its CPU grid.
"""

from __future__ import annotations

import itertools

Shape = dict[str, float]


def _gemm(sizes: tuple[int, ...], limit_flops: float) -> tuple[Shape, ...]:
    return tuple(
        {"m": m, "n": n, "k": k}
        for m, n, k in itertools.product(sizes, repeat=3)
        if 2.0 * m * n * k <= limit_flops
    )


# Odd sizes (511, 1000) keep tile and wave quantisation in the grid, as 127 / 1000 do on CPU.
GEMM_FULL = _gemm((128, 511, 1024, 2048, 4096, 8192), 2.0 * 4096 * 4096 * 8192)
GEMM_QUICK = _gemm((128, 1000, 4096), 2.0 * 4096**3)

_BMM = ((256, 256, 64), (1024, 1024, 64), (2048, 2048, 128), (1024, 128, 1024), (4096, 4096, 128))
BMM_FULL = tuple({"batch": b, "m": m, "n": n, "k": k} for b in (8, 32) for m, n, k in _BMM)
BMM_QUICK = BMM_FULL[::2]

# Bytes copied: 1 MiB (launch-bound) .. 1 GiB (HBM-bound, 2 GiB of traffic).
MEMCPY_FULL = tuple({"bytes": 2**e} for e in (20, 23, 25, 27, 29, 30))
MEMCPY_QUICK = tuple({"bytes": 2**e} for e in (20, 25, 29))

# Elements of an elementwise op: 64 Ki (launch-bound), 4 Mi (L2-resident at bf16), 64 Mi
# and 256 Mi (HBM-bound).
NUMEL_FULL = tuple({"numel": 2**e} for e in (16, 20, 22, 24, 26, 28))
NUMEL_QUICK = tuple({"numel": 2**e} for e in (16, 22, 26))
# exp: four quick sizes, so its seeded split leaves the fit the 3 cases a kind needs
# (calibrate/fit.py MIN_CASES_PER_KIND), as suites' EXP_NUMELS_QUICK does on the CPU.
EXP_QUICK = tuple({"numel": 2**e} for e in (16, 20, 24, 26))

SOFTMAX_FULL = tuple({"rows": r, "cols": c} for r in (1024, 8192, 65536) for c in (128, 1000, 4096))
SOFTMAX_QUICK = tuple({"rows": r, "cols": c} for r in (1024, 65536) for c in (128, 4096))
LAYERNORM_FULL = tuple(
    {"tokens": t, "hidden": h} for t in (1024, 8192, 65536) for h in (1024, 4096, 8192)
)
LAYERNORM_QUICK = tuple({"tokens": t, "hidden": h} for t in (1024, 65536) for h in (1024, 8192))
ROWMAX_FULL = tuple({"rows": r, "cols": c} for r in (1024, 16384, 131072) for c in (128, 1024, 4096))
ROWMAX_QUICK = tuple({"rows": r, "cols": c} for r in (1024, 131072) for c in (128, 4096))
IMAGE_FULL = tuple({"channels": c, "size": n} for c in (64, 256) for n in (64, 128, 256, 512))
IMAGE_QUICK = tuple({"channels": c, "size": n} for c in (64, 256) for n in (64, 512))

# Convolutions at batch 8; no oneDNN-threshold shapes (a CPU path rule: sim/cost/conv_path.py
# applies to CPU profiles only).
CONV_FULL = tuple(
    {"batch": 8, "in_ch": c, "out_ch": o, "height": hw, "width": hw, "kernel": k}
    for c, o in ((3, 64), (64, 64), (128, 128), (256, 256))
    for hw in (32, 64, 128)
    for k in (1, 3)
)
CONV_QUICK = CONV_FULL[::3]

ATTENTION_FULL = tuple(
    {"batch": 4, "heads": h, "seq": n, "head_dim": 64, "causal": c}
    for h in (8, 16)
    for n in (512, 1024, 2048, 4096)
    for c in (0, 1)
) + tuple({"batch": 2, "heads": 8, "seq": n, "head_dim": 128, "causal": 1} for n in (1024, 3072))
# FastAttention is a Python loop over 128-row blocks (~14 launches a block pair), launch-
# bound on a GPU: 3072 would take ~0.15 s a call on H100 (predicted), so quick stops at 2048.
ATTENTION_QUICK = tuple(
    {"batch": 4, "heads": 8, "seq": n, "head_dim": 64, "causal": c}
    for n in (512, 1024, 2048)
    for c in (0, 1)
)

MOE_FULL = tuple(
    {"tokens": t, "hidden": hd, "expert_ffn": f, "experts": e, "top_k": k, "shared_experts": se}
    for t in (256, 1024, 4096)
    for hd, f in ((1024, 2048), (2048, 4096))
    for e, k in ((8, 2), (16, 4))
    for se in (0, 1)
)
MOE_QUICK = tuple(
    {"tokens": t, "hidden": 1024, "expert_ffn": 2048, "experts": 8, "top_k": 2,
     "shared_experts": se}
    for t in (256, 1024, 4096)
    for se in (0, 1)
)  # fmt: skip

# CDC's sides are multiples of 16 (its hourglass max-pools four times); 15 shapes.
CDC_FULL = tuple(
    {"upscale": 4, "batch": 1, "height": h, "width": w}
    for h, w in (
        (64, 64), (64, 128), (128, 64), (128, 128), (128, 256), (256, 128), (256, 256),
        (192, 192), (64, 256), (256, 64), (192, 128), (128, 192), (64, 192), (192, 64),
        (160, 160),
    )
)  # fmt: skip
CDC_QUICK = tuple(
    {"upscale": 4, "batch": 1, "height": h, "width": w} for h, w in ((64, 64), (128, 128), (128, 192))
)

# suite -> (full grid, quick grid) on a GPU or NPU.
GRIDS: dict[str, tuple[tuple[Shape, ...], tuple[Shape, ...]]] = {
    "gemm": (GEMM_FULL, GEMM_QUICK),
    "bmm": (BMM_FULL, BMM_QUICK),
    "memcpy": (MEMCPY_FULL, MEMCPY_QUICK),
    "add": (NUMEL_FULL, NUMEL_QUICK),
    "silu": (NUMEL_FULL, NUMEL_QUICK),
    "exp": (NUMEL_FULL, EXP_QUICK),
    "softmax": (SOFTMAX_FULL, SOFTMAX_QUICK),
    "layernorm": (LAYERNORM_FULL, LAYERNORM_QUICK),
    "rowmax": (ROWMAX_FULL, ROWMAX_QUICK),
    "maxpool": (IMAGE_FULL, IMAGE_QUICK),
    "upsample": (IMAGE_FULL, IMAGE_QUICK),
    "conv2d": (CONV_FULL, CONV_QUICK),
    "standard-attention": (ATTENTION_FULL, ATTENTION_QUICK),
    "fastattention": (ATTENTION_FULL, ATTENTION_QUICK),
    "moe": (MOE_FULL, MOE_QUICK),
    "cdc": (CDC_FULL, CDC_QUICK),
}
