"""A mixed (in-flight batching) step is one forward over its decode and prompt tokens."""

from __future__ import annotations

import bisect
import random
from dataclasses import replace

import pytest
from xpusim.hwprofiles import load_system
from xpusim.sim.inference.engine_profile import load_engine
from xpusim.sim.inference.lowering import StepBatch, StepSimulator
from xpusim.sim.inference.serving import Server
from xpusim.sim.inference.stepcosts import CONTEXT_GRID, StepCosts
from xpusim.sim.inference.workload import Request
from xpusim.sim.models.hf_config import load_model
from xpusim.sim.parallel import ParallelPlan


def _costs(model: str, tp: int, dtype: str = "fp16") -> StepCosts:
    sim = StepSimulator(load_model(model), load_system("dgx-h100"), ParallelPlan(tp=tp),
                        load_engine("trtllm-0.10"), dtype)
    return StepCosts(sim)


def test_parts_add_up_to_the_step():
    costs = _costs("llama-2-7b", 1)
    sim = costs.target
    for batch in (StepBatch(64, 1, 1024), StepBatch(1, 512, 0, "prefill")):
        total = sim.time_s(batch, host=False)
        parts = sim.part_time(batch, attention=True) + sim.part_time(batch, attention=False)
        assert parts == pytest.approx(total, rel=1e-12)


def test_a_lone_chunk_is_a_prefill_forward():
    # 2048 is a point of both grids: no interpolation.
    costs = _costs("llama-2-7b", 1)
    alone = costs.mixed_device(0, 0.0, [2048])
    assert alone == pytest.approx(costs._device(StepBatch(1, 2048, 0, "prefill")), rel=1e-12)


def test_chunk_tokens_ride_on_the_decode_tokens():
    # decode 64 at context 1024 + one 128-token chunk: the decode step, the token work
    # at 64 + 128 = 192 tokens less at 64 (all three grid points), the chunk's attention.
    costs = _costs("llama-2-7b", 1)
    sim = costs.target
    other = lambda t: sim.part_time(StepBatch(1, t, 0, "prefill"), attention=False)  # noqa: E731
    expected = (costs.decode_device(64, 1024) + other(192) - other(64)
                + sim.part_time(StepBatch(1, 128, 0, "prefill"), attention=True))
    assert costs.mixed_device(64, 1024, [128]) == pytest.approx(expected, rel=1e-12)


def test_experts_are_read_once_per_step():
    # Mixtral-8x7B: a one-token forward touches 2 of 8 experts, a 128-token chunk all 8.
    # Pricing each chunk as (its prefill - a one-token prefill) would re-read six experts'
    # weights per chunk; one forward reads them once, so 16 chunks of 128 on top of a
    # decode batch that already touches every expert cost far less than 16 such chunks.
    costs = _costs("mixtral-8x7b", 2)
    decode = costs.decode_device(734, 192)
    one_forward = costs.mixed_device(734, 192, [128] * 16) - decode
    per_chunk = 16 * costs.prefill_token_device(128)
    assert one_forward < 0.5 * per_chunk
    # ... and no less than the chunks' own work: 2,048 tokens of expert and dense GEMMs.
    assert one_forward > 0.5 * costs.mixed_device(0, 0.0, [2048])


def test_a_later_chunk_attends_to_its_cached_prefix():
    # 2048 queries over 4096 cached + 2048 own keys: both grid points, so the step's
    # attention is the prefill of that shape's attention ops (kv_len = 6144), exactly.
    costs = _costs("llama-2-7b", 1)
    sim = costs.target
    later = sim.part_time(StepBatch(1, 2048, 4096, "prefill"), attention=True)
    first = sim.part_time(StepBatch(1, 2048, 0, "prefill"), attention=True)
    assert costs.chunk_attention(2048, 4096) == pytest.approx(later, rel=1e-12)
    assert later > 2 * first  # 2048 x 4096 cross block + the 2048 x 2048 causal square
    with_prefix = costs.mixed_device(0, 0.0, [2048], [4096])
    assert with_prefix - costs.mixed_device(0, 0.0, [2048]) == pytest.approx(later - first,
                                                                              rel=1e-9)
    # No prefix: the prefix-free path, the same floats as before.
    assert costs.mixed_device(64, 1024, [128], [0]) == costs.mixed_device(64, 1024, [128])


