"""cuDNN's SM100 (Blackwell) fused-attention forward: the softmax hidden behind the MMAs.

cuDNN's SDPA forward kernels for Blackwell are open source since cuDNN frontend 1.19
("cuDNN's SDPA Fprop implementation is now open source", release notes of v1.19.0, the
version recommended for cuDNN 9.19.1; NVIDIA/cudnn-frontend
python/cudnn/sdpa/fwd/kernels/prefill_d128_f16_sm100.py @ 0743c455, module docstring). The
d = 128 prefill kernel holds two Q tiles per CTA (``TILES_Q=2``) with two softmax warpgroups,
four correction warps and a single-thread ``tcgen05`` MMA issuer accumulating S and O in
tensor memory: while one softmax warpgroup exponentiates its tile's scores, the MMA warp runs
the other tile's QK^T and PV. So a key block costs max(MMA, softmax), not their sum: the
steady-state overlap is 1 (``attention_impl.block_terms``: ``block = mma + softmax -
overlap x min``). The FP8 kernel (``prefill_d128_fp8_sm100.py``) shares this flavor's config.
The backward is not taken to overlap: the frontend's open-source SM100 backwards cover only
d = 256 and d in (256, 512]; a d = 128 ``sdpa_backward()`` "falls through to the cuDNN backend"
(python/cudnn/sdpa/frost/SUPPORT_MATRIX_TRACKER.md @ 00fc1622), whose structure is not
published (docs/attention_notes.md, "cuDNN's SM100 backward at d = 128: checked, not modelled").

Releases before this structure are not modelled separately: the B200 rows of cuDNN 9.13
(corpus B15) run ~20-30% below it (docs/attention_notes.md, "Blackwell").

FlashAttention-4 (``flash4``): Dao-AILab/flash-attention ``flash_attn/cute/flash_fwd_sm100.py``
(CuTe DSL), read at 117d189e (the #2869 fix that the B17 rows' pinned main 94e22c9 carries,
benchmarks/README_sm100_dense_varlen.md @ efd40b6b) with ``softmax.py`` / ``utils.py``. The
forward has cuDNN's SM100 structure: ``q_stage = 2`` Q tiles of ``m_block_size = 128`` rows per
CTA, ``n_block_size = 128`` keys per block (interface.py's SM100 default ``FwdConfig(128, 128)``;
"All original-shape arms use 128x128 tiles and q_stage=2", the README), two softmax warpgroups
(warps 0-3, 4-7), four correction warps (8-11), one MMA warp issuing ``tcgen05`` MMAs that
accumulate S and O in tensor memory (two S and two O buffers of 128 columns: 512 = all of TMEM),
one load and one epilogue warp. So a key block costs max(MMA, softmax) (overlap 1), and the work
item is the CTA's 256 query rows (``FLASH4_TILE``). Noncausal d = 128/192 runs 2-CTA ``tcgen05``
MMAs (the pair shares operands; per SM the MMA work is the same); causal runs one CTA per tile
with the longest-processing-time-first scheduler (``SingleTileLPTScheduler``), which
``attention_impl.HEAVY_FIRST`` places the same way; causal blocks above the diagonal are skipped.

Terms beyond cuDNN's, per score of a key block:

* software exp2 (``flash4_mufu_share``): ``SoftmaxSm100.apply_exp2_convert`` walks each
  thread's score row (one TMEM lane per row: ``n_block_size`` values) in fragments of 32 and
  computes a pair on the FMA pipe instead of ``MUFU.EX2`` where ``k % freq >= freq - res``
  (``res`` = 4), in fragments ``start <= j < last`` only; ``freq``/``start`` from the
  release's ``_TUNING_CONFIG`` (2-CTA noncausal d128: 10/1; 1-CTA causal d128: 16/1; d192:
  16/0 and 32/1; any other d <= 128: the defaults 16/1; SM103 (B300): 0, "SM103 has fast
  native exp2"). d128 noncausal: 6 of 16 pairs in 2 of 4 fragments = 18.75%; 16/1: 12.5%.
* the emulated exp2's cost (``EX2_EMU_LANE_OPS`` = 9 FP32-lane operations per value):
  ``utils.ex2_emulation_2`` per pair: 2 FMNMX (clamp at -127), a packed round-down FADD, two
  packed FSUB (fraction), 3 packed FFMA (cubic Horner), 2 SHL + 2 IADD (exponent bits). A packed
  f32x2 instruction is taken to do two lanes' work (the FP32 peak counts each lane once).
* lazy rescaling of O (``RESCALE_SHARE`` = 0.1): the correction warps rescale a row's O
  accumulator (d_v multiplies in TMEM) only when its max grows by more than
  ``rescale_threshold`` (8 in log2 units), which "cut[s] down on output rescaling operations by
  a factor of 10" (Modal, "We reverse-engineered Flash Attention 4", 2025-09-26; Tri Dao on the
  FA4 paper: "new online softmax to avoid 90% of softmax rescaling"): 0.1 d_v / Bc per score.

Not modelled: the 2-CTA operand sharing (the README's forced-1CTA arm moves the rows by
-2.8..+3.0%), tensor-memory load/store time of S, P and O (no published rate), FP8 (a separate
tuning table and output dtype; refused), and the backward (``flash_bwd_sm100.py`` exists, but
its shared-memory-bound structure has no terms here; refused).
"""

