"""The torch side of the calibration suites: seeded inputs, the kernels' runners (a
zero-argument callable that runs one case's work) and the MoE routing the measured layer
produces, which the simulator's MoE graph is priced with (``calibrate/suites.py`` pairs
each with its IR)."""

from __future__ import annotations

import functools
from collections.abc import Callable

from xpusim.sim.ir import RankGraph
from xpusim.sim.kernel_registry import describe_kernel

Shape = dict[str, float]



def torch_dtype(dtype: str):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]


def seeded_randn(*size: int, dtype: str, device: str):
    import torch

    if device != "cpu":
        # Drawn on the device (a GPU's 1 GiB tensors would take seconds on one CPU thread);
        # seeded, so every run times the same data.
        gen = torch.Generator(device=device).manual_seed(0)
        return torch.randn(*size, generator=gen, device=device).to(torch_dtype(dtype))
    gen = torch.Generator().manual_seed(0)  # same data every run: timings must not depend on it
    return torch.randn(*size, generator=gen).to(device=device, dtype=torch_dtype(dtype))


def inference_mode(fn: Callable[[], object]) -> Callable[[], object]:
    import torch

    def run() -> object:
        with torch.inference_mode():
            return fn()

    return run


def attention_runner(fast: bool):
    def build(s: Shape, dtype: str, device: str):
        from xpusim.kernels.attention import fast_attention, standard_attention

        b, h, n, d = int(s["batch"]), int(s["heads"]), int(s["seq"]), int(s["head_dim"])
        kvh = int(s.get("kv_heads", h))
        q = seeded_randn(b, h, n, d, dtype=dtype, device=device)
        k = seeded_randn(b, kvh, n, d, dtype=dtype, device=device)
        v = seeded_randn(b, kvh, n, d, dtype=dtype, device=device)
        causal = bool(s.get("causal", 0))
        if fast:
            block = int(s.get("block", 128))
            return inference_mode(lambda: fast_attention(q, k, v, causal=causal, outer_block=block))
        return inference_mode(lambda: standard_attention(q, k, v, causal=causal))

    return build


def moe_layer_and_input(s: Shape, dtype: str, device: str):
    import torch
    from xpusim.kernels.moe import MoELayer

    torch.manual_seed(0)  # same weights every run: the routing histogram is reproducible
    layer = (
        MoELayer(
            hidden=int(s["hidden"]),
            expert_ffn=int(s["expert_ffn"]),
            num_experts=int(s["experts"]),
            top_k=int(s["top_k"]),
            shared_experts=int(s.get("shared_experts", 0)),
        )
        .to(device=device, dtype=torch_dtype(dtype))
        .eval()
    )
    return layer, seeded_randn(int(s["tokens"]), int(s["hidden"]), dtype=dtype, device=device)


def moe_runner(s: Shape, dtype: str, device: str):
    layer, x = moe_layer_and_input(s, dtype, device)
    return inference_mode(lambda: layer(x))


@functools.lru_cache(maxsize=256)
def moe_routing_histogram(
    shape: tuple[tuple[str, float], ...], dtype: str, torch_device: str = "cpu"
) -> tuple[float, ...]:
    """Rows each expert receives when the suite's MoE layer routes the suite's input.

    The measured layer has random weights, so its routing is not uniform (some experts
    get 1.5x the mean); the graph the simulator prices uses this histogram
    (``describe_moe(tokens_per_expert=...)``), i.e. the routing the kernel really did.
    """
    from xpusim.calibrate.device import require_torch

    torch = require_torch(
        "pricing an MoE case whose routing is not recorded (a measurements CSV without "
        "a 'routing' column; re-measure with 'xpusim calibrate' to record it)"
    )
    layer, x = moe_layer_and_input(dict(shape), dtype, torch_device)
    with torch.inference_mode():
        _, stats = layer(x, return_stats=True)
    return tuple(float(v) for v in stats.kept_per_expert)


def moe_shape_with_routing(s: Shape, dtype: str) -> dict:
    """The suite's MoE shape plus its measured routing as the ``tokens_per_expert`` key:
    the exact shape ``xpusim predict kernel moe --shape ...`` takes for this case."""
    hist = moe_routing_histogram(tuple(sorted(s.items())), dtype)
    return {**s, "tokens_per_expert": tuple(int(v) for v in hist)}


def moe_ops(s: Shape, dtype: str) -> RankGraph:
    if "tokens_per_expert" in s:  # the routing recorded when the case was measured
        return describe_kernel("moe", s, dtype)
    return describe_kernel("moe", moe_shape_with_routing(s, dtype), dtype)


def cdc_runner(s: Shape, dtype: str, device: str):
    import torch
    from xpusim.kernels.cdc import CDC

    torch.manual_seed(0)
    net = CDC(upscale=int(s["upscale"])).to(device=device, dtype=torch_dtype(dtype)).eval()
    x = seeded_randn(int(s["batch"]), 3, int(s["height"]), int(s["width"]), dtype=dtype, device=device)
    return inference_mode(lambda: net(x))
