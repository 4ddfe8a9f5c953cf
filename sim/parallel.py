"""Parallel plans for training: degrees, batch, recompute, overlap switches.

A ``ParallelPlan`` is plain data (what the user chose). ``validate_plan`` checks it
against a model and a system and raises ``InputError`` naming the field and the fix.
``Layout`` (``sim.layout``, re-exported here) places global ranks on the topology:
the order string lists dimensions innermost first (Megatron's default
``tp-cp-ep-dp-pp``: TP inside a node, PP outermost). By default EP is carved out of DP
(MindSpeed; Megatron-Core before 0.10): the data-parallel dimension of size ``dp`` is
split into ``ep`` (inner) x ``dp/ep`` (outer, the expert-data-parallel replicas). With
``moe_fold`` the MoE layers get their own layout over the same ranks (Megatron-Core >=
0.10 "MoE parallel folding", arXiv 2504.14960): ``Layout(plan, experts=True)``. World
size = tp x cp x dp x pp.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

from xpusim.sim.errors import InputError
from xpusim.sim.ir import BYTES_PER_DTYPE, is_low_precision
from xpusim.sim.layout import (  # noqa: F401  (Coord, Layout re-exported)
    DEFAULT_ORDER,
    Coord,
    Layout,
    expert_dims,
    parse_order,
)
from xpusim.sim.models.spec import ModelSpec
from xpusim.sim.routing_text import parse_routing

RECOMPUTE_POLICIES = ("none", "selective", "full")
# Modules a selective policy may recompute (docs/training.md): norms, the attention
# core with its up-projections, the FFN activation function, the routed-expert MLPs;
# "core_attn" is Megatron-LM's selective recompute (Korthikanti et al. 2022): the
# attention core alone (scores, softmax, dropout), not the projections.
RECOMPUTE_MODULES = ("norm", "attn", "act", "experts", "mlp", "core_attn")
# ``--recompute selective`` without ``--recompute-modules``: Megatron's meaning, the
# attention core alone (Megatron-LM --recompute-granularity selective, Korthikanti et al.
# 2022; Megatron-Core TransformerConfig: recompute_modules None -> ["core_attn"]). Until
# 2026-12-06 the default was BROAD_SELECTIVE, which also re-runs the norms, the attention
# projections and the FFN activation (docs/training_notes.md, "Sequence parallelism and
# selective recompute").
DEFAULT_SELECTIVE = ("core_attn",)
BROAD_SELECTIVE = ("norm", "attn", "act")
# FP8 scaling recipes (ParallelPlan.fp8_scaling; sim.training.lowprec).
FP8_SCALINGS = ("delayed", "current")
FRAMEWORKS = ("eager", "cuda-graphs", "deepspeed-0.3", "flash-attn-training", "torchtitan-eager",
              "composer-fsdp1")  # host-side profiles: sim/training/framework.py
# Megatron-Core's MoE token dispatchers the training lowering tells apart (plan.moe_dispatcher).
MOE_DISPATCHERS = ("alltoall", "flex")


@dataclass(frozen=True)
class ParallelPlan:
    """How one training step is split over devices.

    ``dp`` of 0 means "derive from the device count". ``ep`` divides ``dp`` (with
    ``moe_fold``: tp*ep divides tp*cp*dp); with
    ``tp_extend_ep`` the TP x EP group shards the *set* of experts (MindSpeed
    ``moe_tp_extend_ep``) instead of TP splitting each expert's matrices.
    ``moe_routing`` is "uniform", "zipf:S" (Zipf exponent S) or "hist:c1,c2,..."
    (relative tokens per expert); routing draws use ``seed``.

    Inference (``sim.inference``) uses the same plan with ``tp`` and ``ep`` only: a
    deployment of ``ep`` groups of ``tp`` ranks, the attention data-parallel over the
    groups (so ``dp`` stays 0, read as ``ep``) and the routed experts spread across them;
    ``devices``, ``tp_group`` and ``ep_group`` describe it. Training fills ``dp`` and
    places its ranks with ``Layout``.
    """

    tp: int = 1
    pp: int = 1
    vpp: int = 1
    dp: int = 0
    ep: int = 1
    cp: int = 1
    mbs: int = 1
    gbs: int = 0  # 0: one micro-batch per DP rank per pipeline stage
    seq: int = 4096
    dtype: str = "bf16"
    sequence_parallel: bool = False
    zero: int = 1  # 0: plain DP; 1: optimizer states sharded (Megatron distributed optimizer); 2: +grads; 3: +params
    recompute: str = "none"
    recompute_modules: tuple[str, ...] = DEFAULT_SELECTIVE
    # k > 1: the policy applies to every k-th transformer layer only, the others keep
    # their activations (torchtitan's selective layer AC, selective_ac_option = k).
    recompute_every: int = 1
    tp_extend_ep: bool = True
    # MoE parallel folding (Megatron-Core >= 0.10, arXiv 2504.14960; ``parallel_state.
    # initialize_model_parallel``, NVIDIA/Megatron-LM @ 00caa53a, builds a second
    # RankGenerator for the experts: etp (default tp), ep, edp = world/(etp*ep*pp)): the
    # expert groups are formed from the ranks of TP x CP x DP in the order's expert form
    # (``tp-ep-dp-pp``: CP dropped), so EP may fold CP and need not divide dp. Off: EP is
    # carved out of DP (MindSpeed, Megatron-Core < 0.10). See ``Layout`` and
    # ``_check_fold``. The same for every plan with cp = 1.
    moe_fold: bool = False
    overlap_dp: bool = True  # grad reduce-scatter during backward, param all-gather during forward
    overlap_tp: bool = False  # TP collectives chunked and pipelined with their GEMMs
    overlap_ep: bool = (
        True  # EP all-to-all hidden by another micro-batch's compute (adaptive pipe overlap)
    )
    hierarchical_ep: bool = (
        True  # inter-node all-gather + intra-node all-to-all (dedups top-k copies)
    )
    schedule: str = "auto"  # "1f1b" | "interleaved" | "auto" (interleaved when vpp > 1)
    order: str = DEFAULT_ORDER
    pad_layers: int = (
        -1
    )  # -1: pad with no-op layers up to a multiple of pp*vpp; else exactly this many
    moe_routing: str = "uniform"
    # Megatron-Core's MoE token dispatcher (moe_token_dispatcher_type): "alltoall"
    # (MoEAlltoAllTokenDispatcher: permute, all-to-all, then a second permutation that
    # sorts the received chunks by local expert, and its reverse before the combine;
    # sim.training.megatron_experts) or "flex" (DeepEP / HybridEP: the dispatch kernel
    # hands over the received tokens, one permute expands them per local expert).
    moe_dispatcher: str = "alltoall"
    seed: int = 0
    grad_reduce_dtype: str = (
        "fp32"  # Megatron accumulates and reduces main grads in fp32 by default
    )
    fragmentation: float = 0.05  # allocator fragmentation as a fraction of the dynamic memory
    runtime_reserved_gib: float = (
        1.0  # framework/runtime workspace (HCCL/NCCL buffers, CANN/CUDA context)
    )
    tp_overlap_chunks: int = 4
    # Training recipe. ``dropout``: attention-probability and hidden dropout rate
    # (Megatron-LM's GPT default 0.1, Narayanan et al. 2021 / Korthikanti et al. 2022;
    # Llama-style recipes 0): with dropout the step keeps 1-byte masks and, for unfused
    # attention, the dropped scores. ``grad_accum_fusion``: the weight-gradient GEMM
    # accumulates straight into the fp32 main gradient (Megatron-Core
    # ``gradient_accumulation_fusion``, default on); off (Megatron-LM 2021), every
    # micro-batch adds the 16-bit gradients into the fp32 buffer in a separate pass.
    dropout: float = 0.0
    grad_accum_fusion: bool = True
    # FP8 scaling recipe of a ``dtype = "fp8"`` run (sim.training.lowprec): "delayed"
    # (TransformerEngine DelayedScaling: the amax inside the cast) or "current"
    # (Float8CurrentScaling: a separate amax pass over each cast input first).
    fp8_scaling: str = "delayed"
    # Attention implementation (sim.cost.attention_impl: "standard" = unfused eager
    # attention with S x S tensors in memory, "flash2", "npu_fusion_attention", ...);
    # "" = the device's current default stack. Sets the attention ops' price and, for
    # "standard", the scores kept for the backward.
    attention_impl: str = ""
    # Host side of the framework (sim.training.framework): "eager" PyTorch dispatch per
    # op, "cuda-graphs" (no per-op host cost), "deepspeed-0.3" (eager, with ZeRO-3's
    # per-parameter list collectives of DeepSpeed 0.3), "flash-attn-training" (eager, with
    # flash-attn's fused cross-entropy), "torchtitan-eager" (uncompiled model code) or
    # "composer-fsdp1" (Composer + FSDP1: its gradient passes and eager DecoupledAdamW).
    framework: str = "eager"
    # Uneven pipeline split: model slots (transformer layers, then MTP modules) per
    # virtual stage, in virtual-stage order (v = chunk * pp + stage), pp*vpp entries
    # summing to layers + MTP modules; 0 is allowed (a stage with only the embedding
    # or the head). Empty: equal slots per virtual stage, padded with no-op layers.
    # Megatron-Core's ``pipeline_model_parallel_layout`` / MindSpeed ``num_layer_list``.
    layer_split: tuple[int, ...] = ()
    # Training placement: the devices the job uses on each node, from the node's first
    # (``sim.placement``): 0 = all of them, one contiguous block (rank r on device r);
    # k > 0 = the first k devices of nodes 0, 1, ... (a scheduler's segments, as
    # Megatron-Bridge's GB200 launcher asks Slurm for: docs/training.md, 'Part of a
    # system').
    per_node: int = 0
    # CPU activation offloading (Megatron-Core ``cpu_offloading_num_layers`` with
    # ``cpu_offloading_activations``): the saved activations of the first N transformer
    # layers go to host memory after their forward and come back before their backward
    # (TransformerEngine's offload handler, sim/training/offload.py). 0: off.
    cpu_offload_layers: int = 0
    # Transformer layers a low-precision recipe keeps in bf16 (Megatron-Core
    # first_last_layers_bf16 with num_layers_at_start_in_bf16 / _at_end_in_bf16:
    # fp8_utils.is_first_last_bf16_layer, layer < start or layer >= num_layers - end, for
    # FP8 and FP4 alike): their linears run in bf16 without casts (sim.training.items
    # gemm_dtype). 0: none, as Megatron-Bridge's performance recipes run.
    bf16_layers_at_start: int = 0
    bf16_layers_at_end: int = 0
    # Placement: the global id of the plan's first device (its groups start there).
    # Inference deployments may start anywhere; a training job starts at device 0
    # (``sim.placement.job_devices``), so this is neither a plan-file key nor part of ``as_dict``.
    first_device: int = 0

    @property
    def world(self) -> int:
        return self.tp * self.cp * self.dp * self.pp

    @property
    def devices(self) -> int:
        """Devices the plan spans: ``world``, with an unset ``dp`` read as ``ep`` (an
        inference deployment's EP groups are its data-parallel replicas)."""
        return self.tp * self.cp * self.pp * (self.dp or self.ep)

    def tp_group(self) -> tuple[int, ...]:
        """Global ids of the first device's tensor-parallel group (TP innermost)."""
        return tuple(range(self.first_device, self.first_device + self.tp))

    def ep_group(self) -> tuple[int, ...]:
        """Global ids of the first device's expert-parallel group: one device of each EP
        group, ``tp x cp`` apart (the default order places EP outside TP and CP)."""
        stride = self.tp * self.cp
        return tuple(self.first_device + i * stride for i in range(self.ep))

    @property
    def edp(self) -> int:
        """Expert-data-parallel degree: replicas of one expert shard, cp*dp/ep (the CP ranks
        hold the same experts too). Megatron-Core's expert_data_parallel_size =
        world / (etp * ep_meg * pp) with etp * ep_meg = tp * ep in both expert forms
        (TP-extend-EP: etp 1, ep_meg = tp * ep; TP-split experts: etp = tp)."""
        return self.cp * self.dp // self.ep

    @property
    def interleaved(self) -> bool:
        return self.schedule == "interleaved" or (self.schedule == "auto" and self.vpp > 1)

    @property
    def fb_mergeable(self) -> bool:
        """Whether the schedule can merge a forward and a backward of different micro-batches
        (EP all-to-all overlap): without pipelining, or with the interleaved schedule.

        Megatron-Core only offers combined 1F1B for those two
        (``combined_1f1b_schedule_for_no_pipelining`` and ``..._for_interleaved_pipelining``
        in ``pipeline_parallel/combined_1f1b.py``; ``TransformerConfig.__post_init__``
        asserts that ``virtual_pipeline_model_parallel_size`` is set when PP > 1), and
        MindSpeed's ``--moe-fb-overlap`` runs on DualPipeV, Megatron VPP or no PP
        (``docs/features/megatron_moe/megatron-moe-fb-overlap.md``). The reason: on plain
        1F1B with PP > 1 adjacent stages' warm-ups differ by one micro-batch, so a merged
        step on stage s needs the backward of s + 1's step of the same index, which needs
        the forward of s's previous step: each step waits a round trip and the steady
        state runs at two merged steps per micro-batch (docs/training.md, EP overlap)."""
        return self.pp == 1 or self.interleaved

    def layer_recompute(self, slot: str) -> str:
        """The recompute policy of slot ``slot`` ("L12", "embedding", "head", "mtp0").

        With ``recompute_every`` k > 1 only every k-th transformer layer runs the policy
        and the others keep all their activations ("none"): torchtitan's selective layer
        AC (torchtitan/parallelisms/parallelize_llama.py, _apply_ac_to_transformer_block,
        2024) counts the blocks from 1 and wraps block n in checkpoint_wrapper when
        n % k == 0, i.e. 0-based layers k-1, 2k-1, ... Slots other than the transformer
        layers follow ``recompute`` as with k = 1."""
        if self.recompute_every == 1 or not slot.startswith("L"):
            return self.recompute
        return self.recompute if (int(slot[1:]) + 1) % self.recompute_every == 0 else "none"

    def as_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "first_device"}
        # off: the key only where a plan sets it
        for key in ("cpu_offload_layers", "moe_fold", "bf16_layers_at_start",
                    "bf16_layers_at_end"):
            if not out[key]:
                del out[key]
        out["recompute_modules"] = list(self.recompute_modules)
        out["layer_split"] = list(self.layer_split)
        out["world"] = self.world
        return out


