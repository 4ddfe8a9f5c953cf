"""Invariants of NCCL's tuning model on the real multi-node profiles (hypothesis).

The synthetic topologies of test_network_properties.py do not carry a network plugin
latency or a restricted protocol set; these do (gcp-a3-mega: TCPXO, Simple only;
aws-p6-b200: EFA, 35 us; dgx-h100: InfiniBand, NVLS tree).
"""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st
from xpusim.hwprofiles import load_system
from xpusim.hwprofiles.spec import Link
from xpusim.sim.network import cost_collective

SYSTEMS = st.sampled_from([("gcp-a3-mega", 2), ("aws-p6-b200", 4), ("dgx-h100", 2)])
KINDS = st.sampled_from(["all-reduce", "all-gather", "reduce-scatter", "send-recv"])
SIZES = st.integers(min_value=10, max_value=34).map(lambda e: float(2**e))


def _system(spec: tuple[str, int]):
    name, nodes = spec
    return replace(load_system(name), nodes=nodes)


@settings(max_examples=40, deadline=None)
@given(SYSTEMS, KINDS, SIZES, st.floats(min_value=1.0, max_value=4.0), st.booleans())
def test_more_nic_bandwidth_or_less_latency_never_slows(spec, kind, size, factor, latency):
    system = _system(spec)
    group = range(system.num_devices)
    if latency:
        better = replace(system, nic=Link(system.nic.bandwidth, system.nic.latency / factor))
    else:
        better = replace(system, nic=Link(system.nic.bandwidth * factor, system.nic.latency))
    slow = cost_collective(system, kind, group, size).time_s
    fast = cost_collective(better, kind, group, size).time_s
    assert fast <= slow * (1 + 1e-9)


@settings(max_examples=40, deadline=None)
@given(SYSTEMS, KINDS, SIZES, st.floats(min_value=1.0, max_value=8.0))
def test_time_grows_with_bytes(spec, kind, size, factor):
    system = _system(spec)
    group = range(system.num_devices)
    small = cost_collective(system, kind, group, size).time_s
    big = cost_collective(system, kind, group, size * factor).time_s
    assert big >= small * (1 - 1e-9)
