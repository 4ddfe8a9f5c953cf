"""The CDC super-resolution network (kernels/cdc.py) and its IR description (describe_cdc)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch.utils.flop_counter import FlopCounterMode  # noqa: E402
from xpusim.kernels.cdc import CDC, cdc_loss, gradient_weighted_loss, init_weights  # noqa: E402
from xpusim.sim.errors import InputError  # noqa: E402
from xpusim.sim.ir import OpKind  # noqa: E402
from xpusim.sim.workloads.cdc import describe_cdc  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """One intra-op thread: on a shared 2-core box, OpenMP spin-waiting under contention
    slows small convolutions by 10x or more; results do not depend on the thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# Parameter counts computed from the released code's layer shapes (research notes on
# CDC, ECCV 2020, section 3): a re-implementation with the same layers must hit them.
PARAMS = {2: 39_698_962, 3: 39_703_570, 4: 39_920_530}


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {s: CDC(upscale=s).eval() for s in (2, 3, 4)}


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_parameter_count(models, scale):
    assert sum(p.numel() for p in models[scale].parameters()) == PARAMS[scale]


def test_state_dict_keys_follow_the_released_checkpoint(models):
    x4 = models[4].state_dict()
    x2 = models[2].state_dict()
    for key in (
        "conv_in.0.weight",
        "conv_in.0.bias",
        "HG_0.down1.res_block.res.2.weight",
        "HG_0.down1.res_block.identity.weight",
        "HG_3.mid_res.1.res.4.weight",
        "HG_5.skip_conv0.res.0.weight",
        "HG_2.up4.res_block.identity.weight",
        "HG_4.tail.1.res3.3.weight",
        "HG_0.tail.0.filter_concat.weight",
        "upsample_flat.0.0.weight",
        "upsample_flat.1.1.bias",
        "upsample_flat.2.1.weight",
        "upsample_flat.3.0.weight",
        "corner_map.4.0.bias",
    ):
        assert key in x4, key
    assert not any(k.startswith("HG_5.tail") for k in x4)  # the last hourglass has no tail
    assert "HG_0.down2.res_block.identity.weight" not in x4  # 128 -> 128: no projection
    assert "edge_map.3.0.weight" in x2 and "edge_map.4.0.weight" not in x2
    assert sum(k.endswith("weight") for k in x4) == 395  # conv layers at x4
    # Mask heads end in 1x1 at x2/x4, 3x3 at x3; SR heads always 3x3.
    assert x4["flat_map.4.0.weight"].shape == (3, 64, 1, 1)
    assert x4["upsample_edge.4.0.weight"].shape == (3, 64, 3, 3)
    assert models[3].state_dict()["edge_map.3.0.weight"].shape == (3, 64, 3, 3)