def microbatches(plan: ParallelPlan) -> int:
    """Micro-batches per pipeline per step: gbs / (mbs x dp)."""
    return plan.gbs // (plan.mbs * plan.dp)


def resolve_plan(plan: ParallelPlan, num_devices: int) -> ParallelPlan:
    """Fill the derived fields (dp from the device count, gbs default) and validate degrees."""
    for name in ("tp", "pp", "vpp", "ep", "cp", "mbs", "seq", "tp_overlap_chunks"):
        value = getattr(plan, name)
        if not isinstance(value, int) or value < 1:
            raise InputError(f"plan.{name} must be a positive integer, got {value!r}")
    dp = plan.dp
    per_replica = plan.tp * plan.cp * plan.pp
    if dp == 0:
        if num_devices % per_replica:
            raise InputError(
                f"{num_devices} devices are not a multiple of tp*cp*pp = {per_replica}; "
                "change --tp/--cp/--pp or the number of nodes"
            )
        dp = num_devices // per_replica
    if dp < 1:
        raise InputError(f"plan.dp must be >= 1, got {dp}")
    if plan.tp * plan.cp * dp * plan.pp != num_devices:
        raise InputError(
            f"devices ({num_devices}) != tp*cp*dp*pp = {plan.tp}*{plan.cp}*{dp}*{plan.pp} "
            f"= {plan.tp * plan.cp * dp * plan.pp}; fix --dp or the number of nodes"
        )
    gbs = plan.gbs or plan.mbs * dp * plan.pp * plan.vpp
    return replace(plan, dp=dp, gbs=gbs)


