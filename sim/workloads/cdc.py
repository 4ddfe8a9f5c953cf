"""IR description of a CDC super-resolution forward: the op graph ``kernels.cdc.CDC`` runs.

``describe_cdc(upscale, batch, height, width)`` walks the same layers as the PyTorch
module (Wei et al., ECCV 2020; see kernels/cdc.py for the architecture and its
source) and emits one op per kernel the eager module launches:

* every convolution as ``sim.ops.conv2d`` (bias fused, as cuDNN/aclnn run it);
* each LeakyReLU, residual add and the ``0.2*out + x`` tap as elementwise ops;
* the 2x2 max-pools and the nearest-neighbour upsamplings as POOL / UPSAMPLE ops
  (builders below: ``sim.ops`` has none);
* the residual-inception concat as a copy;
* the fusion: stack of the 3 mask logits and 3 SR images (copies), softmax over the
  3 components per RGB channel and pixel, the weighted sum, and the three mean maps.

Op names are the PyTorch module paths (the state-dict prefixes: ``HG_0.down1.res_block.
res.2``, ``upsample_flat.3.0``), plus a suffix for ops that are not modules (``.add``),
so a per-layer measurement can be joined to its op.

Convolution FLOPs equal ``torch.utils.flop_counter`` on the module exactly
(2 x MACs; 64.88 GFLOP at x4 with a 48x48 LR input); the other ops add < 1 %.
LR height and width must be multiples of 16 (four 2x2 max-pools per hourglass).

No torch here: this module is imported by the simulator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType

from xpusim.sim.errors import InputError
from xpusim.sim.ir import (
    MAIN_MEMORY,
    Op,
    OpKind,
    PoolShape,
    RankGraph,
    Unit,
    UpsampleShape,
    dtype_bytes,
)
from xpusim.sim.ops import conv2d, elementwise, memcpy, softmax

NF = 64
LR_MULTIPLE = 16
SUPPORTED_UPSCALES = (2, 3, 4)
N_HG = 6
TAP_BLOCKS = (1, N_HG // 2, N_HG - 1)  # hourglasses feeding the flat, edge, corner heads
COMPONENTS = ("flat", "edge", "corner")
LRELU_FLOPS = 2.0  # compare + multiply per element


def maxpool2d(name: str, batch: int, channels: int, height: int, width: int, dtype: str) -> Op:
    """2x2 stride-2 max-pool: 3 comparisons per output; reads the input, writes a quarter."""
    numel_in = batch * channels * height * width
    numel_out = numel_in / 4
    b = dtype_bytes(dtype)
    return Op(
        name,
        OpKind.POOL,
        3.0 * numel_out,
        MappingProxyType({MAIN_MEMORY: (numel_in + numel_out) * b}),
        dtype,
        Unit.VECTOR,
        PoolShape(numel_in, 2, height // 2, width // 2),
    )


def upsample_nearest(
    name: str, batch: int, channels: int, height: int, width: int, factor: int, dtype: str
) -> Op:
    """Nearest-neighbour x``factor``: no arithmetic, reads the input once, writes factor^2 x.

    The shape records the output's height and width: torch's CPU kernel for it depends on
    them (a CPU prices the op by ``sim/cost/upsample_path.py``; other devices as built)."""
    numel_in = batch * channels * height * width
    numel_out = numel_in * factor * factor
    b = dtype_bytes(dtype)
    return Op(
        name,
        OpKind.UPSAMPLE,
        0.0,
        MappingProxyType({MAIN_MEMORY: (numel_in + numel_out) * b}),
        dtype,
        Unit.VECTOR,
        UpsampleShape(numel_out, factor, height * factor, width * factor),
    )


@dataclass
class _Builder:
    """Appends ops in program order to one rank's compute stream (stream order = deps)."""

    graph: RankGraph
    batch: int
    dtype: str

    def conv(self, name: str, cin: int, cout: int, h: int, w: int, k: int) -> None:
        self.graph.add(conv2d(name, self.batch, cin, cout, h, w, k, dtype=self.dtype), label="cdc")

    def lrelu(self, name: str, ch: int, h: int, w: int) -> None:
        self.graph.add(
            elementwise(name, self.batch * ch * h * w, self.dtype, LRELU_FLOPS), label="cdc"
        )

    def add(self, name: str, ch: int, h: int, w: int, flops_per_element: float = 1.0) -> None:
        self.graph.add(
            elementwise(name, self.batch * ch * h * w, self.dtype, flops_per_element, 2, 1),
            label="cdc",
        )

    def pool(self, name: str, ch: int, h: int, w: int) -> None:
        self.graph.add(maxpool2d(name, self.batch, ch, h, w, self.dtype), label="cdc")

    def upsample(self, name: str, ch: int, h: int, w: int, factor: int) -> None:
        self.graph.add(
            upsample_nearest(name, self.batch, ch, h, w, factor, self.dtype), label="cdc"
        )

    def copy(self, name: str, numel: float) -> None:
        self.graph.add(memcpy(name, numel * dtype_bytes(self.dtype)), label="cdc")


