"""The dependent-chain latency of fused attention blocks (sim/cost/attention_latency.py)."""

from dataclasses import replace

import pytest
from xpusim.hwprofiles.loader import load_device
from xpusim.hwprofiles.spec import Latency
from xpusim.sim.cost.attention_impl import AttnShape, attention_cost, block_terms, tiles
from xpusim.sim.cost.attention_latency import (
    CHAINS,
    chain_of,
    chain_s,
    exposed_latency_s,
)

A100 = load_device("a100-sxm4-80gb")
H100 = load_device("h100-sxm5-80gb")
CAUSAL_D64 = AttnShape(4, 32, 4096, 4096, 64, causal=True, dtype="fp16")


def test_profiles_carry_the_sourced_latencies() -> None:
    # hwprofiles/devices/*.toml [latency]: 20 / 200 / 400 cycles (the cited table)
    for dev in (A100, H100, load_device("h800-sxm5-80gb"), load_device("a800-sxm4-80gb")):
        assert dev.latency == Latency(smem_cycles=20, l2_hit_cycles=200, hbm_cycles=400)
    assert load_device("mi300x").latency == Latency()  # no source: nothing filled


def test_exposure_hand_computed() -> None:
    # one CTA per SM: the whole chain shows; two: only what exceeds the other CTA's block
    assert exposed_latency_s(1000.0, 500.0, 1) == pytest.approx(500.0)
    assert exposed_latency_s(1000.0, 500.0, 2) == 0.0  # (1000 + 500) / 2 < 1000
    assert exposed_latency_s(1000.0, 3000.0, 2) == pytest.approx(1000.0)  # (1000 + 3000) / 2
    assert exposed_latency_s(900.0, 3000.0, 3) == pytest.approx(400.0)  # 3900 / 3 - 900


def test_triton2_backward_block_on_a100() -> None:
    # Triton 2.0 _bwd_kernel: 2 L2 trips (q, m) + 5 shared trips, one CTA per SM:
    # (2 x 200 + 5 x 20) cycles at 1.41 GHz, all exposed.
    br, bc = tiles("triton2", A100, 64, "bwd", "fp16", True)
    terms = block_terms(A100, "triton2", CAUSAL_D64, "bwd", br, bc)
    assert terms.latency_s == pytest.approx(500 / 1.41e9)
    without = block_terms(replace(A100, latency=Latency()), "triton2", CAUSAL_D64, "bwd", br, bc)
    assert terms.block_s - without.block_s == pytest.approx(500 / 1.41e9)


def test_xformers_chain_is_hidden_by_its_four_ctas() -> None:
    # kernel_forward.h: 1 L2 + 7 shared trips = 340 cycles per 64 x 64 block, less than the
    # three other resident CTAs' work (3 x ~950 cycles): nothing exposed.
    chain = CHAINS[("xformers", "fwd")]
    assert chain_s(A100, chain) == pytest.approx(340 / 1.41e9)
    br, bc = tiles("xformers", A100, 64, "fwd", "fp16", True)
    terms = block_terms(A100, "xformers", CAUSAL_D64, "fwd", br, bc)
    assert 3 * (terms.block_s - terms.latency_s) > chain_s(A100, chain)
    assert terms.latency_s == 0.0


def test_chains_only_where_read_from_source() -> None:
    assert chain_of("triton", "fwd", async_mma=True) is not None  # Hopper: pipelined, zero
    assert chain_of("triton", "fwd", async_mma=False) is None  # not read on Ampere
    assert chain_of("cudnn", "fwd", async_mma=True) is None
    assert chain_s(replace(A100, latency=Latency()), CHAINS[("triton2", "bwd")]) is None


@pytest.mark.parametrize(("impl", "pass_"), [("triton2", "fwd_bwd"), ("xformers", "fwd_bwd"),
                                             ("flash2", "bwd"), ("flash2", "fwd")])
def test_more_latency_never_makes_a_kernel_faster(impl: str, pass_: str) -> None:
    times = []
    for scale in (0.0, 0.5, 1.0, 2.0, 5.0, 20.0, 100.0):
        lat = Latency(smem_cycles=1 + 20 * scale, l2_hit_cycles=1 + 200 * scale)
        dev = replace(A100, latency=lat)
        times.append(attention_cost(dev, CAUSAL_D64, impl, pass_).time_s)
    assert all(b >= a for a, b in zip(times, times[1:], strict=False))
    assert times[-1] > times[0]  # at 100x every chain exceeds its overlap
