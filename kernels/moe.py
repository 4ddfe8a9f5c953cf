"""A Mixture-of-Experts FFN layer in plain PyTorch: router, dispatch, grouped experts, combine.

What ``MoELayer.forward`` runs, step by step (``xpusim.sim.workloads.moe.describe_moe`` lists
the same steps as IR ops):

1. **Router**: ``logits = x @ W_gate^T`` (one GEMM, tokens x hidden x experts), scores
   by softmax (Mixtral, Qwen, DeepSeek-V2) or sigmoid (DeepSeek-V3), in fp32.
2. **Top-k**, optionally group-limited (DeepSeek-V2/V3 "n_group / topk_group"): the
   experts are split into ``n_group`` equal groups, each token keeps its ``topk_group``
   best groups and picks its top-k experts among them. The group score is the
   best expert score in the group for softmax scoring (DeepSeek-V2
   ``group_limited_greedy``) and the sum of the two best for sigmoid scoring
   (DeepSeek-V3 ``noaux_tc``). The routing weights are the selected scores, divided by
   their sum when ``norm_topk_prob``.
3. **Dispatch**: the token x slot assignments are sorted by expert id (a stable sort,
   so within an expert tokens stay in order), and the token rows are gathered into
   that order: every expert's tokens form one contiguous slice.
4. **Capacity** (optional): with ``capacity_factor`` set, each expert keeps at most
   ``ceil(cf * tokens * top_k / experts)`` assignments, the first ones in token order;
   the rest are dropped (they contribute zero). ``None`` is dropless.
5. **Grouped experts**: one SwiGLU FFN per expert over its slice,
   ``down(silu(gate(x)) * up(x))``: three GEMMs per expert that received tokens.
6. **Combine**: each expert output row is scaled by its routing weight and summed back
   into its token's row (``index_add_``).
7. **Shared experts** (always on) run on every token; ``shared_experts`` experts of
   ``shared_ffn`` each are one SwiGLU of width ``shared_experts * shared_ffn`` (as
   DeepSeek implements them), added to the routed output.

``ep_forward`` runs the same layer expert-parallel over ``torch.distributed``: each rank
owns ``num_experts / world`` consecutive experts and its own slice of tokens; the rows go
to their expert's rank with ``all_to_all_single`` (gloo supports it, uneven splits
included) and come back the same way. Its result equals the single-process layer's on
the concatenated tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from xpusim.sim.ir import RankGraph
from xpusim.sim.workloads.moe import describe_moe

SCORINGS = ("softmax", "sigmoid")


@dataclass(frozen=True)
class RoutingStats:
    """What the router did to one batch.

    ``tokens_per_expert`` counts routed (token, slot) assignments before capacity;
    ``kept_per_expert`` after it; ``dropped`` is their difference summed; ``capacity``
    is the per-expert limit (None when dropless).
    """

    tokens_per_expert: tuple[int, ...]
    kept_per_expert: tuple[int, ...]
    dropped: int
    capacity: int | None

    @classmethod
    def of(
        cls, counts: torch.Tensor, kept_counts: torch.Tensor, capacity: int | None
    ) -> RoutingStats:
        return cls(
            tokens_per_expert=tuple(counts.tolist()),
            kept_per_expert=tuple(kept_counts.tolist()),
            dropped=int((counts - kept_counts).sum()),
            capacity=capacity,
        )


@dataclass(frozen=True)
class Routing:
    """Top-k choice of every token: expert ids and weights, both tokens x top_k."""

    experts: torch.Tensor
    weights: torch.Tensor

    def sorted_by_expert(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The dispatch order: a stable sort of the flattened (token, slot) assignments by
        expert id. Returns (expert ids per token-slot unsorted, and sorted: expert ids,
        token index, weight)."""
        top_k = self.experts.shape[-1]
        flat_expert = self.experts.reshape(-1)
        order = torch.sort(flat_expert, stable=True).indices
        return flat_expert, flat_expert[order], order // top_k, self.weights.reshape(-1)[order]


def expert_capacity(capacity_factor: float, tokens: int, top_k: int, num_experts: int) -> int:
    """Per-expert limit: ceil(cf * tokens * top_k / experts) (GShard/Switch convention)."""
    return math.ceil(capacity_factor * tokens * top_k / num_experts)


