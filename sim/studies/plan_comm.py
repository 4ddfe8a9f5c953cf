"""The data-parallel and context-parallel terms of the plan estimate (``plans.plan_estimate``).

Both are priced by the network model the simulation uses (``analytical.group_time``:
``sim.network.cost_collective``) on the groups the simulation builds for rank 0
(``sim.training.chunks.rank_groups`` over ``sim.layout.Layout``: the dense-DP group
over CP x DP, the expert-DP group in the MoE layers' layout, which ``moe_fold`` moves,
and the CP group), and exposed by the rules of the simulation's lowering
(``sim.training.lowering``):

* **CP.** Each attention core gathers the K/V of the other CP ranks by an all-gather
  over the CP group (``sim.training.layers._cp_attention``: Megatron's zig-zag split; ring
  attention moves the same bytes), its backward reduce-scatters the gradient
  (``backward.py``), and a recompute that re-runs the attention core gathers again
  (``backward.recomputed``). The lowering puts CP collectives on the compute stream
  (the next op needs them at once), so all of it is exposed.
* **DP.** After a chunk's last backward its gradients are all-reduced (ZeRO 0) or
  reduce-scattered (ZeRO >= 1) over the dense-DP and expert-DP groups on the DP comm
  stream (``overlap_dp``), and the optimizer waits for all of them; with ZeRO 1/2 the
  parameter all-gather of the previous step's optimizer runs at the start of the step
  and a chunk's first forward waits for its own. On a Megatron-Core stack the first
  stage's first chunk is cut into buckets (``sim.training.dp_buckets``): its last
  backward launches each bucket's reduction as it passes the bucket's layers, and its
  first forward waits for each bucket's gather in turn. The first stage ends the step
  (1F1B's cooldown ends there) and starts it, so what it launches last and needs first
  shows: at least the last bucket's reduction and the first bucket's gather (a whole
  chunk's where nothing is bucketed). That lower bound is the estimate's term. The
  simulation also shows the queue behind it where the reductions outrun the backward
  (docs/explore.md measures both), but pricing that needs the backward's length, and
  the estimate's roofline compute understates it (on the small study's tp1 pp1 ep4
  plan the queue model gives 0.18 s exposed against the simulation's 0.05 s), so the
  term stays a bound like the rest of the estimate. Without ``overlap_dp`` all of it
  sits on the compute stream.

Where the estimate simplifies: every stage holds 1/pp of the weights (dense over TP,
experts over TP x EP, ``static_lower_bound``'s sharding) and every chunk 1/vpp of a
stage's; a bucket is ``dp_buckets.bucket_size`` parameters of each class (Megatron cuts
at the parameter that fills it, the simulation after the slot that does), priced as that
share of the chunk's collective. ZeRO-3 (per-unit gathers and reduce-scatters inside the
schedule) is left out.
"""

from __future__ import annotations

from xpusim.hwprofiles.spec import System
from xpusim.sim.ir import AttentionShape, CollectiveKind, dtype_bytes
from xpusim.sim.models.spec import ModelSpec
from xpusim.sim.parallel import Layout, ParallelPlan, microbatches
from xpusim.sim.studies.analytical import group_time
from xpusim.sim.training.chunks import rank_groups
from xpusim.sim.training.dp_buckets import bucket_size
from xpusim.sim.training.items import act_dtype
from xpusim.sim.training.lowprec import param_gather_bytes
from xpusim.sim.training.memory.analytical import model_weight_params
from xpusim.sim.training.units import MAIN_GRAD_FRAMEWORKS
from xpusim.sim.workloads.transformer import Sharding, StepShape, attention_core_op


def chunk_params(spec: ModelSpec, plan: ParallelPlan) -> tuple[float, float]:
    """(dense, expert) parameters of one model chunk on one device: the model's weights
    (``model_weight_params``) over TP x PP x VPP, experts also over EP."""
    dense, expert = model_weight_params(spec)
    chunks = plan.pp * plan.vpp
    return dense / (plan.tp * chunks), expert / (plan.tp * plan.ep * chunks)


