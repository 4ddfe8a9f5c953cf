"""Property tests: monotone in bandwidth and bytes, deterministic (hypothesis)."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st
from test_network_fixtures import mesh, switch
from xpusim.hwprofiles.spec import Link
from xpusim.sim.network import cost_collective

KINDS = st.sampled_from(
    ["all-reduce", "all-gather", "reduce-scatter", "all-to-all", "broadcast", "send-recv"]
)
SYSTEMS = st.sampled_from([("mesh", 1), ("mesh", 2), ("switch", 1), ("switch", 4)])
SIZES = st.floats(min_value=1.0, max_value=2.0**33, allow_nan=False)


def _system(spec):
    kind, nodes = spec
    return mesh(nodes) if kind == "mesh" else switch(nodes)


def _group(system):
    return tuple(range(system.num_devices))


@settings(max_examples=60, deadline=None)
@given(
    KINDS,
    SYSTEMS,
    SIZES,
    st.floats(min_value=1.0, max_value=8.0),
    st.sampled_from(["intra", "nic"]),
)
def test_more_bandwidth_never_slows(kind, spec, size, factor, which):
    system = _system(spec)
    if which == "intra":
        faster = replace(
            system, intra_link=Link(system.intra_link.bandwidth * factor, system.intra_link.latency)
        )
    else:
        faster = replace(system, nic=Link(system.nic.bandwidth * factor, system.nic.latency))
    g = _group(system)
    slow = cost_collective(system, kind, g, size).time_s
    fast = cost_collective(faster, kind, g, size).time_s
    assert fast <= slow * (1 + 1e-12)


@settings(max_examples=60, deadline=None)
@given(
    KINDS,
    SYSTEMS,
    SIZES,
    st.floats(min_value=1.0, max_value=16.0),
    st.sampled_from(["auto", "ring", "pairwise"]),
)
def test_more_bytes_never_faster(kind, spec, size, factor, algorithm):
    system = _system(spec)
    g = _group(system)
    if algorithm == "ring" and kind in ("all-to-all", "send-recv"):
        algorithm = "auto"
    if algorithm == "pairwise" and kind != "all-to-all":
        algorithm = "auto"
    small = cost_collective(system, kind, g, size, algorithm).time_s
    big = cost_collective(system, kind, g, size * factor, algorithm).time_s
    assert big >= small * (1 - 1e-12)


@settings(max_examples=20, deadline=None)
@given(
    KINDS,
    st.sampled_from([("mesh", 1), ("switch", 2)]),
    SIZES,
    st.sampled_from(["analytical", "flow"]),
)
def test_deterministic(kind, spec, size, backend):
    system = _system(spec)
    g = _group(system)
    a = cost_collective(system, kind, g, size, backend=backend)
    b = cost_collective(system, kind, g, size, backend=backend)
    assert a == b
