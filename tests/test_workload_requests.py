"""``make_requests`` builds constant-length rows without sampling each request
(``LengthDist.sample`` draws nothing for "const"): the requests must equal those of the
per-request sampling it replaced, field by field (``==``), with and without acceptance
draws, and for distributions that do draw."""

from __future__ import annotations

import numpy as np
import pytest
from xpusim.sim.inference.workload import LengthDist, Request, Workload, make_requests


def _sampled(w: Workload) -> list[Request]:
    """The requests as every request was built before: both lengths sampled per request,
    then an acceptance draw per request when ``alpha`` is set."""
    rng = np.random.default_rng(w.seed)
    gaps = rng.exponential(1.0 / w.rate, w.num_requests)
    arrivals = np.cumsum(gaps) - gaps[0]
    rows = [(float(t), w.prompt.sample(rng), w.output.sample(rng)) for t in arrivals]
    out = []
    for i, (t, p, o) in enumerate(rows):
        alpha = 0.0
        if w.alpha > 0:
            if w.alpha >= 1:
                alpha = 1.0
            else:
                c = w.alpha_concentration
                alpha = float(rng.beta(w.alpha * c, (1 - w.alpha) * c))
        out.append(Request(i, t, p, o, alpha))
    return out


@pytest.mark.parametrize("prompt, output", [
    ("const:128", "const:2048"), ("const:500", "uniform:10:40"), ("exp:300", "const:64"),
    ("uniform:100:900", "exp:200"),
])
@pytest.mark.parametrize("alpha", [0.0, 0.7, 1.0])
def test_requests_equal_per_request_sampling(prompt: str, output: str, alpha: float) -> None:
    w = Workload(num_requests=300, rate=7.5, prompt=LengthDist.parse(prompt, "prompt"),
                 output=LengthDist.parse(output, "output"), seed=3, alpha=alpha)
    fast, slow = make_requests(w), _sampled(w)
    assert fast == slow
    assert all(type(r.arrival_s) is float for r in fast)
