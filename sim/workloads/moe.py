"""IR description of one MoE FFN layer's forward: the op graph ``kernels.moe`` runs.

``describe_moe`` lists, in program order on one rank, what ``MoELayer.forward`` (ep=1)
or ``kernels.moe.ep_forward`` (ep>1) executes:

router GEMM -> scores (softmax / sigmoid) -> top-k -> [normalise] -> sort by expert ->
gather rows (permute) -> [EP: all-to-all counts, rows, expert ids] -> per *active*
expert: gate GEMM, up GEMM, SiLU*up, down GEMM -> [EP: all-to-all results back] ->
scale by routing weight -> index-add into token rows -> shared experts (gate, up,
SiLU*up, down) -> add.

Token counts per expert are uniform by default (``tokens * top_k / num_experts`` each,
the expected load under balanced routing; fractional values are kept so FLOPs stay
exact in expectation) or a measured/assumed histogram ``tokens_per_expert``. Experts
with zero tokens run no GEMM, as in the kernel.

Under EP the rank-local shared experts go on the compute stream right after the
dispatch is issued, so they overlap the all-to-all (the kernel issues them after the
combine; the overlap is what an optimised implementation does and what the engine
should show). Matrix FLOPs are identical either way.

No torch here: this module is imported by the simulator.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from types import MappingProxyType

from xpusim.sim.errors import InputError
from xpusim.sim.ir import (
    Collective,
    CollectiveKind,
    ElementwiseShape,
    GemmShape,
    Op,
    OpKind,
    RankGraph,
    Stream,
    TopKShape,
    Unit,
    dtype_bytes,
)
from xpusim.sim.ops import elementwise, gemm, memcpy, softmax
from xpusim.sim.workloads.attention import EXP_FLOPS

INDEX_BYTES = 8  # int64 expert ids / token indices, as torch.sort and topk return them
# silu(g) = g / (1 + exp(-g)): an exp (EXP_FLOPS, see sim/workloads/attention.py), then
# negate, add, divide, multiply.
SILU_FLOPS = EXP_FLOPS + 4.0


def _check(
    tokens: float,
    hidden: int,
    expert_ffn: int,
    num_experts: int,
    top_k: int,
    shared_experts: int,
    shared_ffn: int,
    ep: int,
) -> None:
    for name, value in (
        ("tokens", tokens),
        ("hidden", hidden),
        ("expert_ffn", expert_ffn),
        ("num_experts", num_experts),
        ("top_k", top_k),
        ("ep", ep),
    ):
        if value <= 0:
            raise InputError(f"describe_moe: {name} must be > 0, got {value}")
    if top_k > num_experts:
        raise InputError(f"describe_moe: top_k={top_k} exceeds num_experts={num_experts}")
    if shared_experts < 0 or shared_ffn < 0:
        raise InputError("describe_moe: shared_experts and shared_ffn must be >= 0")
    if shared_experts and not shared_ffn:
        raise InputError("describe_moe: shared_experts > 0 needs shared_ffn > 0 (width of one)")
    if num_experts % ep:
        raise InputError(
            f"describe_moe: ep={ep} must divide num_experts={num_experts} "
            "(each rank owns num_experts/ep experts)"
        )


def _topk_op(name: str, tokens: float, num_experts: int, top_k: int, dtype: str) -> Op:
    """Top-k over the expert scores: reads tokens x E scores, writes ids and weights.

    FLOPs ~ one comparison per score (a partial selection of k << E); vector unit.
    """
    read = tokens * num_experts * 4  # scores are fp32 in the kernel
    write = tokens * top_k * (INDEX_BYTES + dtype_bytes(dtype))
    return Op(
        name,
        OpKind.ROUTING,
        tokens * num_experts,
        MappingProxyType({"hbm": read + write}),
        "fp32",
        Unit.VECTOR,
        TopKShape(tokens, num_experts, top_k),
    )


def _sort_op(name: str, rows: float) -> Op:
    """Stable sort of ``rows`` int64 expert ids (radix-like: a few passes over the keys)."""
    return Op(
        name,
        OpKind.ROUTING,
        rows * 2,
        MappingProxyType({"hbm": rows * INDEX_BYTES * 4}),
        "int8",
        Unit.VECTOR,
        ElementwiseShape(rows),
    )


def _weights(op: Op, param_bytes: float, footprint: float) -> Op:
    """Mark a GEMM's weight operand (``param_bytes``) and the layer's weight footprint.

    The cost model's cache tier (sim/cost/roofline.py) holds weights in the last-level
    cache only when every weight the layer reads per forward fits there: a cyclic
    sweep over more data than an LRU cache holds evicts each weight before its next
    use, so those bytes come from main memory whatever the size of one GEMM.
    """
    assert isinstance(op.shape, GemmShape)
    return replace(
        op, shape=replace(op.shape, weight_bytes=param_bytes, footprint_bytes=footprint)
    )


def _swiglu(
    graph: RankGraph,
    prefix: str,
    rows: float,
    hidden: int,
    ffn: float,
    dtype: str,
    label: str,
    footprint: float = 0.0,
) -> None:
    """gate GEMM, SiLU, up GEMM, multiply, down GEMM: the five ops of one SwiGLU FFN."""
    w = hidden * ffn * dtype_bytes(dtype)  # bytes of one of the three weight matrices
    graph.add(_weights(gemm(f"{prefix}.gate", rows, ffn, hidden, dtype), w, footprint), label=label)
    graph.add(elementwise(f"{prefix}.silu", rows * ffn, dtype, SILU_FLOPS), label=label)
    graph.add(_weights(gemm(f"{prefix}.up", rows, ffn, hidden, dtype), w, footprint), label=label)
    graph.add(elementwise(f"{prefix}.mul", rows * ffn, dtype, 1.0, 2, 1), label=label)
    graph.add(_weights(gemm(f"{prefix}.down", rows, hidden, ffn, dtype), w, footprint), label=label)


def _index_op(name: str, rows: float, bytes_per_row: float) -> Op:
    """An index / gather / arithmetic op over ``rows`` int64 ids (and what they carry)."""
    return Op(
        name,
        OpKind.ROUTING,
        rows,
        MappingProxyType({"hbm": rows * bytes_per_row}),
        "fp32",
        Unit.VECTOR,
        ElementwiseShape(rows),
    )


def expert_loads(
    tokens: float,
    num_experts: int,
    top_k: int,
    ep: int,
    tokens_per_expert: list[float] | tuple[float, ...] | None,
) -> list[float]:
    """Rows each of the ``num_experts`` experts receives (global over the EP group)."""
    total_rows = tokens * top_k * ep
    if tokens_per_expert is None:
        return [total_rows / num_experts] * num_experts
    loads = [float(n) for n in tokens_per_expert]
    if len(loads) != num_experts:
        raise InputError(
            f"describe_moe: tokens_per_expert has {len(loads)} entries, expected "
            f"num_experts={num_experts}"
        )
    if any(n < 0 for n in loads):
        raise InputError("describe_moe: tokens_per_expert entries must be >= 0")
    if sum(loads) > total_rows * (1 + 1e-9):
        raise InputError(
            f"describe_moe: tokens_per_expert sums to {sum(loads):g} but only "
            f"tokens*top_k*ep = {total_rows:g} assignments exist"
        )
    return loads


@dataclass
class _MoE:
    """One MoE layer forward being described on one EP rank."""

    graph: RankGraph
    tokens: float
    hidden: int
    expert_ffn: int
    num_experts: int
    top_k: int
    shared: float  # shared experts x their width (0: none)
    dtype: str
    loads: list[float]
    local: range  # this rank's experts
    ep: int
    footprint: float  # weight bytes this rank reads per forward
    label: str = "moe"

    @property
    def b(self) -> float:
        return dtype_bytes(self.dtype)

    @property
    def sent_rows(self) -> float:
        """Every (token, slot) row leaves this rank once (self included)."""
        return self.tokens * self.top_k

    def add(self, work, stream: Stream = Stream.COMPUTE, deps: tuple[int, ...] = ()) -> int:
        return self.graph.add(work, stream, deps, label=self.label)

    def router(self, scoring: str) -> None:
        """Logits GEMM, scores, top-k, gather of the chosen scores, normalisation."""
        e, h, b, rows = self.num_experts, self.hidden, self.b, self.sent_rows
        router = gemm("moe.router", self.tokens, e, h, self.dtype, out_dtype="fp32")
        self.add(_weights(router, e * h * b, self.footprint))
        if scoring == "softmax":
            self.add(softmax("moe.router.softmax", self.tokens, e, "fp32"))
        else:
            self.add(elementwise("moe.router.sigmoid", self.tokens * e, "fp32", 4.0))
        self.add(_topk_op("moe.router.topk", self.tokens, e, self.top_k, self.dtype))
        # scores.gather(1, ids): read ids (int64), write the chosen fp32 scores.
        self.add(_index_op("moe.router.gather", rows, INDEX_BYTES + 2 * 4))
        if self.top_k > 1:  # weights / weights.sum(-1): a row sum, then a divide
            self.add(elementwise("moe.router.sum", rows, "fp32", 1.0, 1, 0, OpKind.REDUCTION))
            self.add(elementwise("moe.router.normalise", rows, "fp32", 1.0, 1, 1))

    def dispatch(self) -> int:
        """Sort assignments by expert, reorder ids and weights, count rows per expert,
        gather the token rows into that order. Returns the permute's task."""
        rows, b = self.sent_rows, self.b
        self.add(_sort_op("moe.dispatch.sort", rows))
        self.add(_index_op("moe.dispatch.sorted_ids", rows, 3 * INDEX_BYTES))
        self.add(_index_op("moe.dispatch.token_of", rows, 2 * INDEX_BYTES))
        self.add(_index_op("moe.dispatch.sorted_weights", rows, INDEX_BYTES + 2 * b))
        self.add(_index_op("moe.dispatch.bincount", rows, INDEX_BYTES))
        return self.add(memcpy("moe.dispatch.permute", rows * self.hidden * b))

    def ep_dispatch(self, permute: int) -> float:
        """All-to-all of the counts, rows and expert ids; the shared experts overlap it;
        then the local sort and permute. Returns the rows this rank receives."""
        group = tuple(range(self.ep))
        rows, h, b = self.sent_rows, self.hidden, self.b
        counts = self.add(
            Collective("moe.dispatch.counts", CollectiveKind.ALL_TO_ALL, group,
                       self.ep * INDEX_BYTES),
            Stream.COMM, (permute,))
        rows_a2a = self.add(
            Collective("moe.dispatch.rows", CollectiveKind.ALL_TO_ALLV, group, rows * h * b),
            Stream.COMM, (counts,))
        ids_a2a = self.add(
            Collective("moe.dispatch.expert_ids", CollectiveKind.ALL_TO_ALLV, group,
                       rows * INDEX_BYTES),
            Stream.COMM, (counts,))
        if self.shared:
            self.shared_experts()
        recv_rows = sum(self.loads[e] for e in self.local)
        self.add(_sort_op("moe.dispatch.local_sort", recv_rows), deps=(rows_a2a, ids_a2a))
        self.add(memcpy("moe.dispatch.local_permute", recv_rows * h * b))
        return recv_rows

    def experts(self) -> None:
        for e in self.local:
            if self.loads[e] > 0:  # no tokens, no GEMM
                _swiglu(self.graph, f"moe.expert{e}", self.loads[e], self.hidden,
                        self.expert_ffn, self.dtype, self.label, self.footprint)

    def shared_experts(self) -> None:
        """Shared experts see every token; under EP they overlap the dispatch all-to-all."""
        _swiglu(self.graph, "moe.shared", self.tokens, self.hidden, self.shared, self.dtype,
                self.label, self.footprint)

    def combine(self, recv_rows: float) -> None:
        """Return the rows (EP), scale by the routing weight, index-add into token rows."""
        rows, h, b, dt = self.sent_rows, self.hidden, self.b, self.dtype
        if self.ep > 1:
            last = self.add(memcpy("moe.combine.local_unpermute", recv_rows * h * b))
            back = self.add(
                Collective("moe.combine.rows", CollectiveKind.ALL_TO_ALLV,
                           tuple(range(self.ep)), recv_rows * h * b),
                Stream.COMM, (last,))
            self.add(elementwise("moe.combine.scale", rows * h, dt, 1.0, 1, 1), deps=(back,))
        else:
            # torch.zeros_like(x): the combine accumulator.
            self.add(elementwise("moe.combine.zeros", self.tokens * h, dt, 1.0, 0, 1))
            self.add(elementwise("moe.combine.scale", rows * h, dt, 1.0, 1, 1))
        # index_add_: read the scaled rows and the accumulator, write the accumulator.
        self.add(elementwise("moe.combine.index_add", rows * h, dt, 1.0, 2, 1))