@pytest.mark.slow
def test_x4_training_patch_shapes_and_flops(models):
    """One 40M-parameter forward at 1x3x48x48: output shapes, fusion weights, FLOPs."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        outputs, maps = models[4](torch.rand(1, 3, 48, 48))
    assert [tuple(o.shape) for o in outputs] == [(1, 3, 192, 192)] * 4
    assert [tuple(m.shape) for m in maps] == [(1, 1, 192, 192)] * 3
    # The fusion weights are a softmax over the 3 components: they sum to one.
    torch.testing.assert_close(sum(maps), torch.ones(1, 1, 192, 192))
    graph = describe_cdc(4, 1, 48, 48)
    counted = counter.get_total_flops()
    assert sum(op.flops for op in graph.ops() if op.kind == OpKind.CONV2D) == counted
    assert graph.total_flops() == pytest.approx(counted, rel=0.01)


@pytest.mark.parametrize("scale", [2, 3])
def test_x2_x3_forward_shapes(models, scale):
    with torch.no_grad():
        sr = models[scale].upsample(torch.rand(2, 3, 16, 32))
    assert tuple(sr.shape) == (2, 3, 16 * scale, 32 * scale)


def test_fused_output_is_the_mask_weighted_sum(models):
    model = models[2]
    captured = {}

    def keep(name):
        def hook(_module, _inputs, output):
            captured[name] = output

        return hook

    names = (
        "upsample_flat",
        "upsample_edge",
        "upsample_corner",
        "flat_map",
        "edge_map",
        "corner_map",
    )
    handles = [getattr(model, n).register_forward_hook(keep(n)) for n in names]
    try:
        with torch.no_grad():
            outputs, _ = model(torch.rand(1, 3, 16, 16))
    finally:
        for h in handles:
            h.remove()
    logits = torch.stack([captured[n] for n in names[3:]])
    weights = logits.exp() / logits.exp().sum(0)
    fused = sum(w * captured[n] for w, n in zip(weights, names[:3], strict=True))
    torch.testing.assert_close(outputs[-1], fused)
    torch.testing.assert_close(outputs[0], captured["upsample_flat"])


def test_bad_input_size_is_rejected(models):
    with pytest.raises(ValueError, match="divisible by 16"):
        models[2](torch.rand(1, 3, 20, 16))
    with pytest.raises(ValueError, match="upscale"):
        CDC(upscale=8)


def test_init_weights_scales_kaiming_and_zeroes_bias():
    model = CDC(upscale=2)
    torch.manual_seed(0)
    init_weights(model, scale=0.1)
    conv = model.HG_0.down1.res_block.res[2]  # 3x3 128 -> 128, fan_in 1152
    expected_std = 0.1 * (2.0 / (128 * 9)) ** 0.5
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.02)
    assert torch.all(model.upsample_flat[0][0].bias == 0)


# --- losses -----------------------------------------------------------------------------


def _gw_numpy(sr: np.ndarray, hr: np.ndarray, factor: float) -> float:
    """Independent GW loss: Sobel by explicit shifts of a zero-padded image."""
    sx = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=float)
    sy = sx.T

    def filt(img, k):
        p = np.pad(img, ((0, 0), (0, 0), (1, 1), (1, 1)))
        h, w = img.shape[-2:]
        return sum(k[u, v] * p[:, :, u : u + h, v : v + w] for u in range(3) for v in range(3))

    dx = np.abs(filt(sr, sx) - filt(hr, sx))
    dy = np.abs(filt(sr, sy) - filt(hr, sy))
    return float(np.mean((1 + factor * dx) * (1 + factor * dy) * np.abs(sr - hr)))


def test_gradient_weighted_loss_matches_an_independent_implementation():
    gen = torch.Generator().manual_seed(0)
    sr = torch.rand(2, 3, 5, 6, generator=gen, dtype=torch.float64)
    hr = torch.rand(2, 3, 5, 6, generator=gen, dtype=torch.float64)
    got = gradient_weighted_loss(sr, hr).item()
    assert got == pytest.approx(_gw_numpy(sr.numpy(), hr.numpy(), 4.0), rel=1e-12)
    # Weights are >= 1, so GW >= L1; with factor 0 it is L1.
    l1 = (sr - hr).abs().mean().item()
    assert got > l1
    assert gradient_weighted_loss(sr, hr, factor=0.0).item() == pytest.approx(l1, rel=1e-12)


def test_cdc_loss_weights_components_1_2_5():
    hr = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    ones = torch.ones(1, 1, 8, 8, dtype=torch.float64)
    masks = (ones, ones, ones)
    assert cdc_loss([hr, hr, hr, hr], hr, masks).item() == 0.0
    d = 0.25
    for index, weight in enumerate((1.0, 2.0, 5.0)):
        outs = [hr.clone() for _ in range(4)]
        outs[index] = hr + d
        assert cdc_loss(outs, hr, masks).item() == pytest.approx(weight * d)
    # A zero mask hides its component entirely.
    outs = [hr + d, hr, hr, hr]
    assert cdc_loss(outs, hr, (torch.zeros_like(ones), ones, ones)).item() == 0.0


# --- describe_cdc ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "scale,batch,height,width", [(4, 2, 16, 32), (2, 2, 32, 16), (3, 1, 16, 32)]
)
def test_describe_matches_flop_counter(models, scale, batch, height, width):
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        models[scale](torch.rand(batch, 3, height, width))
    counted = counter.get_total_flops()
    graph = describe_cdc(scale, batch, height, width)
    convs = sum(op.flops for op in graph.ops() if op.kind == OpKind.CONV2D)
    assert convs == counted  # every conv the module runs, nothing else counted by torch
    assert graph.total_flops() == pytest.approx(counted, rel=0.01)


@pytest.mark.parametrize("scale", [3, 4])
def test_describe_conv_names_are_the_module_paths(models, scale):
    graph = describe_cdc(scale, 1, 16, 16)
    described = [op.name for op in graph.ops() if op.kind == OpKind.CONV2D]
    convs = [n for n, m in models[scale].named_modules() if isinstance(m, torch.nn.Conv2d)]
    assert sorted(described) == sorted(convs)


def test_describe_layer_census():
    graph = describe_cdc(4, 1, 48, 48)
    ops = graph.ops()
    assert sum(op.kind == OpKind.CONV2D for op in ops) == 395
    assert sum(op.kind == OpKind.POOL for op in ops) == 6 * 4
    # 6 hourglasses x 4 + 6 heads x 2 nearest upsamplings at x4.
    assert sum(op.kind == OpKind.UPSAMPLE for op in ops) == 6 * 4 + 6 * 2
    assert sum(op.kind == OpKind.SOFTMAX for op in ops) == 1


@pytest.mark.parametrize(
    "scale,size,macs",
    [
        (4, 48, 32_441_942_016),  # x4 training patch
        (4, 384, 2_076_284_289_024),  # x4 test tile (256 + 2 x 64 overlap)
        (2, 96, 72_054_669_312),
        (3, 64, 41_371_828_224),
    ],
)
def test_describe_conv_macs_match_the_reference_counts(scale, size, macs):
    graph = describe_cdc(scale, 1, size, size)
    assert sum(op.flops for op in graph.ops() if op.kind == OpKind.CONV2D) == 2 * macs


def test_describe_bytes_scale_with_dtype():
    fp32 = describe_cdc(2, 1, 32, 32, "fp32")
    fp16 = describe_cdc(2, 1, 32, 32, "fp16")
    assert sum(o.main_bytes for o in fp16.ops()) == pytest.approx(
        sum(o.main_bytes for o in fp32.ops()) / 2
    )


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(upscale=5, batch=1, height=16, width=16), "upscale"),
        (dict(upscale=4, batch=1, height=40, width=16), "multiples of 16"),
        (dict(upscale=4, batch=0, height=16, width=16), "batch"),
        (dict(upscale=4, batch=1, height=16, width=16, dtype="fp12"), "dtype"),
    ],
)
def test_describe_bad_input(kwargs, match):
    with pytest.raises(InputError, match=match):
        describe_cdc(**kwargs)


@pytest.mark.parametrize(("height", "width"), [(16, 16), (16, 32)])
def test_describe_lists_every_executed_op(models, height, width):
    """One graph op per executed (non-view) torch op of the x4 forward."""
    from xpusim.calibrate.opcount import count_ops

    net = models[4]
    x = torch.randn(1, 3, height, width)
    executed = count_ops(lambda: net(x))
    assert len(net.describe(1, height, width).ops()) == sum(executed.values())
