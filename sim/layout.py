"""Rank placement: which global rank holds which coordinate of a resolved plan.

The order string lists the dimensions innermost first (Megatron's default
``tp-cp-ep-dp-pp``: TP inside a node, PP outermost), as Megatron-Core's
``RankGenerator`` reads it (``parallel_state.py``). ``Layout`` maps coordinates to
ranks and gives the groups; with ``ParallelPlan.moe_fold`` the MoE layers have a second
layout over the same ranks (Megatron-Core >= 0.10's expert RankGenerator).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from xpusim.sim.errors import InputError

if TYPE_CHECKING:
    from xpusim.sim.parallel import ParallelPlan

DIMENSIONS = ("tp", "cp", "ep", "dp", "pp")
DEFAULT_ORDER = "tp-cp-ep-dp-pp"


def parse_order(order: str) -> tuple[str, ...]:
    """The order string's dimensions, innermost first; each of DIMENSIONS once."""
    dims = tuple(d.strip() for d in order.split("-"))
    if sorted(dims) != sorted(DIMENSIONS):
        raise InputError(
            f"order '{order}' must list each of {', '.join(DIMENSIONS)} once, "
            f"innermost first (default {DEFAULT_ORDER})"
        )
    return dims


def expert_dims(dims: tuple[str, ...]) -> tuple[str, ...]:
    """The order of the experts' rank generator: the plan's without CP (Megatron-Core
    builds it with cp = 1)."""
    return tuple(d for d in dims if d != "cp")


@dataclass(frozen=True)
class Coord:
    tp: int
    cp: int
    ep: int
    # The outer (expert-data-parallel) part of DP, 0 .. dp/ep - 1; with moe_fold all of DP
    # in the attention's layout, the expert-data-parallel index (0 .. cp*dp/ep - 1) in
    # the experts'.
    dp: int
    pp: int


@dataclass(frozen=True)
class Layout:
    """Maps coordinates to global ranks for a resolved plan (dims innermost first).

    Without ``plan.moe_fold`` one layout serves every layer: EP carved out of DP
    (sizes tp, cp, ep, dp/ep, pp). With it there are two over the same ranks, as
    Megatron-Core's two RankGenerators: the attention's (``experts=False``: tp, cp,
    dp, pp; EP size 1) and the MoE layers' (``experts=True``: tp, ep, cp*dp/ep, pp in
    the order without CP, Megatron's ``tp-ep-dp-pp``; the "tp" dimension is the experts'
    TP under TP-split experts and the TP half of the TP x EP group under TP-extend-EP).
    Both put PP at the same stride (``_check_fold``), so a coordinate's ``pp`` agrees."""

    plan: ParallelPlan
    experts: bool = False
    sizes: dict[str, int] = field(init=False)
    dims: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        p = self.plan
        dims = parse_order(p.order)
        sizes = {"tp": p.tp, "cp": p.cp, "ep": p.ep, "dp": p.dp // p.ep, "pp": p.pp}
        if p.moe_fold and self.experts:
            dims = (*expert_dims(dims), "cp")  # cp of size 1: any place gives the same ranks
            sizes = {"tp": p.tp, "cp": 1, "ep": p.ep, "dp": p.edp, "pp": p.pp}
        elif p.moe_fold:
            sizes = {"tp": p.tp, "cp": p.cp, "ep": 1, "dp": p.dp, "pp": p.pp}
        object.__setattr__(self, "dims", dims)
        object.__setattr__(self, "sizes", sizes)

    def for_experts(self) -> Layout:
        """The MoE layers' layout: this one unless the plan folds (``moe_fold``)."""
        return Layout(self.plan, experts=True) if self.plan.moe_fold else self

    def rank(self, c: Coord) -> int:
        r, stride = 0, 1
        for d in self.dims:
            r += getattr(c, d) * stride
            stride *= self.sizes[d]
        return r

    def coord(self, rank: int) -> Coord:
        vals = {}
        for d in self.dims:
            vals[d] = rank % self.sizes[d]
            rank //= self.sizes[d]
        return Coord(**vals)

    def group(self, rank: int, dims: tuple[str, ...]) -> tuple[int, ...]:
        """Global ranks sharing every coordinate of ``rank`` except ``dims`` (distinct
        dimension names).

        ``rank`` is linear in the coordinates (``rank``: each times its dimension's
        stride), so the members are ``rank`` with its ``dims`` coordinates zeroed plus
        every combination of those strides: integers, the same ones a ``Coord`` per
        member gave (Pangu's 6,144-rank plan built 3,440 of them)."""
        base = self.coord(rank)
        strides, stride = {}, 1
        for d in self.dims:
            strides[d] = stride
            stride *= self.sizes[d]
        members = [rank - sum(getattr(base, d) * strides[d] for d in dims)]
        for d in dims:
            members = [m + i * strides[d] for m in members for i in range(self.sizes[d])]
        return tuple(sorted(members))

    def stage_ranks(self, stage: int) -> list[int]:
        return sorted(r for r in range(self.plan.world) if self.coord(r).pp == stage)
