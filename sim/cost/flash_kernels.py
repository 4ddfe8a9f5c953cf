"""What the FlashAttention releases run: the devices and dtypes each supports, and the head
dims its kernels are compiled for (a call runs the smallest compiled head dim that holds its
own, so an odd head dim pays for the next one up)."""

from __future__ import annotations

import math

# What the FlashAttention releases run (Dao-AILab/flash-attention README, "FlashAttention
# currently supports"): FA1 "Turing or Ampere GPUs ... fp16 and bf16 ... Head dimensions that
# are multiples of 8, up to 128"; FA2 "Ampere, Ada, or Hopper GPUs ... Datatype fp16 and bf16
# ... All head dimensions up to 256". (minimum compute capability, dtypes, largest head dim)
FLASH_LIMITS: dict[str, tuple[float, tuple[str, ...], int]] = {
    "flash1": (7.5, ("fp16", "bf16"), 128),
    "flash2": (8.0, ("fp16", "bf16"), 256),
}


# Head dims a FlashAttention kernel is compiled for: a call runs the smallest one that holds its
# head dim, and its MMAs run over that whole width (the extra columns are zero-filled in shared
# memory; the loads are predicated, so HBM moves only the real head dim). FA2:
# csrc/flash_attn/src/static_switch.h ``HEADDIM_SWITCH`` (32, 64, 96, ..., 256; the copy in
# pytorch aten/src/ATen/native/transformers/cuda/flash_attn/static_switch.h is the same); FA3:
# hopper/flash_api.cpp ``round_up_headdim`` (64, 96, 128, 192, 256).
KERNEL_HEAD_DIMS: dict[str, tuple[int, ...]] = {
    "flash2": (32, 64, 96, 128, 160, 192, 224, 256),
    "flash3": (64, 96, 128, 192, 256),
}


def kernel_head_dim(impl: str, head_dim: float, tile_k: int) -> int:
    """The head dim ``impl``'s MMAs run over: the kernel's compiled head dim
    (``KERNEL_HEAD_DIMS``), else ``head_dim`` padded to the MMA tile's k."""
    for compiled in KERNEL_HEAD_DIMS.get(impl, ()):
        if head_dim <= compiled:
            return compiled
    return math.ceil(head_dim / tile_k) * tile_k
