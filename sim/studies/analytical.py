"""Stage 1 of a study: a cheap analytical estimate of every candidate.

Two checks, both explainable in a line (docs/explore.md derives them):

* **Memory lower bound.** ``xpusim.sim.training.memory.static_lower_bound``: the
  training state (weights, main gradients, optimizer) at the plan space's most
  sharding (largest TP x PP for dense weights, x EP for experts; what ZeRO shards,
  over all devices) plus the runtime reserve, by the same bytes-per-parameter rules
  the simulation applies to each plan. No plan of the space needs less; if even
  that exceeds one device's HBM, the candidate is dropped before any plan is tried.
* **Roofline step bound.** The forward ops of one sequence through one dense and
  one MoE layer (``xpusim.sim.workloads.transformer.layer_forward``, so MLA/GQA, expert
  GEMM sizes and the wave quantisation of small expert GEMMs all count), priced
  by the device's roofline cost model; backward = 2 x forward (the MFU
  convention). Sequences are spread evenly over all devices (an ideal,
  bubble-free data-parallel split). The EP all-to-all of that sequence (dispatch
  and combine, forward and backward) is priced by the network model
  (``xpusim.sim.network.cost_collective``, an all-to-all over devices 0..ep-1), and
  assumed to overlap with compute (Pangu's adaptive pipe overlap), so the step is
  bounded by the larger of the two.

It is a *bound* used to shortlist — pipeline bubbles, TP communication and
recompute only show up in the full simulation.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from xpusim.hwprofiles.spec import System
from xpusim.sim.cost import CachedCostModel, RooflineModel
from xpusim.sim.ir import CollectiveKind, Op, dtype_bytes
from xpusim.sim.models.counting import model_flops_per_token
from xpusim.sim.models.spec import ModelSpec
from xpusim.sim.network.api import cost_collective
from xpusim.sim.parallel import DEFAULT_SELECTIVE, ParallelPlan
from xpusim.sim.studies.space import Counted, to_spec
from xpusim.sim.studies.study_file import Study
from xpusim.sim.training.memory import static_lower_bound
from xpusim.sim.workloads.transformer import (
    Sharding,
    StepShape,
    layer_forward,
    lm_head_forward,
    uniform_moe_load,
)

# What a selective recompute of each module re-runs, by op name: a stage-1 screen, so
# "attn" counts the attention core alone (the lowering also re-runs its projections).
SELECTIVE_OP_MARKERS = {"norm": "norm", "attn": "attention", "core_attn": "attention",
                        "act": "_act", "experts": "experts_", "mlp": "mlp_"}


def selective_markers(modules: tuple[str, ...]) -> tuple[str, ...]:
    """Op-name markers of the ops a selective recompute of ``modules`` repeats."""
    return tuple(sorted({SELECTIVE_OP_MARKERS[m] for m in modules}))


@dataclass(frozen=True)
class Analytical:
    """Stage-1 figures of one candidate (SI units, per step unless named otherwise)."""

    model_flops_per_token: float
    forward_s_per_seq: float  # one sequence, all layers, one device, roofline
    selective_fraction: float  # share of forward time in ops selective recompute redoes
    comm_s_per_seq: float  # EP all-to-all of one sequence, fwd + bwd
    step_time_s: float
    tokens_per_s: float
    mfu: float
    static_memory_lb_bytes: float
    fits: bool

    def as_dict(self) -> dict[str, float | bool]:
        return {
            "analytical_step_time_s": self.step_time_s,
            "analytical_tokens_per_s": self.tokens_per_s,
            "analytical_mfu": self.mfu,
            "static_memory_lb_bytes": self.static_memory_lb_bytes,
            "fits_memory_lb": self.fits,
        }


def _ops_time(items: list, cost: CachedCostModel,
              markers: tuple[str, ...]) -> tuple[float, float]:
    """(all ops, ops a selective recompute repeats) in seconds; comm needs skipped."""
    total = selective = 0.0
    for item in items:
        if isinstance(item, Op):
            t = cost.time(item).time_s
            total += t
            if any(marker in item.name for marker in markers):
                selective += t
    return total, selective


# Per-rank bytes of the representative all-to-all ``ep_bandwidth`` prices: large
# enough to be bandwidth-bound on every profile (latency < 1 % of the time).
EP_PROBE_BYTES = 256 * 2**20


_COLLECTIVE_CACHE: dict[tuple[str, CollectiveKind, tuple[int, ...], float], float] = {}


def a2a_time(system: System, ep: int, nbytes: float) -> float:
    """Seconds of one all-to-all in which each of devices 0..ep-1 sends ``nbytes``
    (``group_a2a_time`` over the first ``ep`` devices)."""
    return group_a2a_time(system, tuple(range(ep)), nbytes)


def group_a2a_time(system: System, group: tuple[int, ...], nbytes: float) -> float:
    """Seconds of one all-to-all in which each device of ``group`` sends ``nbytes``
    (``group_time``)."""
    return group_time(system, CollectiveKind.ALL_TO_ALL, group, nbytes)


def group_time(
    system: System, kind: CollectiveKind, group: tuple[int, ...], nbytes: float
) -> float:
    """Seconds of one ``kind`` collective of ``nbytes`` (the simulation's size convention,
    ``sim.network.cost_collective``) over ``group``, priced by the network model (the
    algorithm and protocol the library would pick, topology, NIC sharing, latencies), so
    where the group sits (one server or several) sets its rate. Cached: a study asks for
    the same few (system, kind, group, bytes) for every candidate."""
    if len(group) <= 1 or nbytes <= 0:
        return 0.0
    key = (_system_key(system), kind, group, nbytes)
    if key not in _COLLECTIVE_CACHE:
        need = max(group) // system.devices_per_node + 1
        sized = system if system.nodes >= need else replace(system, nodes=need)
        _COLLECTIVE_CACHE[key] = cost_collective(sized, kind, group, nbytes).time_s
    return _COLLECTIVE_CACHE[key]


_SYSTEM_KEYS: dict[int, tuple[System, str]] = {}


def _system_key(system: System) -> str:
    """``repr(system)``, the cache key of its collectives (System holds dicts: not hashable
    itself), computed once per System object: the plan search asks for thousands of
    collectives on one system, and the repr of a profile costs more than a cache hit.
    Systems are frozen; the object is kept with its key so its id is not reused."""
    hit = _SYSTEM_KEYS.get(id(system))
    if hit is None or hit[0] is not system:
        hit = _SYSTEM_KEYS[id(system)] = (system, repr(system))
    return hit[1]


def ep_bandwidth(system: System, ep: int) -> float:
    """Bytes/s of its all-to-all traffic that leave one device in an all-to-all of
    ``ep`` peers on devices 0..ep-1 (``group_bandwidth``)."""
    return group_bandwidth(system, tuple(range(ep)))


def group_bandwidth(system: System, group: tuple[int, ...]) -> float:
    """Bytes/s of its all-to-all traffic that leave one device in an all-to-all over
    ``group``: (n-1)/n of a large per-rank buffer over the network model's time."""
    n = len(group)
    t = group_a2a_time(system, group, float(EP_PROBE_BYTES))
    return EP_PROBE_BYTES * (n - 1) / n / t if t > 0 else float("inf")


