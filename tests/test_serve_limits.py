"""A serving run's own scheduler limits (--max-num-seqs, --max-batched-tokens) replace the
engine profile's, as the serving tools' flags replace the engine's settings."""

from __future__ import annotations

import subprocess
import sys

import pytest
from xpusim.sim.api.serve import serve
from xpusim.sim.errors import InputError

RUN = dict(model="llama-2-7b", system="dgx-a100", devices=1, engine="vllm-0.6", rate=10000.0,
           requests=300, prompt_len="128", output_len="64")


def test_max_num_seqs_bounds_the_batch():
    capped = serve(**RUN, max_num_seqs=32).metrics
    free = serve(**RUN).metrics
    assert capped["mean_decode_batch"] <= 32
    assert free["mean_decode_batch"] > 32  # vllm-0.6's own limit is 256
    assert capped["throughput_tokens_per_s"] < free["throughput_tokens_per_s"]


def test_limits_equal_to_the_profile_change_nothing():
    same = serve(**RUN, max_num_seqs=256, max_batched_tokens=8192).metrics
    assert same == serve(**RUN).metrics


def test_override_replaces_the_trtllm_bench_heuristic():
    run = {**RUN, "engine": "trtllm-1.0", "dtype": "fp8", "system": "dgx-h100"}
    assert serve(**run, max_num_seqs=16).metrics["mean_decode_batch"] <= 16


@pytest.mark.parametrize("field, value", [("max_num_seqs", 0), ("max_batched_tokens", -5),
                                          ("max_num_seqs", 1.5)])
def test_bad_limits_are_refused_naming_the_flag(field, value):
    flag = "--" + field.replace("_", "-")
    with pytest.raises(InputError, match=flag):
        serve(**RUN, **{field: value})


def test_limits_without_serve_are_refused():
    out = subprocess.run(
        [sys.executable, "-m", "xpusim.sim.cli.main", "infer", "--model", "llama-2-7b",
         "--system", "dgx-a100", "--max-num-seqs", "4"],
        capture_output=True, text=True,
    )
    assert out.returncode != 0 and "add --serve" in out.stderr
    assert "Traceback" not in out.stderr


def test_the_run_reports_its_limits_and_graph_sizes():
    """The limits a run scheduled under and, for an engine that pads generation-only steps
    to CUDA-graph sizes (trtllm-1.0), the sizes captured under those limits."""
    run = {**RUN, "engine": "trtllm-1.0", "dtype": "fp8", "system": "dgx-h100"}
    sched = serve(**run, max_num_seqs=48).metrics["scheduler"]
    assert sched["max_num_seqs"] == 48
    # perf-overview sizes up to min(48, max_num_tokens), then the bound itself
    assert sched["cuda_graph_batch_sizes"] == [1, 2, 4, 8, 16, 32, 48]
    plain = serve(**RUN).metrics["scheduler"]
    # vllm-0.6: vLLM V0's captured decode sizes, 1, 2, 4 and multiples of 8 up to 256
    v0 = [1, 2, 4] + [8 * i for i in range(1, 33)]
    assert plain == {"max_num_seqs": 256, "max_batched_tokens": 8192, "cuda_graph_batch_sizes": v0}
    none = serve(**{**RUN, "engine": "trtllm-0.10"}).metrics["scheduler"]
    assert none["cuda_graph_batch_sizes"] == []


def test_cli_prints_the_scheduler_line():
    out = subprocess.run(
        [sys.executable, "-m", "xpusim.sim.cli.main", "infer", "--model", "llama-2-7b",
         "--system", "dgx-h100", "--devices", "1", "--dtype", "fp8", "--engine", "trtllm-1.0",
         "--serve", "--requests", "40", "--rate", "10000", "--max-num-seqs", "24"],
        capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stderr
    assert ("scheduler: max_num_seqs 24, max_batched_tokens" in out.stdout
            and "padded to the CUDA-graph batch sizes 1, 2, 4, 8, 16, 24" in out.stdout)
