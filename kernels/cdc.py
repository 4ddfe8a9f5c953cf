"""CDC: Component Divide-and-Conquer super-resolution network (Wei et al., ECCV 2020).

A re-implementation of the released network ``HourGlassNetMultiScaleInt`` ("HGSR-MHR",
repository xiezw5/Component-Divide-and-Conquer-for-Real-World-Image-Super-Resolution,
``CDC/modules/HourGlassSR/model.py`` at 09e63af), written so that every module name and
every state-dict key equals the released checkpoints' (``HGSR-MHR_X4_SubRegion_GW_283.pth``
stores them under ``'state_dict'``):

* ``conv_in.0``: conv 3x3 3->64 with bias (a one-conv Sequential, as the repo's
  ``conv_block`` builds it);
* ``HG_0`` .. ``HG_5``: hourglass blocks at LR resolution (4 max-pools, so LR height
  and width must be multiples of 16). ``HG_0..HG_4`` end with two residual-inception
  blocks (``tail``); ``HG_5`` has none. Hourglass convs have no bias;
* after HG 1, 3 and 5 a component head pair: an SR head (``upsample_flat|edge|corner``)
  and a mask head (``flat_map|edge_map|corner_map``). Heads 1 and 3 see the
  hourglass's pre-tail output ``out_inter``; head 5 sees ``0.2 * out + conv_in(x)``;
* fusion: per RGB channel and pixel, a softmax over the three mask logits weights
  the three SR images.

Head layout (``make_upsample_block``): LR_conv 3x3 -> log2(s) x [nearest x2, conv 3x3,
LReLU] (x3: one [nearest x3, conv 3x3, LReLU]) -> HR_conv0 3x3 + LReLU -> HR_conv1 k x k
64->3, with k = 3 for SR heads and for x3 mask heads, 1 for x2/x4 mask heads (commit
64a2169). LeakyReLU slope 0.2 everywhere; no normalisation; input and output RGB in
[0, 1], not clamped.

Parameter counts this must reproduce (computed from the layer shapes, see
docs/kernels.md): 39,920,530 (x4), 39,698,962 (x2), 39,703,570 (x3).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from xpusim.sim.ir import RankGraph
from xpusim.sim.workloads.cdc import N_HG, describe_cdc

NF = 64  # feature channels of conv_in, the hourglass ends and the heads
LRELU_SLOPE = 0.2
SUPPORTED_UPSCALES = (2, 3, 4)
LR_MULTIPLE = 16  # four 2x2 max-pools in each hourglass

# Loss weights of the training config (CDC_train_test.py: inte_loss_weight = [1, 2, 5, 1]):
# flat, edge and corner intermediate L1 terms, then the fused output's GW term.
COMPONENT_LOSS_WEIGHTS = (1.0, 2.0, 5.0)
GW_LOSS_WEIGHT = 1.0
GW_FACTOR = 4.0  # (1 + 4 Dx)(1 + 4 Dy) in TorchTools/TorchNet/Losses.py GW_loss


def _lrelu() -> nn.LeakyReLU:
    return nn.LeakyReLU(LRELU_SLOPE, inplace=True)


def _conv(cin: int, cout: int, k: int, bias: bool) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=1, padding=(k - 1) // 2, bias=bias)


class ResidualBlock(nn.Module):
    """1x1 -> LReLU -> 3x3 -> LReLU -> 1x1, plus an identity (1x1 projection if cin != cout)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.res = nn.Sequential(
            _conv(cin, cout, 1, False),
            _lrelu(),
            _conv(cout, cout, 3, False),
            _lrelu(),
            _conv(cout, cout, 1, False),
        )
        # A missing attribute (not an nn.Identity) keeps the state dict free of extra keys.
        self.identity = _conv(cin, cout, 1, False) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.identity is None else self.identity(x)
        return skip + self.res(x)


