"""Which ATen kernel torch runs a CPU nearest upsampling on, what it moves, and the kind a
CPU prices it under.

``upsample_nearest2d_kernel_impl`` (pytorch/pytorch aten/src/ATen/native/cpu/
UpSampleKernel.cpp; the same in the revisions from v2.5.1 to v2.14.0, so in the torch 2.13
the calibration runs) chooses by ``_use_vectorized_kernel_cond_2d``::

    (input.is_contiguous(ChannelsLast) && input.size(1) > 3)
        || (output.size(-2) + output.size(-1)) <= 128

("benchmarks showed that this also depends on the *output* size ... The current 128
threshold was determined through benchmarks"). True runs
``cpu_upsample_nearest_channels_last``, false the generic N-d kernel
(``upsample_generic_Nd_kernel_impl``: a TensorIterator over precomputed indices). The
simulator's inputs are NCHW-contiguous (``F.interpolate`` on a conv's output, as in CDC), for
which the channels-last clause holds only at a 1 x 1 input, where the output clause holds too
(factor <= 64): so the rule is output H + W <= 128.

On an NCHW input the channels-last kernel moves more than the generic one's read of the input
and write of the output: it makes ``input_.contiguous(ChannelsLast)`` (a transposing copy:
read and write the input), ``output_.contiguous(ChannelsLast)`` of the NCHW output (read and
write the output), copies C-vectors from the one to the other (read the input, write the
output) and ends with ``output_.copy_(output)`` back to NCHW (read and write the output):
3 x input + 5 x output elements against 1 + 1. Checked with torch.profiler on the dev VM
(torch 2.13.0+cpu, fp32, 16 channels, x2, 2026-12-07): outputs 32x32, 64x64 and 32x96
(H + W = 64, 128, 128) ran ``aten::contiguous`` / ``aten::clone`` and three ``aten::copy_``
inside ``aten::upsample_nearest2d``; 66x64, 32x98 and 128x128 (130, 130, 256) no copy. Measured (docs/calibration_notes.md,
twenty-fourth session; the stored quick and full runs): 2.5-4.9 ns per output element on this
path against 0.6-1.0 ns on the generic one, 0.11-0.21 ns per byte of that traffic on both.

A CPU prices an UPSAMPLE op on the channels-last path with that traffic, and under its own
kind ``upsample_cl`` where its calibration fitted one (the copies are strided transposes, not
the generic kernel's stream); off a CPU nothing changes.
"""

from __future__ import annotations

from xpusim.hwprofiles.spec import Device
from xpusim.sim.ir import MAIN_MEMORY, Op, OpKind, UpsampleShape

# _use_vectorized_kernel_cond_2d: output H + W at most this runs the channels-last kernel.
CHANNELS_LAST_MAX_OUTPUT_HW = 128
# Elements the channels-last kernel reads and writes per input / output element on an
# NCHW tensor (module doc): input relayout 2 + kernel read 1; output relayout 2 + kernel
# write 1 + copy back 2.
CL_INPUT_PASSES = 3
CL_OUTPUT_PASSES = 5


def uses_channels_last_kernel(shape: UpsampleShape) -> bool:
    """Whether torch's CPU kernel for this NCHW nearest upsampling is the channels-last one
    (output H + W <= 128, module doc). A shape that does not state its output size counts
    as the generic kernel, the one every upsampling was priced as before the rule."""
    if shape.h_out <= 0 or shape.w_out <= 0:
        return False
    return shape.h_out + shape.w_out <= CHANNELS_LAST_MAX_OUTPUT_HW


def _cl_op(op: Op, device: Device) -> bool:
    return (
        device.arch == "cpu"
        and op.kind == OpKind.UPSAMPLE
        and isinstance(op.shape, UpsampleShape)
        and uses_channels_last_kernel(op.shape)
    )


def main_memory_bytes(op: Op, device: Device) -> float:
    """Main-memory bytes ``op`` moves on ``device``: its own, except a CPU's channels-last
    upsampling, which moves 3 x input + 5 x output elements (module doc)."""
    nbytes = op.bytes.get(MAIN_MEMORY, 0.0)
    if not _cl_op(op, device):
        return nbytes
    assert isinstance(op.shape, UpsampleShape)
    numel_out = op.shape.numel
    numel_in = numel_out / (op.shape.factor * op.shape.factor)
    per_element = nbytes / (numel_in + numel_out)  # the op's bytes: input + output once
    return (CL_INPUT_PASSES * numel_in + CL_OUTPUT_PASSES * numel_out) * per_element


def upsample_kind(op: Op, device: Device, split: bool | None = None) -> str:
    """The kind ``device`` prices an UPSAMPLE ``op`` under: UPSAMPLE_CL on a CPU's
    channels-last path, else UPSAMPLE. ``split`` as ``priced_kind``'s: None (pricing) only
    where the calibration prices UPSAMPLE_CL (its ``kind_speed`` has the kind), True by the
    rule alone (the fit's table), False never."""
    if not _cl_op(op, device):
        return str(op.kind)
    if split is None:
        split = str(OpKind.UPSAMPLE_CL) in device.efficiency.kind_speed
    return str(OpKind.UPSAMPLE_CL) if split else str(op.kind)
