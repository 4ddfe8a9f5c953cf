"""Out-of-range shape families: whole ranges of sizes the calibration never fits.

A seeded random split (``suites.split_shapes``) holds out shapes from *inside* the
grid the fit sees, so it only tests interpolation. The kernel suites also carry the
shapes below, which lie outside every fitted range along at least one axis (odd
lengths, very small and very large sizes, head dims and expert widths the grid never
has). They are always held out, in quick and full mode alike, and ``validate``
reports their errors apart from the in-range ones: a model form that carries across
shapes keeps both small; per-shape corrections fitted on the grid do not.

Each family says which axis it leaves. Sizes are kept so one run of the slowest case
stays under ~0.2 s on one CPU core (the harness repeats it until the timing is stable).
"""

from __future__ import annotations

Shape = dict[str, float]


def _attention(batch: int, heads: int, seq: int, head_dim: int, causal: int) -> Shape:
    return {"batch": batch, "heads": heads, "seq": seq, "head_dim": head_dim, "causal": causal}


# Fit grid: batch 1-2, heads 4/8, seq 128-1024, head_dim 64 (+128 at batch 2, heads 4).
ATTENTION_OUT_OF_RANGE: tuple[Shape, ...] = (
    _attention(1, 6, 700, 64, 0),  # odd length and head count (issue 15's example)
    _attention(1, 4, 96, 64, 1),  # shorter than any fitted sequence
    _attention(1, 4, 2048, 64, 0),  # longer than any fitted sequence
    _attention(2, 3, 333, 32, 0),  # head_dim 32: never fitted; odd length
    _attention(1, 4, 512, 96, 1),  # head_dim 96: between the fitted 64 and 128
    _attention(1, 2, 1536, 128, 1),  # long sequence at head_dim 128
)


def _moe(tokens: int, hidden: int, ffn: int, experts: int, top_k: int, shared: int) -> Shape:
    return {
        "tokens": tokens,
        "hidden": hidden,
        "expert_ffn": ffn,
        "experts": experts,
        "top_k": top_k,
        "shared_experts": shared,
    }


# Fit grid: tokens 64-1024, (hidden, ffn) (256, 512) / (512, 1024), (experts, top_k)
# (8, 2) / (16, 4), 0-1 shared experts.
MOE_OUT_OF_RANGE: tuple[Shape, ...] = (
    _moe(16, 256, 512, 8, 2, 0),  # fewer tokens than any fitted case: ~4 rows per expert
    _moe(2048, 256, 512, 8, 2, 1),  # more tokens than any fitted case
    _moe(256, 384, 768, 8, 2, 0),  # a width between the fitted ones
    _moe(512, 256, 512, 32, 8, 0),  # 32 experts, top-8: more, smaller expert GEMMs
    _moe(100, 512, 1024, 16, 4, 1),  # odd token count
    _moe(256, 768, 256, 16, 4, 0),  # fine-grained experts: ffn narrower than hidden
)


def _cdc(height: int, width: int) -> Shape:
    return {"upscale": 4, "batch": 1, "height": height, "width": width}


# Fit grid: LR sides 16-64 (multiples of 16: the hourglass max-pools four times).
# One side beyond the grid, the area within it: a CDC pass at 64 x 64 already takes
# ~1 s on one core, and the harness repeats each case.
CDC_OUT_OF_RANGE: tuple[Shape, ...] = (
    _cdc(80, 32),  # height beyond the grid
    _cdc(16, 96),  # a long, thin image
    _cdc(96, 16),  # the same area, transposed
)

OUT_OF_RANGE: dict[str, tuple[Shape, ...]] = {
    "standard-attention": ATTENTION_OUT_OF_RANGE,
    "fastattention": ATTENTION_OUT_OF_RANGE,
    "moe": MOE_OUT_OF_RANGE,
    "cdc": CDC_OUT_OF_RANGE,
}


def shape_key(shape: Shape) -> tuple[tuple[str, float], ...]:
    """A shape as a hashable key, values as floats (how ``Case.shape`` stores them)."""
    return tuple(sorted((k, float(v)) for k, v in shape.items()))


_KEYS: dict[str, frozenset] = {
    suite: frozenset(shape_key(s) for s in shapes) for suite, shapes in OUT_OF_RANGE.items()
}


def is_out_of_range(suite: str, shape: Shape) -> bool:
    """Whether ``shape`` is one of the suite's out-of-range family shapes."""
    return shape_key(shape) in _KEYS.get(suite, frozenset())
