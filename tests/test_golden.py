"""Golden tests: the headline study outputs stay exactly what they were unless a change
means to move them. Regenerate after an intended model change with

    XPUSIM_UPDATE_GOLDEN=1 pytest tests/test_golden.py

and explain the move in the commit message.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from xpusim.sim.cli.main import main

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("XPUSIM_UPDATE_GOLDEN") == "1"

CASES = {
    "train_pangu_6144": (
        "train --model pangu-ultra-moe --system atlas-800t-a2 --nodes 768 --tp 8 --pp 16 "
        "--vpp 2 --ep 4 --mbs 2 --gbs 9216 --seq 4096 --quiet --json",
        ["step_time_s", "tokens_per_s", "mfu", "memory_per_device_bytes", "bubble_fraction",
         "exposed_comm_s", "oom"],
    ),
    "sd_qwen2_a800": (
        "sd --target qwen2-57b-a14b --draft qwen2-0.5b --system hgx-a800 --devices 2 --gamma 4 "
        "--alpha 0.95 --batch 1,4,16,64 --json",
        ["rows"],
    ),
    "ep_hierarchical": (
        "ep --model pangu-ultra-moe --system atlas-800t-a2 --nodes 4 --ep 32 "
        "--tokens-per-device 8192 --dispatch hierarchical --json",
        ["dispatch_time_s", "combine_time_s", "inter_node_bytes", "intra_node_bytes"],
    ),
    "collective_dgx_h100": (
        "collective all-reduce --system dgx-h100 --ranks 8 --bytes 1GiB --json",
        ["time_s", "algorithm", "algorithm_bandwidth", "bus_bandwidth"],
    ),
    "attention_910b2": (
        "attention --device ascend-910b2 --seq 1024,4096,16384 --heads 32 --head-dim 128 "
        "--causal --json",
        ["rows"],
    ),
    "op_gemm_h100": (
        "op gemm --m 8192 --n 8192 --k 8192 --dtype bf16 --device h100-sxm5-80gb --json",
        ["time_s", "bound", "compute_s", "memory_s"],
    ),
}


def _run(capsys, command: str) -> dict:
    assert main(command.split()) == 0
    return json.loads(capsys.readouterr().out)


def _close(a, b, path: str = "") -> None:
    if isinstance(a, dict):
        assert set(a) == set(b), f"{path}: keys differ"
        for key in a:
            _close(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), f"{path}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-15), path
    else:
        assert a == b, path


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(capsys, name):
    command, keys = CASES[name]
    out = _run(capsys, command)
    picked = {key: out[key] for key in keys}
    path = GOLDEN / f"{name}.json"
    if UPDATE or not path.exists():
        path.write_text(json.dumps(picked, indent=1, sort_keys=True) + "\n")
        if not UPDATE:
            pytest.fail(f"golden file {path.name} was missing and has been written; rerun")
    _close(picked, json.loads(path.read_text()), name)
