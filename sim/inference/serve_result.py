"""The result of a serving run (``Server.run``) and its latency and throughput metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from operator import attrgetter

import numpy as np
from xpusim.sim.inference.workload import Request


@dataclass
class ServeResult:
    requests: list[Request]
    makespan_s: float
    steps: int
    prefill_steps: int
    preemptions: int
    mean_batch: float
    kv_capacity_tokens: float
    extra: dict = field(default_factory=dict)

    def metrics(self) -> dict:
        # The completed requests, their times and lengths as columns: element-wise numpy
        # does the IEEE operations of the per-request expressions (first - arrival,
        # (finish - first) / (output - 1) with the integer exact in float64), in request
        # order, without a Python pass per quantity over up to 78,000 requests.
        done = [r for r in self.requests
                if r.finish_s is not None and r.first_token_s is not None]
        arrival, first, finish = (_column(done, name, np.float64)
                                  for name in ("arrival_s", "first_token_s", "finish_s"))
        output = _column(done, "output", np.int64)
        ttft = first - arrival
        several = output > 1
        tpot = (finish - first)[several] / (output[several] - 1)
        e2e = finish - arrival
        out_tokens = sum(map(attrgetter("output"), done))
        # Prompt + output tokens of the completed requests: the "total token throughput"
        # some benchmarks print next to the output-token one (e.g. trtllm-bench's
        # "Total Token Throughput", vLLM benchmark_throughput's "total tokens/s").
        total_tokens = out_tokens + sum(map(attrgetter("prompt"), done))

        def pct(x: np.ndarray) -> dict:
            if len(x) == 0:
                return {"mean": None, "p50": None, "p90": None, "p99": None}
            # One call for the three: the same floats as one call per percentile.
            p50, p90, p99 = np.percentile(x, [50, 90, 99]).tolist()
            return {"mean": float(x.mean()), "p50": p50, "p90": p90, "p99": p99}

        return {
            "requests": len(self.requests),
            "completed": len(done),
            "makespan_s": self.makespan_s,
            "throughput_tokens_per_s": out_tokens / self.makespan_s if self.makespan_s else 0.0,
            "throughput_requests_per_s": len(done) / self.makespan_s if self.makespan_s else 0.0,
            "total_tokens_per_s": total_tokens / self.makespan_s if self.makespan_s else 0.0,
            "ttft_s": pct(ttft),
            "tpot_s": pct(tpot),
            "e2e_s": pct(e2e),
            "steps": self.steps,
            "prefill_steps": self.prefill_steps,
            "preemptions": self.preemptions,
            "mean_decode_batch": self.mean_batch,
            "kv_capacity_tokens": self.kv_capacity_tokens,
            **self.extra,
        }


def _column(requests: list[Request], name: str, dtype: type) -> np.ndarray:
    """The attribute ``name`` of each of ``requests``, as an array."""
    return np.fromiter(map(attrgetter(name), requests), dtype, len(requests))
