"""FlashAttention kernels run the smallest head dim they are compiled for that holds the
call's (sim/cost/flash_kernels.py): FA2 32, 64, 96, ..., 256; FA3 64, 96, 128, 192, 256. Their
MMAs run over that whole width, so an odd head dim costs what the next compiled one costs."""

from __future__ import annotations

import pytest
from xpusim.hwprofiles import load_device
from xpusim.sim.cost.attention_impl import AttnShape, block_terms
from xpusim.sim.cost.flash_kernels import kernel_head_dim

H100 = load_device("h100-sxm5-80gb")


@pytest.mark.parametrize(
    "impl, head_dim, compiled",
    [
        ("flash2", 32, 32), ("flash2", 40, 64), ("flash2", 80, 96), ("flash2", 100, 128),
        ("flash2", 136, 160), ("flash2", 200, 224), ("flash2", 256, 256),
        ("flash3", 32, 64), ("flash3", 80, 96), ("flash3", 112, 128), ("flash3", 160, 192),
        ("flash3", 256, 256),
        # kernels with no compiled list: the head dim padded to the MMA tile's k (16)
        ("cudnn", 80, 80), ("cudnn", 100, 112), ("standard", 72, 80),
    ],
)
def test_kernel_head_dim(impl, head_dim, compiled):
    assert kernel_head_dim(impl, head_dim, 16) == compiled


@pytest.mark.parametrize("impl, odd, compiled", [("flash2", 100, 128), ("flash3", 80, 96)])
def test_odd_head_dim_runs_the_compiled_kernels_mma(impl, odd, compiled):
    """One key block's MMA time at the odd head dim equals the compiled one's; the useful
    FLOPs (and so the achieved rate) are the odd one's."""
    def mma(d: int) -> float:
        return block_terms(H100, impl, AttnShape(1, 32, 4096, 4096, d), "fwd", 128, 128).mma_s

    assert mma(odd) == mma(compiled)
    # MMA time grows with the width it runs over: the compiled one, not the odd one
    assert mma(odd) / mma(64) == pytest.approx(compiled / 64, rel=1e-12)
