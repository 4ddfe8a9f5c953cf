"""``ServeResult.metrics`` reads its three percentiles from one ``np.percentile`` call:
the same floats as one call per percentile (the reference below), at any length."""

from __future__ import annotations

import numpy as np
from xpusim.sim.inference.serving import ServeResult
from xpusim.sim.inference.workload import Request


def test_percentiles_equal_one_call_each():
    rng = np.random.default_rng(7)
    for n in (1, 2, 3, 10, 101, 2_999):
        reqs = []
        for i in range(n):
            arrival = float(rng.random() * 10)
            first = arrival + float(rng.random())
            r = Request(i, arrival, 16, int(rng.integers(1, 50)))
            r.first_token_s, r.finish_s = first, first + float(rng.random() * 5)
            reqs.append(r)
        m = ServeResult(reqs, 20.0, 1, 1, 0, 1.0, 1.0).metrics()
        ttft = np.array([r.first_token_s - r.arrival_s for r in reqs])
        e2e = np.array([r.finish_s - r.arrival_s for r in reqs])
        for got, x in ((m["ttft_s"], ttft), (m["e2e_s"], e2e)):
            assert [got["p50"], got["p90"], got["p99"]] == [
                float(np.percentile(x, q)) for q in (50, 90, 99)]
