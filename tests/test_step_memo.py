"""Step simulators of equal inputs share their pricing caches within a process
(``priced_step.step_memo``; on one system, the collective pricer: ``shared_table``), the
network model caches routes per system (``analytical._routes``) and ``xpusim validate``
runs the serving rows of one deployment together (``runner.share_key``). None of it may change a number: a shared
or cached price is the same float as one priced afresh, in any order."""

from __future__ import annotations

import dataclasses

from xpusim.hwprofiles import load_system
from xpusim.sim.inference.engine_profile import load_engine
from xpusim.sim.inference.lowering import StepBatch, StepSimulator
from xpusim.sim.inference.priced_step import clear_memos
from xpusim.sim.models.hf_config import load_model
from xpusim.sim.network import analytical
from xpusim.sim.network.api import cost_collective
from xpusim.sim.parallel import ParallelPlan
from xpusim.sim.validation import runner
from xpusim.sim.validation.corpus import Row
from xpusim.sim.validation.metrics import signed_error
from xpusim.sim.validation.runner import _groups, run_row, run_rows


def _sim(dtype: str = "fp8", system: str = "dgx-h100") -> StepSimulator:
    return StepSimulator(load_model("llama-2-70b"), load_system(system), ParallelPlan(tp=4),
                         load_engine("trtllm-0.10"), dtype)


def _shapes(order: int) -> list[StepBatch]:
    batches = [StepBatch(b, 1, c, "decode") for b in (1, 7, 64, 300) for c in (128, 1000.5, 0)]
    batches += [StepBatch(2, 512, 0, "prefill"), StepBatch(16, 4, 256, "verify")]
    return batches[::order]


def test_equal_inputs_share_one_memo_and_price_as_fresh():
    clear_memos()
    first = _sim()
    for batch in _shapes(1):  # fills the shared memo in one order
        first.time_s(batch)
    shared = _sim()  # built from equal (not identical) inputs: loaded again
    assert shared._priced is first._priced and shared._sums_memo is first._sums_memo
    got = [(shared._device_sums(b), shared.time_s(b)) for b in _shapes(-1)]
    clear_memos()
    fresh = _sim()
    assert fresh._priced is not first._priced and not fresh._priced
    want = [(fresh._device_sums(b), fresh.time_s(b)) for b in _shapes(-1)]
    assert got == want  # the same floats, bit for bit


def test_different_inputs_do_not_share():
    clear_memos()
    fp8, fp16 = _sim("fp8"), _sim("fp16")
    assert fp8._priced is not fp16._priced and fp8._models is not fp16._models
    assert fp8._comm is fp16._comm  # the same system: one collective pricer
    system = load_system("dgx-h100")
    slower = dataclasses.replace(system, intra_link=dataclasses.replace(
        system.intra_link, bandwidth=system.intra_link.bandwidth / 2))
    other = StepSimulator(load_model("llama-2-70b"), slower, ParallelPlan(tp=4),
                          load_engine("trtllm-0.10"), "fp8")
    assert other._priced is not fp8._priced and other._comm is not fp8._comm
    batch = StepBatch(64, 1, 512, "decode")
    assert other.time_s(batch) > fp8.time_s(batch)  # its own (slower) all-reduces


def test_cached_routes_price_as_uncached():
    system = load_system("dgx-h100")
    sizes = [1.0, 4096.0, 3e6, 1.5e9]
    analytical._ROUTES.clear()
    cold = [cost_collective(system, "all-reduce", tuple(range(8)), n) for n in sizes]
    assert analytical._ROUTES  # the routes of the group were kept
    warm = [cost_collective(system, "all-reduce", tuple(range(8)), n) for n in sizes]
    analytical._ROUTES.clear()
    assert cold == warm
    # A system rebuilt with other links (a what-if) gets routes of its own: the cache
    # is keyed on the system object, so its price is the one priced with no cache.
    cost_collective(system, "all-reduce", tuple(range(8)), 3e6)
    slow = dataclasses.replace(system, intra_link=dataclasses.replace(
        system.intra_link, bandwidth=system.intra_link.bandwidth / 4, latency=1e-4))
    cached = cost_collective(slow, "all-reduce", tuple(range(8)), 3e6)
    assert len(analytical._ROUTES) == 2
    analytical._ROUTES.clear()
    assert cached == cost_collective(slow, "all-reduce", tuple(range(8)), 3e6)
    assert cached.time_s > cold[2].time_s


def _row(i: int, **args) -> Row:
    return Row(id=f"r{i}", category="serving", role="check", metric="output_tokens_per_s",
               unit="tokens/s", measured=1.0, source="test", reliability="P", hardware="-", software="-",
               command="infer", args=args)


def test_validate_groups_rows_of_one_deployment_without_changing_results():
    common = {"system": "dgx-h100", "tp": 4, "engine": "trtllm-0.10", "serve": True,
              "rate": 10000, "requests": 40}
    rows = [
        _row(0, model="llama-2-70b", dtype="fp8", **common, **{"prompt-len": 128,
                                                              "output-len": 64}),
        _row(1, model="llama-2-70b", dtype="fp16", **common, **{"prompt-len": 64,
                                                               "output-len": 32}),
        _row(2, model="llama-2-70b", dtype="fp8", **{**common, "tp": 2},
             **{"prompt-len": 128, "output-len": 64}),
        _row(3, model="llama-2-70b", dtype="fp8", **common, **{"prompt-len": 64,
                                                              "output-len": 32}),
    ]
    # Rows 0, 1, 3 run on one deployment: one group, its fp16 row after the fp8 ones.
    assert _groups(rows) == [[1, 0, 3], [2]]
    clear_memos()
    alone = []
    for row in rows:
        clear_memos()
        alone.append(run_row(row).predicted)
    clear_memos()
    together = [r.predicted for r in run_rows(rows, jobs=1)]
    assert together == alone and all(p is not None for p in alone)


def test_rows_with_one_command_line_share_one_run(monkeypatch):
    """Two rows of the same command (two releases of a table repeating one plan) run the
    study once; each is scored against its own measurement."""
    args = {"kind": "all-reduce", "system": "dgx-h100", "bytes": "64MiB"}
    first = Row(id="a", category="collective", role="check", metric="busbw", unit="GB/s",
                measured=400.0, source="test", reliability="P", hardware="-", software="-",
                command="collective", args=dict(args))
    second = dataclasses.replace(first, id="b", measured=500.0)
    other = dataclasses.replace(first, id="c", args={**args, "bytes": "1MiB"})
    assert _groups([first, other, second]) == [[0, 2], [1]]
    calls = []
    real = runner.predict
    monkeypatch.setattr(runner, "predict", lambda row: calls.append(row.id) or real(row))
    a, c, b = run_rows([first, other, second], jobs=1)
    assert calls == ["a", "c"]  # "b" reused "a"'s document
    assert a.predicted == b.predicted and a.predicted is not None
    assert a.error != b.error and b.error == signed_error(b.predicted, 500.0, "GB/s")
    assert c.predicted != a.predicted