def test_chunk_attention_is_bilinear_between_grid_corners():
    costs = _costs("llama-2-7b", 1)
    f = costs._prefix_attention
    # chunk 1536 is midway between 1024 and 2048, prefix 3072 midway between 2048 and 4096.
    corners = (f(1024, 2048) + f(1024, 4096) + f(2048, 2048) + f(2048, 4096)) / 4
    assert costs.chunk_attention(1536, 3072) == pytest.approx(corners, rel=1e-12)
    # More cached prefix never makes a chunk cheaper.
    times = [costs.chunk_attention(1000, p) for p in (100, 1000, 5000, 20000)]
    assert times == sorted(times)


def test_chunk_attention_cells_equal_the_corner_formula():
    # chunk_attention keeps each grid cell's four corners: the same floats as reading
    # the corners at every call.
    costs = _costs("llama-2-7b", 1)
    f, grid = costs._prefix_attention, CONTEXT_GRID
    rng = random.Random(4)
    for _ in range(400):
        chunk, prefix = rng.randint(1, 9000), rng.choice((rng.randint(1, 40000), 128, 4096))
        i = min(max(bisect.bisect_right(grid, chunk) - 1, 0), len(grid) - 2)
        j = min(max(bisect.bisect_right(grid, prefix) - 1, 0), len(grid) - 2)
        c0, c1, p0, p1 = grid[i], grid[i + 1], grid[j], grid[j + 1]
        u, v = (chunk - c0) / (c1 - c0), (prefix - p0) / (p1 - p0)
        expected = ((1 - u) * ((1 - v) * f(c0, p0) + v * f(c0, p1))
                    + u * ((1 - v) * f(c1, p0) + v * f(c1, p1)))
        assert costs.chunk_attention(chunk, prefix) == expected


def test_without_chunked_prefill_a_prompt_waits_for_a_step_that_holds_it():
    # Budget 3000 tokens, two 2000-token prompts. With chunking the second takes the
    # 1000 tokens the first leaves, then its other 1000 (over the first 1000 as prefix);
    # without it, it waits for the next step's whole budget: every chunk is a whole prompt.
    def chunks_seen(chunked: bool) -> list[int]:
        engine = replace(load_engine("trtllm-0.10"), chunked_prefill=chunked, kv_reserve="full")
        sim = StepSimulator(load_model("llama-2-7b"), load_system("dgx-h100"), ParallelPlan(),
                            engine, "fp16")
        costs = StepCosts(sim)
        seen: list[int] = []
        mixed = costs.mixed

        def spy(decode_batch, context, chunks, sampled, admitted, prefixes=None):
            seen.extend(chunks)
            return mixed(decode_batch, context, chunks, sampled, admitted, prefixes)

        costs.mixed = spy  # type: ignore[method-assign]
        server = Server(costs, 1e6, max_num_seqs=8, max_batched_tokens=3000)
        server.run([Request(0, 0.0, 2000, 4), Request(1, 0.0, 2000, 4)])
        return seen

    assert chunks_seen(True) == [2000, 1000, 1000]
    assert chunks_seen(False) == [2000, 2000]


def test_chunk_attention_remembered_cell_is_the_looked_up_one():
    """``chunk_attention`` checks the cell of its previous call first (``_cell``): the
    same float as looking the cell up by bisection at every call, in any call order,
    within the grid, on its points and past its ends."""
    costs = _costs("llama-2-7b", 1)
    grid = CONTEXT_GRID
    last = len(grid) - 2
    rng = random.Random(7)
    points = [0, 1, 127, 128, 129, 4096, 131072, 200000] + [rng.randrange(0, 140000)
                                                            for _ in range(60)]
    calls = [(rng.choice(points), rng.choice(points)) for _ in range(400)]
    calls += [(c, p) for c in (100, 101, 102) for p in (5000, 5001)]  # one cell in a row
    for chunk, prefix in calls:
        i = min(max(bisect.bisect_right(grid, chunk) - 1, 0), last)
        j = min(max(bisect.bisect_right(grid, prefix) - 1, 0), last)
        c0, c1, p0, p1 = grid[i], grid[i + 1], grid[j], grid[j + 1]
        u, v = (chunk - c0) / (c1 - c0), (prefix - p0) / (p1 - p0)
        f = costs._prefix_attention
        f00, f01, f10, f11 = f(c0, p0), f(c0, p1), f(c1, p0), f(c1, p1)
        expected = (1 - u) * ((1 - v) * f00 + v * f01) + u * ((1 - v) * f10 + v * f11)
        assert costs.chunk_attention(chunk, prefix) == expected