def _residual_block(bld: _Builder, name: str, cin: int, cout: int, h: int, w: int) -> None:
    bld.conv(f"{name}.res.0", cin, cout, h, w, 1)
    bld.lrelu(f"{name}.res.1", cout, h, w)
    bld.conv(f"{name}.res.2", cout, cout, h, w, 3)
    bld.lrelu(f"{name}.res.3", cout, h, w)
    bld.conv(f"{name}.res.4", cout, cout, h, w, 1)
    if cin != cout:
        bld.conv(f"{name}.identity", cin, cout, h, w, 1)
    bld.add(f"{name}.add", cout, h, w)


def _inception_block(bld: _Builder, name: str, h: int, w: int) -> None:
    bld.conv(f"{name}.res1.0", NF, NF, h, w, 1)
    bld.lrelu(f"{name}.res1.1", NF, h, w)
    bld.conv(f"{name}.res2.0", NF, NF, h, w, 1)
    bld.conv(f"{name}.res2.1", NF, NF, h, w, 3)
    bld.lrelu(f"{name}.res2.2", NF, h, w)
    bld.conv(f"{name}.res3.0", NF, NF, h, w, 1)
    bld.conv(f"{name}.res3.1", NF, NF, h, w, 3)
    bld.lrelu(f"{name}.res3.2", NF, h, w)
    bld.conv(f"{name}.res3.3", NF, NF, h, w, 3)
    bld.lrelu(f"{name}.res3.4", NF, h, w)
    bld.copy(f"{name}.concat", bld.batch * 3 * NF * h * w)
    bld.conv(f"{name}.filter_concat", 3 * NF, NF, h, w, 1)
    bld.add(f"{name}.add", NF, h, w)


