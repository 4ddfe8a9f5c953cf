"""A forward's priced items, kept to re-price the same step at another context.

A serving run prices each decode batch size at two or more context grid points
(``StepCosts``), and lowering plus pricing a step costs ~1 ms. Between two contexts of
the same (sequences, new tokens, phase) only the attention cores change: the step's
context enters the lowering only through ``StepShape.kv_len`` (``step_blocks`` ->
``layer_forward``), which only ``attention_ops`` reads — for each layer's attention core
and, with MLA, for the choice between the absorbed (kv_len > q_len) and the expanded
form. Keyed on ``context > 0`` as well, every other item of the step is the same value
at any context, priced by the same cost model (chosen by sequences and phase), so its
time is the same float. Re-pricing therefore rebuilds and prices only the attention
cores and sums the items in the same order: the same floats as lowering afresh
(``tests/test_priced_step.py`` compares the two with ``==``).

``step_memo`` shares these caches between step simulators built from equal inputs in
one process (``StepMemo``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

from xpusim.sim.inference.ep_dispatch import ep_kernel_comm
from xpusim.sim.ir import Collective, Op, OpKind
from xpusim.sim.network import comm_time_fn

# Step-simulator configurations whose pricing caches one process keeps (``step_memo``):
# a configuration's caches hold tens of MB after a long serving run (every decode batch
# size's skeleton, op costs and sums), so few; and systems' collective pricers
# (``shared_table``: floats by collective, small: ~115,000 entries over every serving row
# of ``validate --published``). A worker runs the deployment groups of many systems in
# turn, so with room for only 4 systems a system's table was dropped and its collectives
# priced again when the next of its groups came (2026-12-07: 156,893 collective pricings
# for 115,445 distinct collectives over the serving rows in one process, ~90 µs each);
# 32 holds every system the serving rows use (7) and the other inference rows' too. The
# decode template's block prices are kept there too, per device ("block_prices") and per
# system ("block_comm"), ~1 MB each: 28 tables over every inference row in one process
# (2026-12-07), so 64 leaves room.
MEMO_CONFIGS = 2
SHARED_TABLES = 64


# Op kinds whose content repeats within one step: the attention and FFN norms (and the
# final norm) read the same tokens x hidden, so do the two residual adds, and an MoE
# layer's permute and unpermute copies move the same bytes. Over 396 serving rows of
# ``validate --published`` (2026-12-07) these found the memo 1/3 (elementwise) to 2/3
# (norms) of the time; GEMMs 5,518 times in 850,807 (0.65 %), attention cores, embedding
# lookups, softmaxes and routers never. Those go to the model directly: building their
# key and hashing it twice (a GemmShape has ten fields) cost more than the few prices
# it saved. A hit or a fresh price is the same float either way (a pure function of the
# op's content).
REPEATED_KINDS = frozenset({OpKind.NORM, OpKind.ELEMENTWISE, OpKind.MEMCPY})


@dataclass(frozen=True)
class PricedStep:
    """A step's distinct items in first-appearance order as (runs, seconds, is an
    attention op), and its attention cores as (entry index, layer that builds it)."""

    entries: tuple[tuple[int, float, bool], ...]
    cores: tuple[tuple[int, int], ...]

    def sums(self) -> tuple[float, float, float]:
        """(all items, attention ops, the other items): device seconds, each distinct
        item's time times its runs, added in first-appearance order."""
        total = attention_s = other_s = 0.0
        for count, t, is_attention in self.entries:
            part = count * t  # one product, added to two sums (the same float each time)
            total += part
            if is_attention:
                attention_s += part
            else:
                other_s += part
        return total, attention_s, other_s

    def with_cores(self, times: list[float]) -> PricedStep:
        """The same step with its attention cores at ``times`` (in ``cores`` order)."""
        entries = list(self.entries)
        for (index, _), t in zip(self.cores, times, strict=True):
            count, _, is_attention = entries[index]
            entries[index] = (count, t, is_attention)
        return PricedStep(tuple(entries), self.cores)


def distinct_items(blocks: list[tuple[list, int]], start: int = 0) -> list[tuple[Any, int, int]]:
    """The distinct items of ``step_blocks`` (layers of one kind share their objects) in
    first-appearance order, as (item, how many times it runs, its first layer: -1 outside
    the layers). ``start``: the first layer of a pipeline stage's blocks."""
    counts: dict[int, int] = {}  # id -> runs (a plain dict: Counter's __missing__ is Python)
    distinct: dict[int, tuple[Any, int]] = {}  # id -> (item, its first layer)
    for (block, repeat), layer in zip(blocks, block_layers(blocks, start), strict=True):
        for item in block:
            key = id(item)
            if key in distinct:
                counts[key] += repeat
            else:
                counts[key] = repeat
                distinct[key] = (item, layer)
    return [(item, counts[key], layer) for key, (item, layer) in distinct.items()]


def block_layers(blocks: list[tuple[list, int]], start: int = 0) -> list[int]:
    """The first layer of each block of ``step_blocks`` (embedding, runs of same-kind
    layers, LM head): -1 for the embedding and LM head blocks. ``start``: the first
    layer of a pipeline stage's blocks."""
    first, layer = [-1], start
    for _, count in blocks[1:-1]:
        first.append(layer)
        layer += count
    return [*first, -1]


