"""The study file: a TOML description of a design-space exploration.

A study fixes the hardware and the training job (tokens per step, sequence length,
dtype), gives ranges of model hyperparameters, budgets for total and activated
parameters, constraints that prune the space, the parallel plans the search may
use, and how to rank. ``load_study(path)`` validates it with pydantic; every
error names the offending key (``space.hidden``, ``fixed.seq``, ...) and the CLI
turns it into exit code 2. docs/explore.md documents every key.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from xpusim.sim import safe_eval
from xpusim.sim.errors import InputError
from xpusim.sim.parallel import RECOMPUTE_MODULES, RECOMPUTE_POLICIES
from xpusim.sim.tomlfile import read_toml

RANK_METRICS = ("tokens_per_s", "mfu", "time_to_tokens")
ATTENTION_TYPES = ("gqa", "mla")
# Hyperparameters a candidate model has; constraints and heat-map axes may name them.
# "total_params" / "activated_params" are the counted parameters (billions are not used:
# raw counts), so a constraint like "activated_params < 40e9" works too.
CANDIDATE_FIELDS = (
    "layers",
    "hidden",
    "attention",
    "heads",
    "kv_heads",
    "head_dim",
    "q_lora_rank",
    "kv_lora_rank",
    "qk_nope_head_dim",
    "qk_rope_head_dim",
    "v_head_dim",
    "dense_ffn",
    "num_experts",
    "top_k",
    "shared_experts",
    "expert_ffn",
    "first_dense_layers",
    "mtp_layers",
)
DERIVED_FIELDS = ("total_params", "activated_params", "moe_layers")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Hardware(_Strict):
    system: str  # profile name (hwprofiles/systems) or path
    nodes: int = Field(ge=1)


class Fixed(_Strict):
    """Quantities every candidate shares."""

    seq: int = Field(4096, ge=1)
    global_batch: int = Field(ge=1)  # sequences per optimizer step (gbs)
    dtype: str = "bf16"
    vocab: int = Field(ge=1)
    total_params: float | None = Field(None, gt=0)  # target total parameters (MTP excluded)
    total_params_tolerance: float = Field(0.1, ge=0)  # relative: |n/target - 1| <= tol
    activated_params: float | None = Field(None, gt=0)  # target per-token activated params
    activated_params_tolerance: float = Field(0.1, ge=0)
    # DeepSeek/Pangu quote activated parameters without the input embedding (39B, 37B).
    activated_excludes_embedding: bool = True
    tie_embeddings: bool = False

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch * self.seq


class Space(_Strict):
    """Ranges of hyperparameters; the candidate set is their Cartesian product.

    GQA-only axes (kv_heads, head_dim) are ignored for MLA candidates and the MLA
    axes for GQA ones, so they do not multiply the space for the other type.
    ``num_experts = [0]`` gives dense models (then only ``dense_ffn`` matters).
    """

    layers: list[int] = Field(min_length=1)
    hidden: list[int] = Field(min_length=1)
    attention: list[Literal["gqa", "mla"]] = ["gqa"]
    heads: list[int] = Field(min_length=1)
    kv_heads: list[int] = [8]
    head_dim: list[int] = [128]
    q_lora_rank: list[int] = [1536]
    kv_lora_rank: list[int] = [512]
    qk_nope_head_dim: list[int] = [128]
    qk_rope_head_dim: list[int] = [64]
    v_head_dim: list[int] = [128]
    dense_ffn: list[int] = Field(min_length=1)
    num_experts: list[int] = [0]
    top_k: list[int] = [1]
    shared_experts: list[int] = [0]
    expert_ffn: list[int] = [0]
    first_dense_layers: list[int] = [0]
    mtp_layers: list[int] = [0]
    # Python-like boolean expressions over CANDIDATE_FIELDS and DERIVED_FIELDS, e.g.
    # "hidden % heads == 0" or "top_k <= num_experts"; a candidate must satisfy all.
    constraints: list[str] = []

    @model_validator(mode="after")
    def _check(self) -> Space:
        for name in CANDIDATE_FIELDS:
            values = getattr(self, name)
            if not values:
                raise ValueError(f"space.{name} is empty; give at least one value")
            if name != "attention" and any(v < 0 for v in values):
                raise ValueError(f"space.{name} has a negative value {values}")
        for name in ("layers", "hidden", "heads", "dense_ffn"):
            if any(v < 1 for v in getattr(self, name)):
                raise ValueError(f"space.{name} values must be >= 1")
        for text in self.constraints:
            check_constraint(text)
        return self


class PlanSpace(_Strict):
    """Parallel plans the automatic plan search may try (Megatron-style degrees)."""

    tp: list[int] = [1, 2, 4, 8]
    pp: list[int] = [1, 2, 4, 8, 16]
    vpp: list[int] = [1, 2]
    ep: list[int] = [1, 2, 4, 8]
    cp: list[int] = [1]
    mbs: list[int] = [1, 2]
    recompute: list[str] = ["none", "selective", "full"]
    # Modules a "selective" plan recomputes (train's --recompute-modules); None: train's
    # default, Megatron's attention core.
    recompute_modules: list[str] | None = None
    sequence_parallel: bool = True
    zero: int = 1
    tp_extend_ep: bool = True
    overlap_ep: bool = True
    hierarchical_ep: bool = True
    # MoE parallel folding (train's --moe-fold; Megatron-Core >= 0.10, arXiv 2504.14960):
    # [false, true] also tries each MoE plan with its expert groups formed over
    # TP x CP x DP. Default [false]: the plans of studies written before the axis.
    moe_fold: list[bool] = [False]

    @model_validator(mode="after")
    def _check(self) -> PlanSpace:
        for name in ("tp", "pp", "vpp", "ep", "cp", "mbs"):
            values = getattr(self, name)
            if not values or any(v < 1 for v in values):
                raise ValueError(f"plans.{name} must list positive integers, got {values}")
        bad = [r for r in self.recompute if r not in RECOMPUTE_POLICIES]
        if bad or not self.recompute:
            raise ValueError(
                f"plans.recompute {bad or '[]'} invalid; use {list(RECOMPUTE_POLICIES)}"
            )
        if not self.moe_fold:
            raise ValueError("plans.moe_fold is empty; give [false], [true] or [false, true]")
        modules = self.recompute_modules
        if modules is not None and (not modules or any(m not in RECOMPUTE_MODULES for m in modules)):
            raise ValueError(
                f"plans.recompute_modules {modules} invalid; use names from {list(RECOMPUTE_MODULES)}"
            )
        return self


class Search(_Strict):
    shortlist: int = Field(30, ge=1)  # models that get the full simulation
    plans_per_model: int = Field(2, ge=1)  # best analytical plans simulated per model
    rank_by: Literal["tokens_per_s", "mfu", "time_to_tokens"] = "tokens_per_s"
    token_budget: float = Field(1e12, gt=0)  # for rank_by = "time_to_tokens"
    seed: int = 0  # MoE routing draws in the simulation
    moe_routing: str = "uniform"
    # EP size used by the analytical stage to size expert GEMMs (tokens per expert);
    # 0 means the number of devices in one server.
    analytical_ep: int = Field(0, ge=0)
    # "Domain expertise" picks (Pangu Pro MoE's second stage): expressions in the
    # constraint language; every candidate matching one is simulated too, on top of
    # the analytical top ``shortlist``.
    expert_picks: list[str] = []

    @model_validator(mode="after")
    def _check(self) -> Search:
        for text in self.expert_picks:
            check_constraint(text, "search.expert_picks")
        return self


class Plots(_Strict):
    heatmap_x: str = "layers"
    heatmap_y: str = "hidden"

    @model_validator(mode="after")
    def _check(self) -> Plots:
        for key in ("heatmap_x", "heatmap_y"):
            value = getattr(self, key)
            if value not in CANDIDATE_FIELDS + DERIVED_FIELDS:
                raise ValueError(
                    f"plots.{key} = '{value}' is not a candidate field; use one of "
                    f"{', '.join(CANDIDATE_FIELDS + DERIVED_FIELDS)}"
                )
        return self


class Study(_Strict):
    name: str
    description: str = ""
    hardware: Hardware
    fixed: Fixed
    space: Space
    plans: PlanSpace = PlanSpace()
    search: Search = Search()
    plots: Plots = Plots()


_ALLOWED_NODES = (
    ast.Expression,
    ast.BoolOp,
    ast.And,
    ast.Or,
    ast.UnaryOp,
    ast.Not,
    ast.USub,
    ast.BinOp,
    ast.Add,
    ast.Sub,
    ast.Mult,
    ast.Div,
    ast.FloorDiv,
    ast.Mod,
    ast.Pow,
    ast.Compare,
    ast.Eq,
    ast.NotEq,
    ast.Lt,
    ast.LtE,
    ast.Gt,
    ast.GtE,
    ast.Name,
    ast.Load,
    ast.Constant,
)


def check_constraint(text: str, key: str = "space.constraints") -> ast.Expression:
    """Parse a constraint; only arithmetic, comparisons, and/or/not over known names."""
    try:
        tree = safe_eval.parse(text)  # length-capped, no recursion crash
    except safe_eval.EvalError as exc:
        raise ValueError(f"{key}: '{text[:80]}' is {exc}") from None
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED_NODES):
            raise ValueError(
                f"{key}: '{text}' uses {type(node).__name__}; only "
                "arithmetic, comparisons and and/or/not are allowed"
            )
        if isinstance(node, ast.Name) and node.id not in CANDIDATE_FIELDS + DERIVED_FIELDS:
            raise ValueError(
                f"{key}: '{text}' names unknown field '{node.id}'; "
                f"known: {', '.join(CANDIDATE_FIELDS + DERIVED_FIELDS)}"
            )
        if isinstance(node, ast.Constant) and not isinstance(node.value, int | float | str):
            raise ValueError(f"{key}: '{text}' has a non-numeric constant")
    return tree


def evaluate_constraint(tree: ast.Expression, values: dict[str, object]) -> bool:
    """Evaluate a checked constraint with ``values`` as the only names, by the bounded
    walker of sim/safe_eval.py (floats, strings only in ==/!=): no expression can
    allocate or compute without bound. A division by zero makes it false; an
    out-of-bounds result (``hidden ** 999999999``) is an InputError."""
    try:
        return bool(safe_eval.evaluate(tree, values))
    except ZeroDivisionError:
        return False
    except safe_eval.EvalError as exc:
        raise InputError(
            f"constraint '{ast.unparse(tree)[:80]}': {exc}; keep its arithmetic on numbers "
            "within +-1e100"
        ) from None


def _location(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc if not isinstance(p, int)) or "(top level)"


def parse_study(data: dict[str, Any], source: str = "study") -> Study:
    """Validate a study mapping; errors name the key and say what is wrong."""
    try:
        return Study.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{_location(err['loc'])}: {msg}")
        raise InputError(f"{source}: " + "; ".join(problems)) from None


def load_study(path: str | Path) -> Study:
    return parse_study(read_toml(path, "study file"), str(path))