def _hourglass(bld: _Builder, name: str, h: int, w: int, tail: bool) -> None:
    """Op order of HourGlassBlock.forward: down path, mid, skip + up path, inter add, tail."""
    downs = ((64, 128), (128, 128), (128, 256), (256, 256))
    sizes = []
    ch_h, ch_w = h, w
    for i, (cin, cout) in enumerate(downs, start=1):
        _residual_block(bld, f"{name}.down{i}.res_block", cin, cout, ch_h, ch_w)
        bld.pool(f"{name}.down{i}.pool", cout, ch_h, ch_w)
        sizes.append((cout, ch_h, ch_w))
        ch_h, ch_w = ch_h // 2, ch_w // 2
    for i in range(2):
        _residual_block(bld, f"{name}.mid_res.{i}", 256, 256, ch_h, ch_w)
    ups = ((256, 256), (256, 128), (128, 128), (128, 64))
    for j, (cin, cout) in enumerate(ups, start=1):
        skip_ch, sh, sw = sizes[4 - j]  # skip_conv4 feeds up1, ..., skip_conv1 feeds up4
        _residual_block(bld, f"{name}.skip_conv{5 - j}", skip_ch, skip_ch, sh, sw)
        bld.upsample(f"{name}.up{j}.upsample", cin, sh // 2, sw // 2, 2)
        bld.add(f"{name}.up{j}.add", cin, sh, sw)
        _residual_block(bld, f"{name}.up{j}.res_block", cin, cout, sh, sw)
    _residual_block(bld, f"{name}.skip_conv0", NF, NF, h, w)
    bld.add(f"{name}.inter_add", NF, h, w)
    if tail:
        for i in range(2):
            _inception_block(bld, f"{name}.tail.{i}", h, w)


def _head(bld: _Builder, name: str, upscale: int, h: int, w: int, out_kernel: int) -> None:
    """make_upsample_block: LR_conv, nearest-upsample + conv + LReLU stage(s), HR_conv0, HR_conv1.

    Op names are the Sequential's module paths (``.0.0`` LR_conv, ``.1.1`` the first
    up-conv, ...), as in the state dict.
    """
    bld.conv(f"{name}.0.0", NF, NF, h, w, 3)
    factors = [3] if upscale == 3 else [2] * int(math.log2(upscale))
    for i, f in enumerate(factors, start=1):
        bld.upsample(f"{name}.{i}.0", NF, h, w, f)
        h, w = h * f, w * f
        bld.conv(f"{name}.{i}.1", NF, NF, h, w, 3)
        bld.lrelu(f"{name}.{i}.2", NF, h, w)
    hr0 = len(factors) + 1
    bld.conv(f"{name}.{hr0}.0", NF, NF, h, w, 3)  # HR_conv0
    bld.lrelu(f"{name}.{hr0}.1", NF, h, w)
    bld.conv(f"{name}.{hr0 + 1}.0", NF, 3, h, w, out_kernel)  # HR_conv1


def describe_cdc(
    upscale: int, batch: int, height: int, width: int, dtype: str = "fp32"
) -> RankGraph:
    """Op graph of one CDC forward (x``upscale``) on a batch x 3 x height x width LR input."""
    if upscale not in SUPPORTED_UPSCALES:
        raise InputError(
            f"describe_cdc: upscale must be one of {SUPPORTED_UPSCALES}, got {upscale}"
        )
    if batch < 1:
        raise InputError(f"describe_cdc: batch must be >= 1, got {batch}")
    if height < LR_MULTIPLE or width < LR_MULTIPLE or height % LR_MULTIPLE or width % LR_MULTIPLE:
        raise InputError(
            f"describe_cdc: LR height and width must be positive multiples of {LR_MULTIPLE} "
            f"(each hourglass max-pools 4 times), got {height}x{width}; pad or crop the input"
        )
    dtype_bytes(dtype)  # validates the name
    bld = _Builder(RankGraph(0), batch, dtype)
    h, w = height, width
    hr_h, hr_w = height * upscale, width * upscale
    mask_kernel = 3 if upscale == 3 else 1

    bld.conv("conv_in.0", 3, NF, h, w, 3)
    for i in range(N_HG):
        _hourglass(bld, f"HG_{i}", h, w, tail=i != N_HG - 1)
        if i not in TAP_BLOCKS:
            continue
        comp = COMPONENTS[TAP_BLOCKS.index(i)]
        if i == N_HG - 1:
            # out * 0.2 + conv_in(x): two eager kernels.
            bld.graph.add(elementwise("tap.scale", batch * NF * h * w, dtype), label="cdc")
            bld.add("tap.residual", NF, h, w)
        _head(bld, f"upsample_{comp}", upscale, h, w, 3)
        _head(bld, f"{comp}_map", upscale, h, w, mask_kernel)

    # Fusion at HR resolution: stack masks and SR images, softmax over the 3 components,
    # weighted sum over them, and the three 1-channel mean weight maps.
    hr_numel = batch * 3 * hr_h * hr_w  # one 3-channel HR image
    bld.copy("fusion.stack_masks", 3 * hr_numel)
    bld.graph.add(softmax("fusion.softmax", hr_numel, 3, dtype), label="cdc")
    bld.copy("fusion.stack_srs", 3 * hr_numel)
    bld.graph.add(elementwise("fusion.weight_mul", 3 * hr_numel, dtype, 1.0, 2, 1), label="cdc")
    bld.graph.add(
        elementwise("fusion.sum", 3 * hr_numel, dtype, 1.0, 1, 1 / 3, kind=OpKind.REDUCTION),
        label="cdc",
    )
    for comp in COMPONENTS:
        bld.graph.add(
            elementwise(
                f"fusion.mean_{comp}", hr_numel, dtype, 1.0, 1, 1 / 3, kind=OpKind.REDUCTION
            ),
            label="cdc",
        )
    return bld.graph