def _per_chunk(system: System, plan: ParallelPlan, kind: CollectiveKind,
               params: tuple[float, float], bytes_per_param: float,
               groups: dict[str, tuple[int, ...]]) -> float:
    """Seconds of one chunk's ``kind`` collectives: dense over the dense-DP group, experts
    over the expert-DP group (``lowering._dp_collectives``)."""
    dense, expert = params
    return (group_time(system, kind, groups["dp_dense"], dense * bytes_per_param)
            + group_time(system, kind, groups["dp_expert"], expert * bytes_per_param))


def dp_comm_estimate(spec: ModelSpec, system: System, plan: ParallelPlan) -> float:
    """Exposed DP seconds per step: the gradient reduction launched after the first
    stage's last backward (its last bucket on a bucketed Megatron-Core stack, else the
    whole chunk's) plus its first forward's wait for the parameter all-gather (the first
    bucket, else the whole chunk's); all of it without ``overlap_dp``."""
    if plan.zero == 3:
        return 0.0  # per-unit ZeRO-3 traffic: not in the estimate (module docstring)
    groups = rank_groups(plan, Layout(plan), 0)
    params = chunk_params(spec, plan)
    reduce = CollectiveKind.ALL_REDUCE if plan.zero == 0 else CollectiveKind.REDUCE_SCATTER
    grad_s = _per_chunk(system, plan, reduce, params, dtype_bytes(plan.grad_reduce_dtype), groups)
    gather_s = 0.0
    if plan.zero in (1, 2):
        gather_s = _per_chunk(system, plan, CollectiveKind.ALL_GATHER, params,
                              param_gather_bytes(plan.dtype), groups)
    if not plan.overlap_dp:  # compute stream: all of it in line
        return plan.vpp * (grad_s + gather_s)
    # The share of chunk 0's traffic in one bucket (both classes are cut at the same
    # size; one bucket when not bucketed), priced as that share of the chunk's time.
    share = 1.0
    if plan.framework in MAIN_GRAD_FRAMEWORKS and sum(params) > 0:
        share = min(1.0, bucket_size(plan) / sum(params))
    return share * (grad_s + gather_s)


def cp_comm_estimate(spec: ModelSpec, system: System, plan: ParallelPlan) -> float:
    """Exposed CP seconds per step on one device: per micro-batch and attention layer of
    a stage, the K/V all-gather (forward, and again where recompute re-runs the attention
    core) and its reduce-scatter (backward) over the CP group, all on the compute stream.
    The bytes are the attention core's K/V over the whole sequence (``_cp_attention_op``)."""
    if plan.cp == 1:
        return 0.0
    core = attention_core_op(spec, StepShape(plan.mbs, plan.seq, plan.seq, True),
                             Sharding(plan.tp, 1), act_dtype(plan))
    shape = core.shape
    assert isinstance(shape, AttentionShape)
    v_dim = spec.mla.v_head_dim if spec.mla else spec.head_dim
    kv_bytes = (shape.batch * plan.seq * shape.kv_heads * (shape.head_dim + v_dim)
                * dtype_bytes(act_dtype(plan)))
    group = rank_groups(plan, Layout(plan), 0)["cp"]
    gather = group_time(system, CollectiveKind.ALL_GATHER, group, kv_bytes)
    scatter = group_time(system, CollectiveKind.REDUCE_SCATTER, group, kv_bytes)
    modules = set(plan.recompute_modules)
    regather = plan.recompute == "full" or (
        plan.recompute == "selective" and bool(modules & {"attn", "core_attn"}))
    per_layer = gather * (2 if regather else 1) + scatter
    layers_per_stage = (spec.layers + spec.mtp_layers) / plan.pp
    return microbatches(plan) * layers_per_stage * per_layer