def layer_slots(spec: ModelSpec, plan: ParallelPlan) -> list[str]:
    """Pipeline slots in order: "L<i>" transformer layers, "mtp<j>" MTP modules, "noop" padding.

    MTP modules run after the last layer (they need its hidden state). Padding no-op
    layers (MindSpeed ``noop_layers``) go half before the first layer and half after
    the last slot: the first virtual stage runs the embedding and the last one the
    output head (for Pangu Ultra MoE a vocab x hidden GEMM worth about two MoE
    layers), so those are the ones to lighten. (All padding at the end was tried:
    the Pangu step is 2% slower, because the MTP block then shares a stage with L60.)
    With ``plan.layer_split`` there is no padding: the list is the model's slots.
    """
    slots = [f"L{i}" for i in range(spec.layers)] + [f"mtp{j}" for j in range(spec.mtp_layers)]
    stages = plan.pp * plan.vpp
    if plan.layer_split:
        _check_split(spec, plan, len(slots))
        return slots
    if plan.pad_layers < 0:
        pad = (-len(slots)) % stages
    else:
        pad = plan.pad_layers
    total = len(slots) + pad
    if total % stages:
        raise InputError(
            f"{len(slots)} layers (+{pad} padding) do not divide into pp*vpp = {stages} "
            f"virtual stages; set pad_layers to {(-len(slots)) % stages} (or -1 for automatic) "
            "or change --pp/--vpp"
        )
    if total < stages:
        raise InputError(
            f"{total} layer slots cannot fill pp*vpp = {stages} virtual stages; lower --pp or --vpp"
        )
    front = pad // 2
    return ["noop"] * front + slots + ["noop"] * (pad - front)


