"""``xpusim infer --serve --prefill-system A --decode-system B``: disaggregated serving
(sim/inference/disagg.py) beside the colocated deployment of ``--system``.

Not a command of its own: ``infer --serve`` with a pool flag is a disaggregated run of
``xpusim.serve`` (sim/api/serve.py). Each pool is one instance of ``--prefill-devices`` /
``--decode-devices`` devices (TP = devices / EP, with ``--ep`` shared by both pools);
the colocated baseline is the usual ``--system`` / ``--devices`` / ``--tp`` / ``--ep``
deployment, by default with as many devices as the two pools together. This module
holds the flags and prints the comparison.
"""

from __future__ import annotations

import argparse

from xpusim.sim.api.serve import DisaggServeResult
from xpusim.sim.report import fmt_bytes, fmt_si, table


def add_args(s: argparse._ArgumentGroup) -> None:
    """The disaggregation flags (in infer's serving group)."""
    s.add_argument("--prefill-system", help="disaggregated serving: system of the prefill pool")
    s.add_argument("--decode-system", help="disaggregated serving: system of the decode pool")
    s.add_argument("--prefill-devices", type=int, help="devices of the prefill instance")
    s.add_argument("--decode-devices", type=int, help="devices of the decode instance")
    s.add_argument("--slo-ttft", type=float, help="goodput SLO on time to first token, s")
    s.add_argument("--slo-tpot", type=float, help="goodput SLO on time per output token, s")


def print_disaggregated(r: DisaggServeResult) -> None:
    pre, dec, co = r.prefill, r.decode, r.colocated
    kv = r.metrics["kv_transfer"]
    print(
        f"disaggregated serving of {r.model} ({r.engine}, {r.dtype}): prefill on "
        f"{pre.plan.devices} x {pre.device} ({pre.system}, tp={pre.plan.tp} "
        f"ep={pre.plan.ep}), decode on {dec.plan.devices} x {dec.device} "
        f"({dec.system}, tp={dec.plan.tp} ep={dec.plan.ep})"
    )
    print(
        f"  KV transfer over {kv['via']}: {fmt_si(kv['bandwidth_bytes_per_s'], 'B/s')} "
        f"+ {fmt_si(kv['latency_s'], 's')}, {fmt_bytes(r.kv_bytes_per_token)} per prompt "
        f"token, {fmt_bytes(kv['bytes_total'])} in all, mean {fmt_si(kv['time_mean_s'], 's')} "
        "per request (queue included)"
    )
    rows = []
    for name, m, dev in (
        ("disaggregated", r.metrics, pre.plan.devices + dec.plan.devices),
        (f"colocated ({co.system})", r.colocated_metrics, co.plan.devices),
    ):
        rows.append([
            name, dev, f"{m['throughput_tokens_per_s']:.1f}",
            f"{m['throughput_tokens_per_s'] / dev:.1f}",
            fmt_si(m["ttft_s"]["mean"], "s"), fmt_si(m["ttft_s"]["p90"], "s"),
            fmt_si(m["tpot_s"]["mean"], "s"), fmt_si(m["tpot_s"]["p90"], "s"),
            f"{m['goodput_requests_per_s']:.2f}",
        ])  # fmt: skip
    print(table(rows, ["deployment", "devices", "tokens/s", "per device", "TTFT mean",
                       "TTFT p90", "TPOT mean", "TPOT p90", "goodput req/s"]))  # fmt: skip
    slo = []
    if r.slo_ttft_s is not None:
        slo.append(f"TTFT <= {r.slo_ttft_s:g} s")
    if r.slo_tpot_s is not None:
        slo.append(f"TPOT <= {r.slo_tpot_s:g} s")
    print("  goodput: completed requests/s " + (
        "meeting " + " and ".join(slo) if slo else "(no SLO given: every completed request)"))
