"""Memoised pricing helpers give the same values as computing afresh (bit for bit):
``roofline._cheapest_block`` (the cached GEMM tile choice) against the reference
``block_work`` minimum, and ``spec.layer_runs`` against ``ModelSpec.layer_kind`` layer by
layer. ``xpusim validate --published`` must predict the same strings after a speed change."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from xpusim.hwprofiles import load_device
from xpusim.sim.cost.roofline import _cheapest_block, block_work, gemm_tile_cost
from xpusim.sim.models.hf_config import load_model
from xpusim.sim.models.spec import layer_runs


def _reference(m, n, k, batch, device, fpe, multicast):
    """The pre-memo ``gemm_tile_cost``: two ``block_work`` calls per block shape."""
    tm, tn, tk = device.matrix_tile
    pad = [(x + t - 1) // t * t for x, t in ((m, tm), (n, tn), (k, tk))]
    cores = device.matrix_cores
    return min((block_work(*pad, batch, bm, bn, cores, fpe, multicast),
                block_work(*pad, batch, bm, bn, cores))
               for bm, bn in device.efficiency.block_shapes)


@pytest.mark.parametrize("name", ["h100-sxm5-80gb", "a100-sxm4-80gb", "b200"])
@settings(max_examples=60, deadline=None)
@given(m=st.integers(1, 5000), n=st.integers(1, 30000), k=st.integers(1, 20000),
       batch=st.integers(1, 8), fpe=st.sampled_from([0.0, 41.2, 131.9]),
       multicast=st.booleans())
def test_cached_tile_cost_equals_reference(name, m, n, k, batch, fpe, multicast):
    device = load_device(name)
    first = gemm_tile_cost(m, n, k, batch, device, fpe, multicast)
    again = gemm_tile_cost(m, n, k, batch, device, fpe, multicast)  # a cache hit
    assert first == again == _reference(m, n, k, batch, device, fpe, multicast)


def test_tile_cost_hand_computed_and_cached_once():
    """64 x 64 x 1024 on 132 cores, one 64x64 block per shape that fits: one wave of
    132 blocks of 2 x 64 x 64 x 1024 MMA FLOPs; the second call hits the cache."""
    device = load_device("h100-sxm5-80gb")
    _cheapest_block.cache_clear()
    cost, executed = gemm_tile_cost(64, 64, 1024, 1, device)
    assert cost == executed == 132 * 2.0 * 64 * 64 * 1024
    gemm_tile_cost(64, 64, 1024, 1, device)
    assert _cheapest_block.cache_info().hits == 1


@pytest.mark.parametrize("model", ["gpt-oss-20b", "deepseek-v3", "mixtral-8x7b", "qwen2-0.5b"])
@pytest.mark.parametrize("start_end", [None, (0, 5), (3, 17)])
def test_layer_runs_follow_layer_kind(model, start_end):
    spec = load_model(model)
    start, end = start_end or (0, spec.layers)
    runs = layer_runs(spec, start, end)
    flat = [(kind, first + i) for kind, first, count in runs for i in range(count)]
    assert flat == [(spec.layer_kind(i), i) for i in range(start, end)]
    assert all(a[0] != b[0] for a, b in zip(runs, runs[1:], strict=False))  # maximal runs


def test_layer_runs_hand_computed():
    """DeepSeek-V3: 3 dense layers then 58 MoE layers, no sliding windows."""
    spec = load_model("deepseek-v3")
    assert layer_runs(spec, 0, spec.layers) == (((False, 0, 0), 0, 3), ((True, 0, 0), 3, 58))