def _check_split(spec: ModelSpec, plan: ParallelPlan, model_slots: int) -> None:
    split = plan.layer_split
    stages = plan.pp * plan.vpp
    if len(split) != stages:
        raise InputError(
            f"layer_split has {len(split)} entries; it needs one per virtual stage "
            f"(pp*vpp = {stages}), in virtual-stage order"
        )
    # Typed as ints, but read from a plan file or a Python caller: checked here.
    entries: tuple[object, ...] = split
    if any(not isinstance(n, int) or n < 0 for n in entries):
        raise InputError(f"layer_split entries must be non-negative integers, got {list(split)}")
    if sum(split) != model_slots:
        raise InputError(
            f"layer_split sums to {sum(split)}; {spec.name} has {spec.layers} layers + "
            f"{spec.mtp_layers} MTP modules = {model_slots} slots to place"
        )
    if plan.pad_layers > 0:
        raise InputError("layer_split places every slot itself: leave pad_layers at -1 (or 0)")


def stage_slots(spec: ModelSpec, plan: ParallelPlan) -> list[list[str]]:
    """The slots of each virtual stage (index v = chunk * pp + stage)."""
    slots = layer_slots(spec, plan)
    stages = plan.pp * plan.vpp
    counts = list(plan.layer_split) or [len(slots) // stages] * stages
    out, start = [], 0
    for n in counts:
        out.append(slots[start : start + n])
        start += n
    return out


def validate_plan(spec: ModelSpec, plan: ParallelPlan, num_devices: int) -> ParallelPlan:
    """Resolve and check ``plan`` for ``spec`` on ``num_devices``; return the resolved plan.

    The checks run in a fixed order, so a plan with several faults names the same one
    each time."""
    tp: object = plan.tp  # not yet checked: a Python caller may pass anything
    if isinstance(tp, int) and tp >= 1 and spec.heads % tp:
        # Checked before the device count: the more specific message helps more.
        raise InputError(
            f"tp={tp} does not divide the {spec.heads} attention heads of "
            f"{spec.name}; choose a tp that divides {spec.heads}"
        )
    plan = resolve_plan(plan, num_devices)
    _check_dtypes(plan)
    _check_model_split(spec, plan)
    _check_batch(plan)
    _check_options(plan)
    # The embedding and the loss may each stand for one layer slot (Megatron-Core
    # account_for_embedding_in_pipeline_split / account_for_loss_in_pipeline_split, set by
    # NeMo's and Megatron-Bridge's large-model recipes): the padding puts a no-op there, so
    # the first and last virtual stages may hold nothing else. An explicit layer_split
    # places every slot itself (0 allowed).
    if not plan.layer_split and plan.pp * plan.vpp > spec.layers + spec.mtp_layers + 2:
        raise InputError(
            f"pp*vpp = {plan.pp * plan.vpp} virtual stages exceed the {spec.layers} layers of "
            f"{spec.name} (+2: the embedding's and the loss's slots); use a smaller --pp/--vpp"
        )
    parse_order(plan.order)
    parse_routing(plan.moe_routing)
    layer_slots(spec, plan)
    _check_offload(spec, plan)
    _check_bf16_layers(spec, plan)
    return plan


def _check_bf16_layers(spec: ModelSpec, plan: ParallelPlan) -> None:
    """Layers kept in bf16: non-negative, at most the model's layers, low precision only."""
    n: Any = (plan.bf16_layers_at_start, plan.bf16_layers_at_end)
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in n) or sum(n) > spec.layers:
        raise InputError(f"--bf16-layers-at-start/-at-end must be integers >= 0 summing to at "
                         f"most the {spec.layers} layers of {spec.name}, got {n[0]!r}, {n[1]!r}")
    if sum(n) and not is_low_precision(plan.dtype):
        raise InputError(f"--bf16-layers-at-start/-at-end keep layers of a low-precision recipe "
                         f"in bf16; --dtype {plan.dtype} has none: drop them or pass --dtype "
                         "fp8, mxfp8 or nvfp4")


