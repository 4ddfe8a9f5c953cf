"""Chrome trace export and the PNG timeline of a SimResult."""

from __future__ import annotations

import json

from xpusim.sim.engine import Engine
from xpusim.sim.ir import Delay, RankGraph, Stream
from xpusim.sim.trace import chrome_trace, render_timeline, write_chrome_trace


def _result():
    graphs = []
    for rank in (0, 1):
        g = RankGraph(rank)
        a = g.add(Delay("fwd.L0", 1e-3, "fwd"), Stream.COMPUTE, label="fwd")
        g.add(Delay("tp.ag", 0.5e-3, "all-gather"), Stream.COMM, [a], label="tp")
        graphs.append(g)
    return Engine(graphs, lambda op: 0.0, lambda c: 0.0).run()


def test_chrome_trace_events_in_microseconds():
    trace = chrome_trace(_result(), ranks=[1], names={1: "stage 1"})
    xs = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert {e["pid"] for e in xs} == {1}
    fwd = next(e for e in xs if e["name"] == "fwd.L0")
    ag = next(e for e in xs if e["name"] == "tp.ag")
    assert fwd["ts"] == 0.0 and fwd["dur"] == 1000.0
    assert ag["ts"] == 1000.0 and ag["tid"] == 1 and ag["cat"] == "tp"
    meta = [e for e in trace["traceEvents"] if e["ph"] == "M" and e["name"] == "process_name"]
    assert meta[0]["args"]["name"] == "stage 1"


def test_write_and_render(tmp_path):
    result = _result()
    path = write_chrome_trace(result, tmp_path / "t" / "trace.json")
    assert json.loads(path.read_text())["displayTimeUnit"] == "ms"
    png = render_timeline(result, tmp_path / "timeline.png", [0, 1])
    assert png.stat().st_size > 1000
