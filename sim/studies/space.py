"""Candidate models of a study: enumerate the hyperparameter space and prune it.

A ``Candidate`` is one point of the space (plain hyperparameters); ``to_spec``
turns it into a ``ModelSpec`` so every count and every simulation uses the
project's one model description. Pruning happens in this order, cheapest first:
structural sanity (top_k <= experts, dense layers < layers), the user's
constraints, then the parameter budgets (counted by ``xpusim.sim.models.counting``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from xpusim.sim.models.counting import param_counts
from xpusim.sim.models.spec import MLASpec, ModelSpec, MoESpec
from xpusim.sim.studies.study_file import (
    CANDIDATE_FIELDS,
    Study,
    check_constraint,
    evaluate_constraint,
)

_GQA_ONLY = ("kv_heads", "head_dim")
_MLA_ONLY = ("q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")
_MOE_ONLY = ("top_k", "shared_experts", "expert_ffn", "first_dense_layers")


@dataclass(frozen=True)
class Candidate:
    layers: int
    hidden: int
    attention: str
    heads: int
    kv_heads: int
    head_dim: int
    q_lora_rank: int
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    dense_ffn: int
    num_experts: int
    top_k: int
    shared_experts: int
    expert_ffn: int
    first_dense_layers: int
    mtp_layers: int

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def name(self) -> str:
        attn = f"mla{self.heads}" if self.attention == "mla" else f"gqa{self.heads}/{self.kv_heads}"
        moe = (
            (
                f"-E{self.num_experts}k{self.top_k}s{self.shared_experts}f{self.expert_ffn}"
                f"d{self.first_dense_layers}"
            )
            if self.is_moe
            else f"-ffn{self.dense_ffn}"
        )
        mtp = f"-mtp{self.mtp_layers}" if self.mtp_layers else ""
        return f"L{self.layers}-H{self.hidden}-{attn}{moe}{mtp}"

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def to_spec(c: Candidate, study: Study) -> ModelSpec:
    """The ModelSpec of a candidate (SwiGLU FFNs, RMSNorm, untied head unless fixed says so).

    Shared experts have the routed expert width (Pangu Ultra MoE and DeepSeek-V3 do).
    """
    moe = None
    if c.is_moe:
        moe = MoESpec(
            num_experts=c.num_experts,
            top_k=c.top_k,
            expert_ffn=c.expert_ffn,
            shared_experts=c.shared_experts,
            shared_ffn=c.expert_ffn,
            first_dense_layers=c.first_dense_layers,
            dense_ffn=c.dense_ffn,
        )
    mla = None
    head_dim, kv_heads = c.head_dim, c.kv_heads
    if c.attention == "mla":
        mla = MLASpec(
            q_lora_rank=c.q_lora_rank or None,
            kv_lora_rank=c.kv_lora_rank,
            qk_nope_head_dim=c.qk_nope_head_dim,
            qk_rope_head_dim=c.qk_rope_head_dim,
            v_head_dim=c.v_head_dim,
        )
        head_dim, kv_heads = c.qk_nope_head_dim + c.qk_rope_head_dim, c.heads
    return ModelSpec(
        name=c.name,
        family="explore",
        hidden=c.hidden,
        layers=c.layers,
        heads=c.heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        ffn=c.dense_ffn,
        vocab=study.fixed.vocab,
        max_seq=study.fixed.seq,
        tie_embeddings=study.fixed.tie_embeddings,
        moe=moe,
        mla=mla,
        mtp_layers=c.mtp_layers,
    )


@dataclass(frozen=True)
class Counted:
    """A candidate with its parameter counts (raw numbers, MTP excluded)."""

    candidate: Candidate
    total_params: int
    activated_params: int  # per fixed.activated_excludes_embedding
    moe_layers: int

    def values(self) -> dict[str, object]:
        """Names a constraint or a plot axis may use."""
        return {
            **self.candidate.as_dict(),
            "total_params": self.total_params,
            "activated_params": self.activated_params,
            "moe_layers": self.moe_layers,
        }


def _axes(study: Study, attention: str, moe: bool) -> dict[str, list[Any]]:
    space = study.space
    axes: dict[str, list[Any]] = {}
    for name in CANDIDATE_FIELDS:
        values = list(dict.fromkeys(getattr(space, name)))  # dedup, keep order
        if name == "attention":
            values = [attention]
        elif name == "num_experts":
            values = [v for v in values if (v > 0) == moe]
        elif (name in _GQA_ONLY and attention == "mla") or (
            name in _MLA_ONLY and attention == "gqa"
        ):
            values = values[:1]  # irrelevant for this attention type: one placeholder value
        elif name in _MOE_ONLY and not moe:
            values = [0]
        axes[name] = values
    return axes


def enumerate_candidates(study: Study) -> Iterator[Candidate]:
    """Every point of the space, in a fixed order (attention type, dense/MoE, then axes)."""
    for attention in dict.fromkeys(study.space.attention):
        for moe in (False, True):
            axes = _axes(study, attention, moe)
            if not axes["num_experts"]:
                continue
            names = list(axes)
            for combo in itertools.product(*(axes[n] for n in names)):
                yield Candidate(**dict(zip(names, combo, strict=True)))


def structural_problem(c: Candidate) -> str | None:
    """Why a candidate cannot be a model at all (None if it can)."""
    if c.is_moe:
        if c.top_k < 1 or c.top_k > c.num_experts:
            return "top_k outside 1..num_experts"
        if c.expert_ffn < 1:
            return "expert_ffn < 1"
        if c.first_dense_layers >= c.layers:
            return "no MoE layer left after the dense ones"
    if c.attention == "gqa" and (c.kv_heads < 1 or c.heads % c.kv_heads):
        return "kv_heads does not divide heads"
    return None


def count(c: Candidate, study: Study) -> Counted:
    counts = param_counts(to_spec(c, study))
    activated = (
        counts.activated_excl_embedding
        if study.fixed.activated_excludes_embedding
        else counts.activated
    )
    moe_layers = c.layers - c.first_dense_layers if c.is_moe else 0
    return Counted(c, counts.total, activated, moe_layers)


def _within(value: float, target: float | None, tol: float) -> bool:
    return target is None or abs(value / target - 1.0) <= tol


@dataclass
class SpaceSummary:
    enumerated: int = 0
    structural: int = 0
    constraints: int = 0
    budget: int = 0
    kept: int = 0


def candidates_in_budget(study: Study) -> tuple[list[Counted], SpaceSummary]:
    """Enumerate, drop impossible points, apply constraints and the parameter budgets."""
    trees = [check_constraint(text) for text in study.space.constraints]
    fixed = study.fixed
    summary = SpaceSummary()
    kept: list[Counted] = []
    for c in enumerate_candidates(study):
        summary.enumerated += 1
        if structural_problem(c):
            summary.structural += 1
            continue
        counted = count(c, study)
        values = counted.values()
        if not all(evaluate_constraint(t, values) for t in trees):
            summary.constraints += 1
            continue
        if not (
            _within(counted.total_params, fixed.total_params, fixed.total_params_tolerance)
            and _within(
                counted.activated_params, fixed.activated_params, fixed.activated_params_tolerance
            )
        ):
            summary.budget += 1
            continue
        kept.append(counted)
    summary.kept = len(kept)
    return kept, summary
