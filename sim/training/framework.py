"""The training framework's host side: what each launched op costs the CPU.

A step's kernels are issued by the framework on the host (PyTorch eager: Python, the
autograd and ATen dispatchers, then ``cudaLaunchKernel``). The host runs ahead of the
device, so its cost is hidden while kernels are long; when kernels are short the device
waits for the next launch. CUDA graphs (and Ascend's graph mode) replay a captured
sequence with one launch, removing the per-op host cost. The device-side launch
latency stays in the device profile's ``launch_overhead`` (priced by the cost model).

The lowering applies this per merged run of ops: ``n`` ops cannot finish before the
host has issued them, so the run takes ``max(device time, n * host_op_s - lead)``, where
``lead`` is how far the host got ahead over the unit's earlier runs since its last sync
(``sim.cost.pricing``; collectives between runs add nothing to it, a lower bound).
A host sync inside the run (the MoE dispatcher's, ``moe_dispatch_syncs``) adds one
``host_op_s``: the device has drained and waits for the host's next launch.
TransformerEngine's grouped experts cost the host more than one op each
(``sim.training.te_moe_host``, ``Segment.host_extra_s``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from xpusim.sim.errors import InputError
from xpusim.sim.ir import Op, OpKind


@dataclass(frozen=True)
class FrameworkProfile:
    name: str
    host_op_s: float  # CPU time to issue one op (dispatch + launch)
    source: str
    # ZeRO-3 as DeepSpeed 0.3 ran it (March-2021 release; ``zero3_list_collectives``):
    # one blocking collective per parameter tensor, in the list form of
    # ``torch.distributed`` (n output / input views), which PyTorch's NCCL process group
    # serves with one copy per group member between the list and its flat buffer.
    zero3_list_collectives: bool = False
    zero3_source: str = ""
    # Uncompiled eager model code: every elementwise op of the model is its own kernel
    # and HBM pass (``xpusim.sim.training.eager``).
    eager_elementwise: bool = False
    # FSDP2 (per-parameter sharding): after each ZeRO-3 all-gather the gathered flat
    # buffer is copied out into the per-parameter tensors on the compute stream.
    fsdp2_copy_out: bool = False
    # What --recompute selective re-runs: the plan's recompute modules (Megatron-style),
    # or torchtitan's op-level policy (``eager.op_sac_recompute``).
    selective: str = "modules"
    # The loss kernel (``megatron_loss``): Megatron-Core's vocab-parallel cross-entropy
    # ("megatron"), or flash-attn's fused Triton cross-entropy ("flash-attn"); torchtitan's
    # eager ``F.cross_entropy`` is priced by ``eager_elementwise``.
    loss: str = "megatron"
    # The MoE token dispatcher waits on the host once per routed forward (MOE_SYNC_SOURCE):
    # Megatron-Core's dispatchers and the MindSpeed ones derived from them. torchtitan's
    # expert-parallel path was not read: off there.
    moe_dispatch_sync: bool = True
    # Megatron-Core's MoE layer with TransformerEngine's grouped experts: the host issues
    # per-local-expert GEMMs and quantisations and the eager router (te_moe_host.py).
    te_moe_host: bool = False
    # PyTorch FSDP1's post-backward gradient passes under ZeRO-3 (cast to the reduce
    # dtype, pre/post-divide, cast back, accumulate into the saved shard:
    # ``sim.training.fsdp1``), instead of Megatron's main-gradient accumulation.
    fsdp1_grad_path: bool = False
    # The optimizer step: "fused" (one pass, ``lowering.adam_bytes_per_param``) or
    # "composer-decoupled-adamw" (Composer's per-parameter eager DecoupledAdamW, with
    # FSDP's clip_grad_norm_ scaling every gradient; ``sim.training.fsdp1``).
    optimizer: str = "fused"


FRAMEWORKS = {
    "eager": FrameworkProfile(
        "eager",
        10e-6,
        "PyTorch eager: ~1 us Python + ~1 us pybind + 1-3 us autograd + 1-2 us ATen "
        "dispatch + 1-5 us backend + 1-3 us cudaLaunchKernel = 5-25 us of CPU work per op "
        "(jiahuanglin.xyz GPU-kernel lessons, 'From PyTorch op to kernel launch'); 10 us, "
        "the lower half of that range and of the 10-20 us usually quoted for eager "
        "dispatch: an estimate, not a fit",
        te_moe_host=True,
    ),
    "cuda-graphs": FrameworkProfile(
        "cuda-graphs",
        0.0,
        "CUDA graphs replay the captured kernels with one host launch "
        "(pytorch.org/blog/accelerating-pytorch-with-cuda-graphs): no per-op host cost",
    ),
    "deepspeed-0.3": FrameworkProfile(
        "deepspeed-0.3",
        10e-6,
        "PyTorch eager as 'eager' (10 us per op), with DeepSpeed 0.3's ZeRO-3",
        zero3_list_collectives=True,
        zero3_source=(
            "DeepSpeed 0.3 ZeRO-3 (partition_parameters.py of the 2021 release: "
            "_allgather_param calls torch.cuda.synchronize() and then "
            "torch.distributed.all_gather(partitions, ...) with one output view per rank, "
            "once per parameter; _reduce_scatter_gradient calls "
            "torch.distributed.reduce_scatter with one input view per rank, once per "
            "parameter). PyTorch's ProcessGroupNCCL serves the list forms with "
            "ncclAllGather / ncclReduceScatter on a flat buffer plus one copy_ per rank "
            "(allgather: 'Copy the flattened output tensors to the outputs'); "
            "_all_gather_base, the flat form DeepSpeed later switched to ('will fall back "
            "to torch.distributed.all_gather which will result in suboptimal "
            "performance'), came with PyTorch 1.10"
        ),
    ),
    "flash-attn-training": FrameworkProfile(
        "flash-attn-training",
        10e-6,
        "PyTorch eager as 'eager' (10 us per op), running the FlashAttention repository's "
        "GPT training (flash-attention training/: flash_attn.models.gpt with its fused "
        "dense, MLP, dropout-add-LayerNorm kernels) and its fused cross-entropy loss "
        "(flash_attn.losses.cross_entropy.CrossEntropyLoss)",
        loss="flash-attn",
    ),
    "torchtitan-eager": FrameworkProfile(
        "torchtitan-eager",
        10e-6,
        "PyTorch eager as 'eager' (10 us per op), running torchtitan's Llama without "
        "torch.compile (unfused RMSNorm, rotary, repeat_kv, SiLU: sim/training/eager.py) "
        "and FSDP2's all-gather copy-out",
        eager_elementwise=True,
        fsdp2_copy_out=True,
        selective="torchtitan-op",
        moe_dispatch_sync=False,
        zero3_source=(
            "FSDP2 (torch.distributed._composable.fsdp, _fsdp_collectives.py): "
            "foreach_all_gather copies the local shards into one flat input "
            "(the all-gather copy-in stream, 1/dp of the unit), and "
            "foreach_all_gather_copy_out, called from FSDPParamGroup.wait_for_unshard on "
            "the current (compute) stream, splits the gathered flat buffer into the "
            "unsharded parameters with torch.split_with_sizes_copy: a read and a write of "
            "the whole unit's parameters per all-gather (forward, and backward after "
            "reshard_after_forward). The reduce-scatter's copy-in (chunk_cat with the "
            "cast to the reduce dtype) runs on the reduce-scatter stream, off the "
            "compute stream, and is not charged to it"
        ),
    ),
    "composer-fsdp1": FrameworkProfile(
        "composer-fsdp1",
        10e-6,
        "PyTorch eager as 'eager' (10 us per op), under MosaicML Composer with PyTorch FSDP1 "
        "(llm-foundry's MPT training: composer train/train.py, fsdp_config in the yamls)",
        fsdp1_grad_path=True,
        optimizer="composer-decoupled-adamw",
        moe_dispatch_sync=False,
        zero3_source=(
            "PyTorch FSDP1 FULL_SHARD as Composer configures it (composer/trainer/"
            "dist_strategy.py @ 029483a4dc79dae46d5e78906a6a694f0c228dd3, "
            "prepare_fsdp_module: backward_prefetch BACKWARD_POST, forward_prefetch "
            "False, use_orig_params True; llm-foundry's submit_benchmarks.py sets "
            "limit_all_gathers True): one flat parameter per wrapped block, gathered with "
            "all_gather_into_tensor straight into the unsharded buffer (no copy-out); "
            "the gradient's post-backward passes are sim.training.fsdp1's"
        ),
    ),
}


MOE_SYNC_SOURCE = (
    "Megatron-LM megatron/core/transformer/moe/token_dispatcher.py (core_r0.13-0.15 era, "
    "as stored in the search corpus): MoEAlltoAllTokenDispatcher.preprocess sets "
    "cuda_sync_point 'before_ep_alltoall' when EP x expert-TP > 1 (the all-to-all needs "
    "input_splits / output_splits as host lists), else 'before_finish' (tokens_per_expert "
    "on the host for the grouped GEMM); _maybe_dtoh_and_synchronize copies them on "
    "cuda_dtoh_stream and calls d2h_event.synchronize() there, once per MoE layer "
    "forward (dropless; only moe_pad_expert_input_to_capacity skips it). The backward's "
    "all-to-alls reuse the host splits: no sync. MoEAllGatherTokenDispatcher: "
    "local_map.sum(0).long().cpu(), blocking. MoEFlexTokenDispatcher (DeepEP normal "
    "kernels): deep_ep.cpp intranode/internode_dispatch busy-waits on the host for "
    "moe_recv_counter unless num_worst_tokens > 0, which Megatron's fused_dispatch does "
    "not pass; the cached (handle) dispatch of the backward does not wait. MindSpeed's "
    "alltoall dispatchers subclass Megatron's (MindSpeedMOEAlltoAllFbOverlapTokenDispatcher)"
)


def moe_dispatch_syncs(ops: Sequence[Op], phase: str, framework: str) -> int:
    """Host syncs of the MoE token dispatcher in a forward or recompute run of ``ops``:
    one per routed forward (each top-k routing op), where the framework's dispatcher
    makes one (MOE_SYNC_SOURCE)."""
    if phase == "bwd" or not framework_profile(framework).moe_dispatch_sync:
        return 0
    return sum(1 for op in ops if op.kind == OpKind.ROUTING)


def framework_profile(name: str) -> FrameworkProfile:
    try:
        return FRAMEWORKS[name]
    except KeyError:
        raise InputError(
            f"plan.framework '{name}' unknown; use one of {', '.join(FRAMEWORKS)}"
        ) from None