def _check_offload(spec: ModelSpec, plan: ParallelPlan) -> None:
    """Megatron-Core's conditions for CPU activation offloading (``TransformerConfig.
    __post_init__``): 0 <= layers < num_layers, no pipeline parallelism, no recompute."""
    n: Any = plan.cpu_offload_layers
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n < spec.layers:
        raise InputError(
            f"cpu_offload_layers (--cpu-offload-layers) must be an integer in [0, "
            f"{spec.layers}) for {spec.name} (Megatron-Core: 'CPU offloading can be done only "
            f"for layers less than num_layers'), got {n!r}"
        )
    if n and plan.pp > 1:
        raise InputError("--cpu-offload-layers needs pp = 1: Megatron-Core has 'no support "
                         "for Pipeline parallelism with CPU offloading'")
    if n and plan.recompute != "none":
        raise InputError(f"--cpu-offload-layers with --recompute {plan.recompute}: Megatron-Core "
                         "'CPU offloading does not work when activation recomputation is enabled'")


def _check_dtypes(plan: ParallelPlan) -> None:
    if plan.dtype not in BYTES_PER_DTYPE:
        raise InputError(
            f"plan.dtype '{plan.dtype}' unknown; use one of {', '.join(BYTES_PER_DTYPE)}"
        )
    if plan.grad_reduce_dtype not in BYTES_PER_DTYPE:
        raise InputError(f"plan.grad_reduce_dtype '{plan.grad_reduce_dtype}' unknown")
    if plan.moe_dispatcher not in MOE_DISPATCHERS:
        raise InputError(f"plan.moe_dispatcher '{plan.moe_dispatcher}' unknown; use one of "
                         f"{', '.join(MOE_DISPATCHERS)} (--moe-dispatcher)")