class ResidualInceptionBlock(nn.Module):
    """Three branches (1x1 | 1x1-3x3 | 1x1-3x3-3x3), concatenated, 1x1 back to 64, plus x."""

    def __init__(self, ch: int = NF) -> None:
        super().__init__()
        self.res1 = nn.Sequential(_conv(ch, ch, 1, False), _lrelu())
        self.res2 = nn.Sequential(_conv(ch, ch, 1, False), _conv(ch, ch, 3, False), _lrelu())
        self.res3 = nn.Sequential(
            _conv(ch, ch, 1, False),
            _conv(ch, ch, 3, False),
            _lrelu(),
            _conv(ch, ch, 3, False),
            _lrelu(),
        )
        self.filter_concat = _conv(3 * ch, ch, 1, False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = torch.cat((self.res1(x), self.res2(x), self.res3(x)), dim=1)
        return x + self.filter_concat(branches)


class TopDownBlock(nn.Module):
    """Residual block, then 2x2 max-pool; returns (pooled, pre-pool skip)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.res_block = ResidualBlock(cin, cout)
        self.pool = nn.MaxPool2d(kernel_size=2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.res_block(x)
        return self.pool(x), x


class BottomUpBlock(nn.Module):
    """Nearest x2 upsampling, add the skip branch, residual block."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.res_block = ResidualBlock(cin, cout)
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.res_block(self.upsample(x) + skip)


class HourGlassBlock(nn.Module):
    """64 -> (128, 128, 256, 256) down, 2 mid blocks, back up to 64; skips at every scale."""

    def __init__(self, n_mid: int = 2, n_tail: int = 2) -> None:
        super().__init__()
        self.down1 = TopDownBlock(64, 128)
        self.down2 = TopDownBlock(128, 128)
        self.down3 = TopDownBlock(128, 256)
        self.down4 = TopDownBlock(256, 256)
        self.mid_res = nn.Sequential(*[ResidualBlock(256, 256) for _ in range(n_mid)])
        self.skip_conv0 = ResidualBlock(64, 64)
        self.skip_conv1 = ResidualBlock(128, 128)
        self.skip_conv2 = ResidualBlock(128, 128)
        self.skip_conv3 = ResidualBlock(256, 256)
        self.skip_conv4 = ResidualBlock(256, 256)
        self.up1 = BottomUpBlock(256, 256)
        self.up2 = BottomUpBlock(256, 128)
        self.up3 = BottomUpBlock(128, 128)
        self.up4 = BottomUpBlock(128, 64)
        self.tail = (
            nn.Sequential(*[ResidualInceptionBlock(NF) for _ in range(n_tail)]) if n_tail else None
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, r1 = self.down1(x)
        out, r2 = self.down2(out)
        out, r3 = self.down3(out)
        out, r4 = self.down4(out)
        out = self.mid_res(out)
        out = self.up1(out, self.skip_conv4(r4))
        out = self.up2(out, self.skip_conv3(r3))
        out = self.up3(out, self.skip_conv2(r2))
        out = self.up4(out, self.skip_conv1(r1))
        out_inter = self.skip_conv0(x) + out
        out = self.tail(out_inter) if self.tail is not None else out_inter
        return out, out_inter


def _conv_block(cin: int, cout: int, k: int, act: bool) -> nn.Sequential:
    """The repo's ``conv_block``: Sequential(conv[, LReLU]) with bias, so keys read ``.0.weight``."""
    layers: list[nn.Module] = [_conv(cin, cout, k, True)]
    if act:
        layers.append(_lrelu())
    return nn.Sequential(*layers)


def _upconv_block(factor: int) -> nn.Sequential:
    """The repo's ``upconv_blcok``: nearest upsample, conv 3x3 with bias, LReLU (keys ``.1.*``)."""
    return nn.Sequential(
        nn.Upsample(scale_factor=factor, mode="nearest"), _conv(NF, NF, 3, True), _lrelu()
    )


def make_upsample_block(upscale: int, out_kernel: int) -> nn.Sequential:
    """One component head: LR_conv, the upsampler stages, HR_conv0, HR_conv1 (64 -> 3)."""
    stages = (
        [_upconv_block(3)]
        if upscale == 3
        else [_upconv_block(2) for _ in range(int(math.log2(upscale)))]
    )
    return nn.Sequential(
        _conv_block(NF, NF, 3, act=False),
        *stages,
        _conv_block(NF, NF, 3, act=True),
        _conv_block(NF, 3, out_kernel, act=False),
    )


class CDC(nn.Module):
    """``HourGlassNetMultiScaleInt`` with the released defaults (6 hourglasses, nf 64).

    ``forward(lr)`` returns ``([SR_flat, SR_edge, SR_corner, SR], [w_flat, w_edge, w_corner])``
    like the original: the three intermediate SR images, the fused SR image, and the
    fusion weights averaged over RGB (1-channel maps). ``upsample(lr)`` returns SR only.
    """

    def __init__(self, upscale: int = 4, n_hg: int = 6, n_mid: int = 2, n_tail: int = 2) -> None:
        super().__init__()
        if upscale not in SUPPORTED_UPSCALES:
            raise ValueError(f"CDC upscale must be one of {SUPPORTED_UPSCALES}, got {upscale}")
        if n_hg < 3:
            raise ValueError(
                f"CDC needs at least 3 hourglass blocks (one per component), got {n_hg}"
            )
        self.upscale = upscale
        self.n_hg = n_hg
        # The hourglasses whose features feed the flat, edge and corner heads.
        self.tap_blocks = (1, n_hg // 2, n_hg - 1)
        mask_kernel = 3 if upscale == 3 else 1
        self.conv_in = _conv_block(3, NF, 3, act=False)
        # Registration order follows the original __init__ so parameters() order matches.
        self.flat_map = make_upsample_block(upscale, mask_kernel)
        self.edge_map = make_upsample_block(upscale, mask_kernel)
        self.corner_map = make_upsample_block(upscale, mask_kernel)
        self.upsample_flat = make_upsample_block(upscale, 3)
        self.upsample_edge = make_upsample_block(upscale, 3)
        self.upsample_corner = make_upsample_block(upscale, 3)
        for i in range(n_hg):
            tail = n_tail if i != n_hg - 1 else 0
            setattr(self, f"HG_{i}", HourGlassBlock(n_mid=n_mid, n_tail=tail))

    def _heads(self, index: int) -> tuple[nn.Module, nn.Module]:
        names = (
            ("upsample_flat", "flat_map"),
            ("upsample_edge", "edge_map"),
            ("upsample_corner", "corner_map"),
        )[index]
        return getattr(self, names[0]), getattr(self, names[1])

    def forward(self, lr: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        if lr.dim() != 4 or lr.shape[1] != 3:
            raise ValueError(f"CDC expects an N x 3 x H x W tensor, got shape {tuple(lr.shape)}")
        h, w = lr.shape[-2:]
        if h % LR_MULTIPLE or w % LR_MULTIPLE:
            raise ValueError(
                f"CDC needs LR height and width divisible by {LR_MULTIPLE} (4 max-pools), got {h}x{w}"
            )
        x0 = self.conv_in(lr)
        out = x0
        srs: list[torch.Tensor] = []
        masks: list[torch.Tensor] = []
        for i in range(self.n_hg):
            out, out_inter = getattr(self, f"HG_{i}")(out)
            if i not in self.tap_blocks:
                continue
            # Only the last tap gets the global residual from conv_in.
            feature = out * 0.2 + x0 if i == self.n_hg - 1 else out_inter
            sr_head, mask_head = self._heads(self.tap_blocks.index(i))
            srs.append(sr_head(feature))
            masks.append(mask_head(feature))
        # Softmax over the 3 components, separately for each RGB channel and pixel
        # (the original splits/concats per channel; stacking on a new dim is the same math).
        weights = F.softmax(torch.stack(masks, dim=1), dim=1)  # N x 3comp x 3rgb x H x W
        fused = (weights * torch.stack(srs, dim=1)).sum(dim=1)
        weight_maps = [weights[:, c].mean(dim=1, keepdim=True) for c in range(3)]
        return [*srs, fused], weight_maps

    def describe(self, batch: int, height: int, width: int, dtype: str = "fp32") -> RankGraph:
        """This network's forward as IR (``xpusim.sim.workloads.cdc.describe_cdc``) for an LR input."""
        if self.n_hg != N_HG:
            raise ValueError(f"describe_cdc models the released {N_HG}-hourglass net only")
        return describe_cdc(self.upscale, batch, height, width, dtype)

    def upsample(self, lr: torch.Tensor) -> torch.Tensor:
        """The fused SR image only (what the test protocol keeps)."""
        return self.forward(lr)[0][-1]


def init_weights(model: nn.Module, scale: float = 0.1) -> None:
    """The training script's init: Kaiming-normal (fan_in, a=0) conv weights x ``scale``, zero bias."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, a=0, mode="fan_in")
            module.weight.data.mul_(scale)
            if module.bias is not None:
                module.bias.data.zero_()


def _sobel_kernels(channels: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    sx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    sy = sx.t().contiguous()  # [[-1,-2,-1],[0,0,0],[1,2,1]]
    k = torch.stack([sx, sy]).unsqueeze(1)  # 2 x 1 x 3 x 3
    return k.repeat(channels, 1, 1, 1).to(dtype=dtype, device=device)  # (2C) x 1 x 3 x 3


def gradient_weighted_loss(
    sr: torch.Tensor, hr: torch.Tensor, factor: float = GW_FACTOR
) -> torch.Tensor:
    """GW loss: mean((1 + f*Dx) * (1 + f*Dy) * |SR - HR|), Dx/Dy = |Sobel(SR) - Sobel(HR)|.

    Sobel filters are applied depth-wise per RGB channel with zero padding 1, as in
    ``GW_loss`` of TorchTools/TorchNet/Losses.py (f = 4 there).
    """
    channels = sr.shape[1]
    kernels = _sobel_kernels(channels, sr.dtype, sr.device)
    # Depth-wise: output channel 2c is Sx on input channel c, 2c+1 is Sy on c.
    diff = F.conv2d(sr, kernels, padding=1, groups=channels) - F.conv2d(
        hr, kernels, padding=1, groups=channels
    )
    dx = diff[:, 0::2].abs()
    dy = diff[:, 1::2].abs()
    return ((1 + factor * dx) * (1 + factor * dy) * (sr - hr).abs()).mean()


def cdc_loss(
    outputs: list[torch.Tensor],
    hr: torch.Tensor,
    component_masks: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    """Training loss: 1/2/5 x masked L1 of the flat/edge/corner outputs + 1 x GW of the fused one.

    ``component_masks`` are the binary flat/edge/corner maps (N x 1 x H x W, from a
    Harris response on HR in the original); the masked L1 averages over all elements,
    masked-out zeros included, as the original does.
    """
    sr_flat, sr_edge, sr_corner, sr = outputs
    loss = GW_LOSS_WEIGHT * gradient_weighted_loss(sr, hr)
    for weight, out, mask in zip(
        COMPONENT_LOSS_WEIGHTS, (sr_flat, sr_edge, sr_corner), component_masks, strict=True
    ):
        loss = loss + weight * F.l1_loss(out * mask, hr * mask)
    return loss
