"""--timing host: a benchmark that times one torch.distributed call on an idle device
adds PyTorch's per-call host overhead (sim/data/call_timing.toml) to the device time."""

from __future__ import annotations

import json
import shlex

import pytest
from xpusim.sim.cli.main import main
from xpusim.sim.errors import InputError
from xpusim.sim.network.call_timing import timing_overhead_s

import xpusim

HOST_S = 21.3e-6  # the data file's figure, written out by hand


def test_overhead_per_timing():
    assert timing_overhead_s("device") == 0.0
    assert timing_overhead_s("host") == pytest.approx(HOST_S, rel=1e-12)
    with pytest.raises(InputError, match="--timing"):
        timing_overhead_s("wall")


def test_host_timing_adds_the_call_and_rescales_bandwidth():
    args = dict(kind="all-reduce", system="aws-p6-b200", ranks=8, bytes="64MiB")
    device = xpusim.collective(**args)
    host = xpusim.collective(**args, timing="host")
    assert host.time_s == pytest.approx(device.time_s + HOST_S, rel=1e-12)
    nbytes = 64 * 2**20
    assert host.algbw_bytes_per_s == pytest.approx(nbytes / host.time_s, rel=1e-12)
    # all-reduce bus factor 2(n-1)/n over 8 ranks
    assert host.busbw_bytes_per_s == pytest.approx(host.algbw_bytes_per_s * 14 / 8, rel=1e-12)
    assert host.algorithm == device.algorithm and host.protocol == device.protocol
    assert host.host_call_s == pytest.approx(HOST_S) and device.host_call_s == 0.0


def test_sweep_and_cli_carry_the_timing(capsys):
    sweep = xpusim.collective_sweep(kind="all-reduce", system="dgx-h100", ranks=8,
                                    sweep="1MiB:4MiB", timing="host")
    plain = xpusim.collective_sweep(kind="all-reduce", system="dgx-h100", ranks=8,
                                    sweep="1MiB:4MiB")
    for a, b in zip(sweep.points, plain.points, strict=True):
        assert a.time_s == pytest.approx(b.time_s + HOST_S, rel=1e-12)
    rc = main(shlex.split("collective all-reduce --system dgx-h100 --bytes 1MiB "
                          "--timing host --json"))
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["timing"] == "host" and out["host_call_s"] == pytest.approx(HOST_S)


def test_bad_timing_is_an_input_error():
    with pytest.raises(InputError, match="--timing 'wall'"):
        xpusim.collective(kind="all-reduce", timing="wall")