def _check_model_split(spec: ModelSpec, plan: ParallelPlan) -> None:
    """TP must split the heads, EP the experts."""
    if spec.heads % plan.tp:
        raise InputError(
            f"tp={plan.tp} does not divide the {spec.heads} attention heads of "
            f"{spec.name}; choose a tp that divides {spec.heads}"
        )
    if spec.mla is None and spec.kv_heads % plan.tp and plan.tp % spec.kv_heads:
        raise InputError(
            f"tp={plan.tp} and the {spec.kv_heads} KV heads of {spec.name} do not "
            "divide one another; choose another tp"
        )
    _check_fold(plan)
    if spec.moe is None and plan.ep > 1:
        raise InputError(f"{spec.name} is dense: ep must be 1, got {plan.ep}")
    if spec.moe is not None:
        shards = plan.ep * (plan.tp if plan.tp_extend_ep else 1)
        if spec.moe.num_experts % shards:
            what = "tp*ep" if plan.tp_extend_ep else "ep"
            fix = ("change --ep/--tp, or --no-tp-extend-ep to split each expert over TP "
                   "(Megatron-Core) so that only ep must divide them"
                   if plan.tp_extend_ep and plan.tp > 1 else "change --ep")
            raise InputError(
                f"{what} = {shards} does not divide the {spec.moe.num_experts} "
                f"experts of {spec.name}; {fix}"
            )


