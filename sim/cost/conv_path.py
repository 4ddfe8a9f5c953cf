"""Which ATen path torch runs a CPU convolution on, and the op kind a CPU prices it under.

torch's CPU convolution has two forward paths of its own: oneDNN (``mkldnn_convolution``:
direct / Winograd kernels) and the "slow" path (``_slow_conv2d_forward``, ``thnn_conv2d``:
im2col into a column buffer, then one BLAS GEMM). ``ConvParams::use_mkldnn``
(pytorch/pytorch aten/src/ATen/native/Convolution.cpp @ 954cecd170713eed16a75b7dcea776a5abf0f134)
chooses: bf16 / fp16 inputs go to oneDNN where the CPU supports them; an fp32 input goes to
oneDNN only if

    (strided or dilated or batch >= 16 or the kernel is not 1x1 or get_num_threads() > 1)
    and (groups > 1 or (kernel_w > 3 and kernel_h > 3) or batch > 1
         or batch * C_in * H * W > 20480)   // "for some case, native is faster"

and every other dtype takes the slow path. So at one thread and batch 1 a 1x1 convolution
never reaches oneDNN and a 3x3 one only when its input has more than 20,480 elements.
Checked with torch.profiler on the dev VM (torch 2.13.0+cpu, one thread, fp32, batch 1,
2026-12-07): 32x25x25 and 20x32x32 (20,480) 3x3 ran ``_slow_conv2d_forward``, 32x26x26
(21,632) and 20x32x33 (21,120) ``mkldnn_convolution``; 64x64x64 1x1 (262,144) the slow
path; a 5x5 at 16,384 elements oneDNN. The two paths run at different speeds per FLOP
(docs/calibration_notes.md, twentieth session), so a CPU prices a slow-path
convolution under its own kind, ``conv2d_im2col``, whose speed and overhead a calibration
fits apart from oneDNN's ``conv2d``. A slow-path 1x1, stride-1, unpadded convolution has
no column buffer: ``slow_conv2d_forward_out_cpu`` takes the input itself as the GEMM's
operand (pytorch/pytorch aten/src/ATen/native/ConvolutionMM2d.cpp @
d7e1fe69e4010ba92e9c8f690403b2767df43ca4: ``finput = input.view(...)`` for that shape, else
``finput.resize_`` to (C_in x kh x kw) x (H_out x W_out) and an unfold), so it is one BLAS
GEMM and priced as the ``gemm`` kind. Off a CPU (cuDNN, aclnn) nothing changes: the op
keeps its kind.
"""

from __future__ import annotations

from xpusim.hwprofiles.spec import Device
from xpusim.sim.ir import ConvShape, Op, OpKind

# ConvParams::use_mkldnn: an fp32 input of more elements than this goes to oneDNN (batch 1).
MKLDNN_MIN_INPUT_ELEMENTS = 20480
# Input dtypes oneDNN takes whatever the shape (mkldnn_bf16_device_check /
# mkldnn_fp16_device_check: assumed true on a CPU the profile prices them on).
_MKLDNN_ALWAYS = ("bf16", "fp16")


def uses_mkldnn(shape: ConvShape, dtype: str, threads: int) -> bool:
    """Whether torch (``ConvParams::use_mkldnn``, module doc) runs this forward
    convolution through oneDNN at ``threads`` intra-op threads. A shape that does not
    state its input (``in_elements`` 0) counts as oneDNN, the kind every convolution was
    priced under before the rule."""
    if shape.in_elements <= 0 or dtype in _MKLDNN_ALWAYS:
        return True
    if dtype != "fp32":
        return False
    not_1x1_or_threaded = (
        shape.stride > 1 or shape.images >= 16 or shape.kernel != 1 or threads > 1
    )
    big_enough = (
        shape.groups > 1
        or shape.kernel > 3
        or shape.images > 1
        or shape.in_elements > MKLDNN_MIN_INPUT_ELEMENTS
    )
    return not_1x1_or_threaded and big_enough


def conv_kind(op: Op, device: Device, split: bool | None = None) -> str:
    """The kind ``device`` prices ``op`` under: a CPU's CONV2D op that torch runs on the
    slow path is CONV2D_IM2COL, or GEMM where it needs no column buffer; every other op
    (and every op off a CPU) its own kind. ``split`` as ``priced_kind``'s
    (sim/cost/priced_kind.py): None only where the device's calibration prices
    CONV2D_IM2COL, True by the rule alone (the fit's table), False never."""
    kind = str(op.kind)
    if device.arch != "cpu" or kind != OpKind.CONV2D or not isinstance(op.shape, ConvShape):
        return kind
    if split is None:
        split = str(OpKind.CONV2D_IM2COL) in device.efficiency.kind_speed
    if not split or uses_mkldnn(op.shape, op.dtype, device.threads):
        return kind
    if not needs_columns(op.shape):
        return str(OpKind.GEMM)
    return str(OpKind.CONV2D_IM2COL)


def needs_columns(shape: ConvShape) -> bool:
    """Whether the slow path unfolds the input into a column buffer: every shape but a
    1x1, stride-1, unpadded convolution, whose input already is the GEMM's operand
    (``slow_conv2d_forward_out_cpu``: ``finput = input.view(...)`` for that shape, else
    ``finput.resize_`` to (C_in x kh x kw) x (H_out x W_out) and an unfold; module doc)."""
    return shape.kernel != 1 or shape.stride != 1 or shape.padding != 0