class StepOpTimes:
    """Op times of one step under ``model`` (an uncached cost model): each distinct
    content (``Op.cache_key``) among the step's ops of ``REPEATED_KINDS`` priced once,
    the others priced as they come.

    A step simulator's ``CachedCostModel`` keeps every op it prices for the life of its
    configuration, but a new step shape's ops are new: over the corpus's serving rows
    fewer than 0.5 % of the ops priced for a skeleton or a re-pricing were found there
    from another step (2026-12-06: ~5,000 of ~1.27M), while the kept costs, their shapes
    and keys (~50 tracked objects per skeleton) were traversed by every full pass of the
    garbage collector: without them ``validate --published`` took ~99 instead of ~131 s
    CPU (docs/performance.md). The key is everything an op's cost
    depends on (the cost models read no name or role), so the time is the float the
    cached model returns for it; the memo lives as long as the step's pricing."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.seen: dict[tuple, float] = {}
        # The model's time alone where it has it (``RooflineModel.time_s`` and the models
        # around it: the same float as ``time(op).time_s`` without the report).
        self._time_s: Callable[[Op], float] = getattr(model, "time_s", None) or (
            lambda op: model.time(op).time_s)

    def __call__(self, op: Op) -> float:
        if op.kind not in REPEATED_KINDS:
            return self._time_s(op)  # no content memo: see ``REPEATED_KINDS``
        key = op.cache_key()
        t = self.seen.get(key)
        if t is None:
            t = self.seen[key] = self._time_s(op)
        return t


@dataclass
class StepMemo:
    """The pricing caches of one step-simulator configuration: its cost models by (CUDA
    graphs, decode), priced skeletons by (sequences, q_len, phase, context > 0), device
    sums by ``StepBatch``; and the collective pricer, shared by every configuration on
    the same system (``shared_table``). Every value is a pure function of the
    simulator's inputs and its key (op costs keyed on what they depend on, collective
    times, sums of both), so simulators built from equal inputs can share them and get
    the same floats as pricing afresh. Engine runs (``StepResult``, which carries
    dicts) are kept ``detached`` and handed out as copies."""

    models: dict[tuple[bool, bool], Any] = field(default_factory=dict)
    priced: dict[tuple[float, float, str, bool, float], PricedStep] = field(default_factory=dict)
    sums: dict[Any, tuple[float, float, float]] = field(default_factory=dict)
    # Decode skeletons priced a block of batch sizes at a time (``batched_step``; a
    # ``DecodeTemplate``, set on first use: imported there, which imports this module).
    batched: Any = None
    # The collective pricer: set from ``shared_table`` on first use.
    comm: Callable[[Collective], float] | None = None
    # Engine runs (``StepSimulator.run``) by (StepBatch, host), each kept ``detached``:
    # the speculative-decoding rows (``xpusim sd``) of one target at several acceptance
    # rates run the same steps (60 rows, 15 distinct (configuration, gamma) pairs).
    runs: dict[Any, Any] = field(default_factory=dict)
    # A serving run's interpolation tables (``stepcosts.CostTables``) by the pricing
    # flags that change them: the rows of one deployment at several request counts and
    # rates read the same grid points (``StepCosts``).
    costs: dict[Any, Any] = field(default_factory=dict)


def detached(result: Any) -> Any:
    """A ``StepResult`` with its own dicts (``by_kind``, ``details``): one kept in a
    ``StepMemo`` and the simulators' copies of it share no mutable field."""
    return replace(result, by_kind=dict(result.by_kind), details=dict(result.details))


@lru_cache(maxsize=MEMO_CONFIGS)
def step_memo(config: str) -> StepMemo:
    """The memo of the step-simulator configuration ``config`` (the ``repr`` of all its
    inputs: frozen dataclasses of plain data, whose ``repr`` holds every field, floats
    exactly), one per configuration per process, the last ``MEMO_CONFIGS`` kept.

    A serving sweep (``xpusim validate``'s rows of one deployment at several request
    lengths, an API sweep over rates) prices the same step shapes in every run:
    sharing the memo prices each shape once per process. Not visible to users: a hit
    returns the float a fresh pricing would."""
    return StepMemo()


@lru_cache(maxsize=SHARED_TABLES)
def shared_table(what: str, key: str) -> dict[Any, Any]:
    """A cache shared by step simulators whose ``what`` ("comm": the collective pricer,
    by system) has the same ``repr`` ``key``; the last ``SHARED_TABLES`` kept."""
    return {}


def clear_memos() -> None:
    """Drop every shared step-simulator memo of this process (``step_memo``,
    ``shared_table``): simulators built afterwards price afresh. Memory, and tests
    that compare shared with fresh pricing."""
    step_memo.cache_clear()
    shared_table.cache_clear()


def simulator_memo(
    spec: Any, system: Any, plan: Any, engine: Any, dtype: str, routing: Any, fc_in: int,
    attention_impl: str | None, layers: tuple[int, int],
) -> tuple[StepMemo, Callable[[Collective], float]]:
    """The memo of a ``StepSimulator`` of these inputs and its collective pricer (shared
    as ``StepMemo`` says): the system's, with the MoE dispatch / combine priced by the
    EP kernel ``routing.ep_dispatch`` names (``ep_dispatch.py``) unless "collective"."""
    memo = step_memo(repr((spec, system, plan, engine, dtype, routing, fc_in,
                           attention_impl, layers)))
    if memo.comm is None:  # a new memo: its shared tables
        comm = shared_table("comm", repr(system))
        if "fn" not in comm:
            comm["fn"] = comm_time_fn(system)
        memo.comm = ep_kernel_comm(comm["fn"], spec, system, plan, dtype,
                                   routing.ep_dispatch, routing.ep_dispatch_dtype,
                                   routing.ll_intranode)
    return memo, memo.comm