def _check_fold(plan: ParallelPlan) -> None:
    """Where the expert groups may go: inside DP by default, inside TP x CP x DP with
    ``moe_fold`` under Megatron-Core's own conditions (``initialize_model_parallel``)."""
    if not plan.moe_fold:
        if plan.dp % plan.ep:
            fold = (" (or --moe-fold: Megatron-Core >= 0.10 forms the expert groups over "
                    "TP x CP x DP, MoE parallel folding)" if plan.cp > 1 else "")
            raise InputError(
                f"ep={plan.ep} must divide dp={plan.dp} (EP is carved out of DP); "
                f"change --ep or the device count{fold}"
            )
        return
    shards = plan.tp * plan.ep  # etp * ep_meg in both expert forms (ParallelPlan.edp)
    block = plan.tp * plan.cp * plan.dp
    if block % shards:
        # Megatron-Core: "world_size (...) is not divisible by
        # expert_tensor_model_pipeline_parallel size" (etp * ep * pp).
        raise InputError(
            f"--moe-fold: the expert groups tp*ep = {plan.tp}*{plan.ep} = {shards} ranks must "
            f"divide the tp*cp*dp = {block} ranks of a pipeline stage (Megatron-Core: world "
            "divisible by etp*ep*pp); change --ep"
        )
    dims = parse_order(plan.order)
    if not (dims[-1] == "pp" or plan.pp == 1 or plan.edp == plan.dp):
        # Megatron-Core asserts this: otherwise the attention's and the experts' pipeline
        # groups would differ.
        raise InputError(
            f"--moe-fold with --order {plan.order}: Megatron-Core needs pp last in the order "
            "(or pp = 1, or equal data-parallel sizes of the attention and the experts)"
        )
    expert = expert_dims(dims)
    if plan.tp_extend_ep and plan.tp > 1 and expert.index("ep") != expert.index("tp") + 1:
        # TP-extend-EP is Megatron's etp = 1 with one EP dimension of tp*ep ranks at ep's
        # place: Layout(experts=True) spans it as tp x ep, the same ranks only when ep
        # follows tp once CP is dropped.
        raise InputError(
            f"--moe-fold with TP-extend-EP needs ep right after tp in --order once cp is "
            f"left out (as in tp-cp-ep-dp-pp), got {plan.order}; or --no-tp-extend-ep"
        )