from __future__ import annotations

import math
from typing import Protocol

from xpusim.hwprofiles.spec import Device
from xpusim.sim.errors import InputError
from xpusim.sim.ir import dtype_bytes

# The CUDA compute capabilities of the datacenter Blackwell parts (B200/GB200 10.0, B300 10.3).
SM100_CAPABILITIES = ("10.0", "10.3")
SM103_CAPABILITY = "10.3"  # B300/GB300: FA4 uses the hardware exp2 only (module docstring)
CUDNN_SM100_FWD_OVERLAP = 1.0
# FlashAttention-4's forward (module docstring): q_stage x m_block_size query rows per CTA,
# n_block_size keys per block.
FLASH4_M_BLOCK = 128
FLASH4_Q_STAGE = 2
FLASH4_N_BLOCK = 128
FLASH4_TILE = (FLASH4_Q_STAGE * FLASH4_M_BLOCK, FLASH4_N_BLOCK)
EX2_FRAGMENT = 32  # apply_exp2_convert's frg_tile
EX2_EMU_RES = 4  # apply_exp2_convert's ex2_emu_res default (only d256 tunes it)
EX2_EMU_LANE_OPS = 9.0  # FP32-lane operations of one emulated exp2 (module docstring)
RESCALE_SHARE = 0.1  # share of key blocks whose O rows the correction warps rescale
# (freq, start fragment) of the 16-bit forward, by (2-CTA, causal, padded head dim):
# flash_fwd_sm100.py _TUNING_CONFIG @ 117d189e; other keys take the defaults (16, 1) at d <= 128.
EX2_TUNING = {(True, False, 128): (10, 1), (False, True, 128): (16, 1),
              (True, False, 192): (16, 0), (False, True, 192): (32, 1)}
EX2_DEFAULT = (16, 1)


def cudnn_sm100_fwd(device: Device, impl: str, pass_: str) -> bool:
    """Whether ``impl`` on ``device`` for ``pass_`` is cuDNN's ping-pong SM100 forward."""
    return (impl == "cudnn" and pass_ == "fwd"
            and device.kernels.compute_capability in SM100_CAPABILITIES)


def steady_overlap(device: Device, impl: str, pass_: str, overlap: float) -> float:
    """Share of min(MMA, softmax) a steady-state key block hides: 1 for cuDNN's SM100 forward
    and FlashAttention-4's (module docstring), ``overlap`` (the implementation's own) otherwise."""
    if impl == "flash4" or cudnn_sm100_fwd(device, impl, pass_):
        return CUDNN_SM100_FWD_OVERLAP
    return overlap


def check_flash4_device(device: Device, flag: str = "--impl") -> None:
    """Raise a clear InputError naming ``flag`` unless ``device`` is an SM100/SM103 GPU."""
    cc = device.kernels.compute_capability
    if device.arch != "nvidia" or cc not in SM100_CAPABILITIES:
        raise InputError(f"{flag} flash4: FlashAttention-4 (flash_attn/cute, tcgen05 + tensor "
                         f"memory) is modelled for SM100/SM103 (B200, GB200, B300, GB300) only; "
                         f"{device.name} is {cc or device.arch}; use flash3 on Hopper, flash2 "
                         f"or cudnn elsewhere")