class MoELayer(nn.Module):
    """Routed SwiGLU experts with top-k routing, optional shared experts and capacity.

    Parameters: ``gate`` (router, experts x hidden, no bias), stacked expert weights
    ``w_gate``/``w_up`` (experts x expert_ffn x hidden) and ``w_down`` (experts x hidden x
    expert_ffn), and the shared expert ``shared_gate``/``shared_up``/``shared_down``
    linears when ``shared_experts > 0``.
    """

    def __init__(
        self,
        hidden: int,
        expert_ffn: int,
        num_experts: int,
        top_k: int,
        shared_experts: int = 0,
        shared_ffn: int | None = None,
        scoring: str = "softmax",
        n_group: int = 1,
        topk_group: int = 1,
        norm_topk_prob: bool = True,
        capacity_factor: float | None = None,
        dtype: torch.dtype = torch.float32,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must be in 1..num_experts={num_experts}, got {top_k}")
        if scoring not in SCORINGS:
            raise ValueError(f"scoring must be one of {SCORINGS}, got '{scoring}'")
        if n_group < 1 or num_experts % n_group:
            raise ValueError(f"n_group={n_group} must divide num_experts={num_experts}")
        if not 1 <= topk_group <= n_group:
            raise ValueError(f"topk_group must be in 1..n_group={n_group}, got {topk_group}")
        if top_k > topk_group * (num_experts // n_group):
            raise ValueError(
                f"top_k={top_k} exceeds the {topk_group * (num_experts // n_group)} experts "
                f"in the topk_group={topk_group} selected groups"
            )
        if capacity_factor is not None and capacity_factor <= 0:
            raise ValueError(
                f"capacity_factor must be > 0 or None (dropless), got {capacity_factor}"
            )
        self.hidden = hidden
        self.expert_ffn = expert_ffn
        self.num_experts = num_experts
        self.top_k = top_k
        self.scoring = scoring
        self.n_group = n_group
        self.topk_group = topk_group
        self.norm_topk_prob = norm_topk_prob
        self.capacity_factor = capacity_factor
        self.shared_experts = shared_experts
        self.shared_ffn = (shared_ffn or expert_ffn) if shared_experts else 0

        gen = torch.Generator().manual_seed(seed) if seed is not None else None

        def init(*shape: int, fan_in: int) -> nn.Parameter:
            # Uniform(+-1/sqrt(fan_in)), nn.Linear's default scale, from an optional seed.
            bound = 1.0 / math.sqrt(fan_in)
            w = (torch.rand(*shape, generator=gen, dtype=torch.float64) * 2 - 1) * bound
            return nn.Parameter(w.to(dtype))

        self.gate = nn.Linear(hidden, num_experts, bias=False, dtype=dtype)
        self.gate.weight = init(num_experts, hidden, fan_in=hidden)
        self.w_gate = init(num_experts, expert_ffn, hidden, fan_in=hidden)
        self.w_up = init(num_experts, expert_ffn, hidden, fan_in=hidden)
        self.w_down = init(num_experts, hidden, expert_ffn, fan_in=expert_ffn)
        if shared_experts:
            width = shared_experts * self.shared_ffn
            self.shared_gate = nn.Linear(hidden, width, bias=False, dtype=dtype)
            self.shared_up = nn.Linear(hidden, width, bias=False, dtype=dtype)
            self.shared_down = nn.Linear(width, hidden, bias=False, dtype=dtype)
            self.shared_gate.weight = init(width, hidden, fan_in=hidden)
            self.shared_up.weight = init(width, hidden, fan_in=hidden)
            self.shared_down.weight = init(hidden, width, fan_in=width)

    # --- routing -------------------------------------------------------------------

    def route(self, x: torch.Tensor) -> Routing:
        """Router GEMM, scores, (group-limited) top-k and normalised weights for tokens x hidden."""
        logits = self.gate(x).float()
        scores = logits.softmax(dim=-1) if self.scoring == "softmax" else logits.sigmoid()
        choice = scores
        if self.n_group > 1:
            grouped = scores.view(x.shape[0], self.n_group, -1)
            if self.scoring == "sigmoid":
                group_score = grouped.topk(min(2, grouped.shape[-1]), dim=-1).values.sum(-1)
            else:
                group_score = grouped.max(dim=-1).values
            keep = group_score.topk(self.topk_group, dim=-1).indices
            group_mask = torch.zeros_like(group_score, dtype=torch.bool).scatter_(1, keep, True)
            expert_mask = group_mask.unsqueeze(-1).expand_as(grouped).reshape_as(scores)
            choice = scores.masked_fill(~expert_mask, float("-inf"))
        experts = choice.topk(self.top_k, dim=-1).indices
        weights = scores.gather(1, experts)
        if self.norm_topk_prob and self.top_k > 1:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return Routing(experts, weights.to(x.dtype))

    # --- experts -------------------------------------------------------------------

    def expert_ffn_rows(
        self, rows: torch.Tensor, counts: list[int], first_expert: int = 0
    ) -> torch.Tensor:
        """SwiGLU of consecutive experts over contiguous row slices (``counts[i]`` rows each)."""
        out = rows.new_empty(rows.shape[0], self.hidden)
        start = 0
        for i, n in enumerate(counts):
            if n == 0:
                continue  # an expert without tokens runs no GEMM
            e = first_expert + i
            xs = rows[start : start + n]
            h = F.silu(xs @ self.w_gate[e].t()) * (xs @ self.w_up[e].t())
            # Without autograd the down projection writes straight into the expert's rows
            # of ``out`` (a contiguous row slice), as a grouped GEMM would: no extra copy.
            # out= is not differentiable, so with autograd on the slice is assigned.
            down = self.w_down[e].t()
            if torch.is_grad_enabled():
                out[start : start + n] = h @ down
            else:
                torch.mm(h, down, out=out[start : start + n])
            start += n
        return out

    def shared_ffn_rows(self, x: torch.Tensor) -> torch.Tensor:
        return self.shared_down(F.silu(self.shared_gate(x)) * self.shared_up(x))

    def combine(
        self, x: torch.Tensor, token: torch.Tensor, rows: torch.Tensor, weight: torch.Tensor
    ) -> torch.Tensor:
        """The unpermute: expert output ``rows`` scaled by their routing ``weight`` and
        added into their ``token`` rows, plus the shared experts on every token."""
        out = torch.zeros_like(x)
        out.index_add_(0, token, rows * weight.unsqueeze(-1))
        if self.shared_experts:
            out = out + self.shared_ffn_rows(x)
        return out

    def describe(
        self,
        tokens: float,
        dtype: str = "fp32",
        tokens_per_expert: list[float] | tuple[float, ...] | None = None,
        ep: int = 1,
        rank: int = 0,
    ) -> RankGraph:
        """This layer's forward as IR (``xpusim.sim.workloads.moe.describe_moe``) for ``tokens`` tokens.

        Pass ``RoutingStats.kept_per_expert`` as ``tokens_per_expert`` to describe one
        measured batch exactly; the default is balanced routing.
        """
        return describe_moe(
            tokens,
            self.hidden,
            self.expert_ffn,
            self.num_experts,
            self.top_k,
            self.shared_experts,
            self.shared_ffn,
            dtype,
            tokens_per_expert,
            ep,
            rank,
            self.scoring,
        )

    # --- forward -------------------------------------------------------------------

    def forward(
        self, x: torch.Tensor, return_stats: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, RoutingStats]:
        shape = x.shape
        if shape[-1] != self.hidden:
            raise ValueError(
                f"input's last dimension must be hidden={self.hidden}, got {shape[-1]}"
            )
        x = x.reshape(-1, self.hidden)
        tokens = x.shape[0]
        routing = self.route(x)

        flat_expert, sorted_expert, sorted_token, sorted_weight = routing.sorted_by_expert()
        counts = torch.bincount(flat_expert, minlength=self.num_experts)

        capacity = None
        kept_counts = counts
        if self.capacity_factor is not None:
            capacity = expert_capacity(self.capacity_factor, tokens, self.top_k, self.num_experts)
            keep = _position_in_expert(sorted_expert, counts) < capacity
            kept_counts = torch.bincount(sorted_expert[keep], minlength=self.num_experts)
            sorted_token, sorted_weight = sorted_token[keep], sorted_weight[keep]

        rows = x[sorted_token]  # the permute: a gather of token rows
        expert_out = self.expert_ffn_rows(rows, kept_counts.tolist())

        out = self.combine(x, sorted_token, expert_out, sorted_weight).reshape(shape)
        if not return_stats:
            return out
        return out, RoutingStats.of(counts, kept_counts, capacity)


def _position_in_expert(sorted_expert: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Index of each sorted assignment within its expert's slice (0 for the first)."""
    starts = torch.cumsum(counts, 0) - counts
    return torch.arange(sorted_expert.numel(), device=sorted_expert.device) - starts[sorted_expert]


# --- expert parallelism ------------------------------------------------------------------


def _all_to_all(
    tensor: torch.Tensor,
    send_counts: list[int],
    recv_counts: list[int],
    group: dist.ProcessGroup | None,
) -> torch.Tensor:
    out = tensor.new_empty((sum(recv_counts), *tensor.shape[1:]))
    dist.all_to_all_single(out, tensor.contiguous(), recv_counts, send_counts, group=group)
    return out


def ep_forward(
    layer: MoELayer,
    x_local: torch.Tensor,
    group: dist.ProcessGroup | None = None,
    return_stats: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, RoutingStats]:
    """Expert-parallel forward of ``layer`` on this rank's tokens (tokens x hidden).

    Every rank holds the same ``layer`` (router and shared experts replicated) but
    computes only experts ``[rank * E/W, (rank+1) * E/W)``. Steps: route locally; sort
    assignments by expert (hence by owner rank); all-to-all the per-rank counts, then
    the token rows and their expert ids; run the local experts; all-to-all the
    results back; combine locally. With a capacity factor the owner applies the global
    capacity ``ceil(cf * T * k / E)`` over all ranks' tokens in global token order
    (rank-major, as if the ranks' tokens were concatenated), so dropping matches the
    single-process layer; dropped rows still travel and come back as zeros.

    ``return_stats`` gives this rank's view: counts for its own experts only.
    """
    world = dist.get_world_size(group)
    rank = dist.get_rank(group)
    if layer.num_experts % world:
        raise ValueError(f"num_experts={layer.num_experts} is not divisible by EP size {world}")
    per_rank = layer.num_experts // world
    first = rank * per_rank
    x = x_local.reshape(-1, layer.hidden)

    routing = layer.route(x)
    _, sorted_expert, sorted_token, sorted_weight = routing.sorted_by_expert()
    send_counts = torch.bincount(sorted_expert // per_rank, minlength=world)

    # 1. counts, so every rank can size its receive buffers.
    recv_counts_t = torch.empty_like(send_counts)
    dist.all_to_all_single(recv_counts_t, send_counts, group=group)
    send, recv = send_counts.tolist(), recv_counts_t.tolist()
    # 2. token rows and their expert ids (rows arrive grouped by source rank).
    rows = _all_to_all(x[sorted_token], send, recv, group)
    row_expert = _all_to_all(sorted_expert, send, recv, group) - first

    # Group received rows by local expert; the stable sort keeps source-rank-major
    # order, which is global token order when ranks hold consecutive token slices.
    local_order = torch.sort(row_expert, stable=True).indices
    local_sorted = row_expert[local_order]
    counts = torch.bincount(local_sorted, minlength=per_rank)
    keep = torch.ones_like(local_sorted, dtype=torch.bool)
    capacity = None
    if layer.capacity_factor is not None:
        total_tokens = torch.tensor([x.shape[0]], device=x.device)
        dist.all_reduce(total_tokens, group=group)
        capacity = expert_capacity(
            layer.capacity_factor, int(total_tokens), layer.top_k, layer.num_experts
        )
        keep = _position_in_expert(local_sorted, counts) < capacity
    kept_counts = torch.bincount(local_sorted[keep], minlength=per_rank)

    computed = rows.new_zeros(rows.shape[0], layer.hidden)
    kept_rows = local_order[keep]
    computed[kept_rows] = layer.expert_ffn_rows(rows[kept_rows], kept_counts.tolist(), first)
    # 3. results back to the ranks that own the tokens, in the order they were sent.
    returned = _all_to_all(computed, recv, send, group)

    out = layer.combine(x, sorted_token, returned, sorted_weight).reshape(x_local.shape)
    if not return_stats:
        return out
    return out, RoutingStats.of(counts, kept_counts, capacity)