def _check_batch(plan: ParallelPlan) -> None:
    """The sequence must split over CP and SP, the global batch into micro-batches."""
    if plan.seq % (plan.cp * (2 if plan.cp > 1 else 1)):
        raise InputError(
            f"seq={plan.seq} must be divisible by 2*cp = {2 * plan.cp} "
            "(load-balanced context-parallel chunks)"
        )
    if plan.sequence_parallel and (plan.seq // plan.cp * plan.mbs) % plan.tp:
        raise InputError(f"sequence parallelism needs mbs*seq/cp divisible by tp={plan.tp}")
    if plan.gbs % (plan.mbs * plan.dp):
        raise InputError(
            f"gbs={plan.gbs} is not divisible by mbs*dp = {plan.mbs}*{plan.dp} = "
            f"{plan.mbs * plan.dp}; change --gbs or --mbs"
        )
    m = microbatches(plan)
    if plan.vpp > 1 and plan.pp == 1:
        # Interleaving splits each pipeline stage's layers into vpp chunks; with one stage the
        # lowering built a group naming one device twice ("group lists a device more than
        # once"). The explore plan space leaves these plans out (sim/studies/plans.py).
        raise InputError(f"vpp={plan.vpp} needs pipeline parallelism: give --pp > 1 or --vpp 1")
    if plan.vpp > 1 and not plan.interleaved:
        raise InputError(
            "vpp > 1 needs the interleaved schedule (schedule = 'interleaved' or 'auto')"
        )
    if plan.interleaved and plan.pp > 1 and m % plan.pp:
        raise InputError(
            f"the interleaved schedule needs micro-batches ({m}) divisible by "
            f"pp={plan.pp} (Megatron's constraint); change --gbs or --mbs"
        )


def _check_recompute(plan: ParallelPlan) -> None:
    """The recompute policy, its modules and its layer period must be known/valid."""
    if plan.recompute not in RECOMPUTE_POLICIES:
        raise InputError(f"recompute '{plan.recompute}' unknown; use none, selective or full")
    bad = [mod for mod in plan.recompute_modules if mod not in RECOMPUTE_MODULES]
    if bad:
        raise InputError(
            f"recompute_modules {bad} unknown; choose from {', '.join(RECOMPUTE_MODULES)}"
        )
    k: Any = plan.recompute_every  # a plan file or API caller may pass any value
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InputError(
            f"recompute_every (--recompute-every) must be an integer >= 1, got {k!r}: "
            "1 recomputes every layer, 2 every second layer, ..."
        )


def _check_fp8_scaling(plan: ParallelPlan) -> None:
    """A known FP8 scaling recipe; one other than the default only for an FP8 run."""
    if plan.fp8_scaling not in FP8_SCALINGS:
        raise InputError(
            f"fp8_scaling '{plan.fp8_scaling}' unknown; use one of {', '.join(FP8_SCALINGS)}"
        )
    if plan.fp8_scaling != "delayed" and plan.dtype != "fp8":
        raise InputError(
            f"--fp8-scaling {plan.fp8_scaling} applies to --dtype fp8 (per-tensor FP8 "
            f"scaling), not --dtype {plan.dtype}; drop it or pass --dtype fp8"
        )


def _check_options(plan: ParallelPlan) -> None:
    """Named options must be known, fractions in [0, 1)."""
    if plan.schedule not in ("auto", "1f1b", "interleaved"):
        raise InputError(f"schedule '{plan.schedule}' unknown; use 1f1b, interleaved or auto")
    if plan.zero not in (0, 1, 2, 3):
        raise InputError(f"zero must be 0, 1, 2 or 3, got {plan.zero}")
    _check_recompute(plan)
    if plan.framework not in FRAMEWORKS:
        raise InputError(
            f"plan.framework '{plan.framework}' unknown; use one of {', '.join(FRAMEWORKS)}"
        )
    if not 0 <= plan.dropout < 1:
        raise InputError(f"dropout must be in [0, 1), got {plan.dropout}")
    _check_fp8_scaling(plan)
    if not 0 <= plan.fragmentation < 1:
        raise InputError(f"fragmentation must be in [0, 1), got {plan.fragmentation}")
    reserved = plan.runtime_reserved_gib  # GiB added to each device's need: < 0 freed memory
    if not (math.isfinite(reserved) and reserved >= 0):
        raise InputError(f"plan.runtime_reserved_gib must be a finite GiB >= 0 (default 1), "
                         f"got {reserved}")