def check_trainable(impl: str, flag: str = "--attention-impl") -> None:
    """Refuse a forward-only implementation where a backward is needed (``train``): FA4's
    SM100 backward is not modelled (module docstring), so a step would fail at its first
    backward attention op instead of here."""
    if impl == "flash4":
        raise InputError(f"{flag} flash4: training needs the backward, and FlashAttention-4's "
                         "SM100 backward (flash_bwd_sm100.py) is not modelled; use cudnn "
                         "(TransformerEngine's choice on Blackwell) or flash2")


def check_flash4_call(dtype: str, pass_: str) -> None:
    """Raise a clear InputError unless FA4's modelled 16-bit forward runs this call."""
    if dtype_bytes(dtype) != 2:
        raise InputError(f"--impl flash4: only the bf16/fp16 forward is modelled, got {dtype} "
                         f"(FA4's FP8 forward has its own tuning and output dtype; use cudnn)")
    if pass_ != "fwd":
        raise InputError(f"--impl flash4 --pass {pass_}: FlashAttention-4's SM100 backward "
                         f"(flash_bwd_sm100.py) is not modelled; price the forward, or use "
                         f"cudnn for the backward")


class Call(Protocol):
    """The fields of an attention call (``attention_impl.AttnShape``) FA4's choices read."""

    @property
    def causal(self) -> bool: ...

    @property
    def head_dim(self) -> float: ...

    @property
    def q_len(self) -> float: ...

    @property
    def vd(self) -> float: ...


def two_cta(call: Call) -> bool:
    """Whether FA4 runs 2-CTA MMAs (interface.py ``use_2cta_instrs``, dense call): noncausal,
    padded head dim 128 or 192, padded value head dim 128, more than 2 m-blocks of queries."""
    return (not call.causal and _padded(call.head_dim) in (128, 192)
            and _padded(call.vd) == 128 and call.q_len > 2 * FLASH4_M_BLOCK)


def flash4_mufu_share(device: Device, call: Call, n_block: int = FLASH4_N_BLOCK) -> float:
    """Share of the exponentials FA4 leaves on the MUFU (``1 -`` the emulated share, module
    docstring): a thread's row of ``n_block`` scores in fragments of ``EX2_FRAGMENT``."""
    hd = _padded(call.head_dim)
    key = (two_cta(call), call.causal, hd)
    if device.kernels.compute_capability == SM103_CAPABILITY or (
            key not in EX2_TUNING and hd > 128):  # the default emulates only up to d128 here
        return 1.0
    freq, start = EX2_TUNING.get(key, EX2_DEFAULT)
    fragments = n_block // EX2_FRAGMENT
    pairs = range(0, EX2_FRAGMENT, 2)
    emulated_pairs = sum(1 for k in pairs if k % freq >= freq - EX2_EMU_RES)
    emulated_fragments = max(0, fragments - 1 - start)  # start <= j < last fragment
    share = emulated_pairs / len(pairs) * emulated_fragments / fragments
    return 1.0 - share


def flash4_extra_alu(mufu_share: float, v_head_dim: float, n_block: int) -> float:
    """FP32-lane operations per score FA4 adds to the online softmax: the emulated exp2 of
    its share of the scores and the correction warps' lazy O rescaling (module docstring)."""
    return (1.0 - mufu_share) * EX2_EMU_LANE_OPS + RESCALE_SHARE * v_head_dim / n_block


def _padded(head_dim: float) -> int:
    """FA4 pads head dims to a multiple of 16 (``hdim_multiple_of``)."""
    return int(math.ceil(head_dim / 16) * 16)


__all__ = ["CUDNN_SM100_FWD_OVERLAP", "FLASH4_TILE", "Call", "SM100_CAPABILITIES", "check_flash4_call",
           "check_flash4_device", "check_trainable",
           "cudnn_sm100_fwd", "flash4_extra_alu", "flash4_mufu_share", "steady_overlap",
           "two_cta"]