def base_plan(study: Study) -> ParallelPlan:
    """The plan every plan of the study's space starts from: the fixed batch, sequence
    and dtype and the space's switches; the search sets the degrees, micro-batch and
    recompute policy, and the remaining fields keep ``ParallelPlan``'s defaults."""
    space = study.plans
    return ParallelPlan(
        recompute_modules=tuple(space.recompute_modules or DEFAULT_SELECTIVE),
        gbs=study.fixed.global_batch,
        seq=study.fixed.seq,
        dtype=study.fixed.dtype,
        zero=space.zero,
        tp_extend_ep=space.tp_extend_ep,
        overlap_ep=space.overlap_ep,
        hierarchical_ep=space.hierarchical_ep,
        moe_routing=study.search.moe_routing,
        seed=study.search.seed,
    )


def static_memory_lower_bound(spec: ModelSpec, study: Study, devices: int) -> float:
    """Bytes per device no plan of the study's space goes below (``static_lower_bound``
    at the space's largest TP, PP and EP)."""
    plans = study.plans
    ep = max(plans.ep) if spec.moe else 1
    return static_lower_bound(
        spec, base_plan(study), devices, max(plans.tp), max(plans.pp), ep
    )


def estimate(
    counted: Counted, study: Study, system: System, cost: CachedCostModel | None = None
) -> Analytical:
    """The stage-1 estimate of one candidate on ``system``."""
    spec = to_spec(counted.candidate, study)
    cost = cost or CachedCostModel(RooflineModel(system.device))
    fixed = study.fixed
    dtype = fixed.dtype
    seq = fixed.seq
    shape = StepShape(1, seq, seq, True)
    ep = study.search.analytical_ep or system.devices_per_node
    ep = ep if spec.moe else 1
    load = uniform_moe_load(spec, seq, ep) if spec.moe else None
    slots = spec.layers + spec.mtp_layers
    markers = selective_markers(tuple(study.plans.recompute_modules or DEFAULT_SELECTIVE))
    forward = selective = 0.0
    seen: dict[tuple[bool, int, int], tuple[float, float]] = {}
    for layer in range(slots):
        kind = spec.layer_kind(layer)  # (MoE?, window, chunk)
        moe = kind[0]
        if kind not in seen:
            seen[kind] = _ops_time(
                layer_forward(spec, layer, shape, Sharding(1, ep), dtype, load if moe else None),
                cost, markers,
            )
        forward += seen[kind][0]
        selective += seen[kind][1]
    head, head_sel = _ops_time(lm_head_forward(spec, seq, Sharding(1, 1), dtype), cost, markers)
    forward += head * (1 + spec.mtp_layers)
    selective += head_sel * (1 + spec.mtp_layers)
    comm = 0.0
    if spec.moe and ep > 1:
        moe_layers = sum(1 for i in range(slots) if spec.is_moe_layer(i))
        # dispatch + combine, forward and backward: four all-to-alls of the sequence's
        # top-k copies per MoE layer, priced by the network model
        copies = seq * spec.moe.top_k * spec.hidden * dtype_bytes(dtype)
        comm = moe_layers * 4 * a2a_time(system, ep, float(copies))
    devices = system.num_devices
    seqs_per_device = fixed.global_batch / devices
    step = seqs_per_device * max(3.0 * forward, comm)
    mfpt = model_flops_per_token(spec, seq)
    tokens_per_s = fixed.tokens_per_step / step
    peak = system.device.peak_for("matrix", dtype)
    mfu = mfpt * tokens_per_s / (devices * peak)
    lb = static_memory_lower_bound(spec, study, devices)
    return Analytical(
        mfpt,
        forward,
        selective / forward if forward else 0.0,
        comm,
        step,
        tokens_per_s,
        mfu,
        lb,
        lb <= system.device.hbm_capacity,
    )


def rank_value(metric: str, tokens_per_s: float, mfu: float, token_budget: float) -> float:
    """Higher is better for every metric (time_to_tokens is negated seconds)."""
    if metric == "tokens_per_s":
        return tokens_per_s
    if metric == "mfu":
        return mfu
    return -token_budget / tokens_per_s if tokens_per_s > 0 else float("-inf")
