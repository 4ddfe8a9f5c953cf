"""The serving-token guard (sim/limits.py MAX_SERVE_TOKENS): refused above, accepted at it."""

from __future__ import annotations

import pytest
from xpusim.sim.errors import InputError
from xpusim.sim.inference.workload import check_serve_tokens
from xpusim.sim.limits import MAX_SERVE_TOKENS


def test_twenty_two_million_tokens_are_accepted():
    # TensorRT-LLM's 1,000 x (20,000 + 2,000) trtllm-bench runs (corpus I13/I14).
    check_serve_tokens(1000 * (20000 + 2000), "--requests")


def test_above_the_limit_is_refused_with_the_fix():
    with pytest.raises(InputError, match="above the limit of 50,000,000.*fewer --requests"):
        check_serve_tokens(MAX_SERVE_TOKENS + 1, "--requests")
