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
"""

from __future__ import annotations

from xpusim.hwprofiles.spec import Device

# The CUDA compute capabilities of the datacenter Blackwell parts (B200/GB200 10.0, B300 10.3).
SM100_CAPABILITIES = ("10.0", "10.3")
CUDNN_SM100_FWD_OVERLAP = 1.0


def cudnn_sm100_fwd(device: Device, impl: str, pass_: str) -> bool:
    """Whether ``impl`` on ``device`` for ``pass_`` is cuDNN's ping-pong SM100 forward."""
    return (impl == "cudnn" and pass_ == "fwd"
            and device.kernels.compute_capability in SM100_CAPABILITIES)


def steady_overlap(device: Device, impl: str, pass_: str, overlap: float) -> float:
    """Share of min(MMA, softmax) a steady-state key block hides: 1 for cuDNN's SM100 forward
    (module docstring), ``overlap`` (the implementation's own) otherwise."""
    return CUDNN_SM100_FWD_OVERLAP if cudnn_sm100_fwd(device, impl, pass_) else overlap


__all__ = ["CUDNN_SM100_FWD_OVERLAP", "SM100_CAPABILITIES", "cudnn_sm100_fwd", "steady_overlap"]