def describe_moe(
    tokens: float,
    hidden: int,
    expert_ffn: int,
    num_experts: int,
    top_k: int,
    shared_experts: int = 0,
    shared_ffn: int = 0,
    dtype: str = "fp32",
    tokens_per_expert: list[float] | tuple[float, ...] | None = None,
    ep: int = 1,
    rank: int = 0,
    scoring: str = "softmax",
) -> RankGraph:
    """Op graph of one MoE layer forward on EP rank ``rank``.

    ``tokens`` are this rank's tokens. ``tokens_per_expert`` (length ``num_experts``)
    counts the rows each expert receives over the whole EP group (for ep=1, exactly
    ``MoELayer``'s ``RoutingStats.kept_per_expert``); default uniform. With ``ep > 1``
    rank ``rank`` runs experts ``[rank*E/ep, (rank+1)*E/ep)`` and sends its rows with
    all-to-all collectives over the group ``0..ep-1``; each rank is assumed to route
    its tokens with the same expert distribution, so it sends
    ``tokens*top_k*load_e/sum(load)`` rows to expert ``e``.
    """
    _check(tokens, hidden, expert_ffn, num_experts, top_k, shared_experts, shared_ffn, ep)
    if scoring not in ("softmax", "sigmoid"):
        raise InputError(f"describe_moe: scoring must be 'softmax' or 'sigmoid', got '{scoring}'")
    if not 0 <= rank < ep:
        raise InputError(f"describe_moe: rank={rank} must be in 0..ep-1={ep - 1}")
    loads = expert_loads(tokens, num_experts, top_k, ep, tokens_per_expert)
    per_rank = num_experts // ep
    local = range(rank * per_rank, (rank + 1) * per_rank)
    # Weights this rank reads per forward: router, its active experts, shared experts.
    active = sum(1 for e in local if loads[e] > 0)
    footprint = dtype_bytes(dtype) * hidden * (
        num_experts + 3 * active * expert_ffn + 3 * shared_experts * shared_ffn)
    moe = _MoE(RankGraph(rank), tokens, hidden, expert_ffn, num_experts, top_k,
               shared_experts * shared_ffn, dtype, loads, local, ep, footprint)
    moe.router(scoring)
    permute = moe.dispatch()
    recv_rows = moe.ep_dispatch(permute) if ep > 1 else 0.0
    # (Under EP the local sort above already waits for the dispatch; stream order does the rest.)
    moe.experts()
    moe.combine(recv_rows)
    if shared_experts:
        if ep == 1:
            moe.shared_experts()
        moe.add(elementwise("moe.shared.add", tokens * hidden, dtype, 1.0, 2, 1))
    return moe.graph
