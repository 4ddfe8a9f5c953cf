"""Host time of a Megatron-Core MoE layer with TransformerEngine's grouped experts.

The simulator prices the host per launched op (``framework.host_op_s``, 10 us in eager
PyTorch) and a grouped expert GEMM is one op there. What the host really issues for a
routed MoE layer (Megatron-Core ``TEGroupedMLP`` over TransformerEngine
``GroupedLinear``, the ``alltoall`` dispatcher) is much more, and on fine-grained MoE
models (many small local experts) it outlasts the device work:

* **Per-local-expert GEMMs.** ``_GroupedLinear.forward`` splits its input by
  ``m_splits`` and calls ``general_grouped_gemm`` once; TE's C++
  (``te_general_grouped_gemm`` -> ``nvte_multi_stream_cublas_gemm``) issues one cuBLAS
  GEMM per local expert over 4 streams. The backward issues one dgrad and one wgrad
  grouped GEMM, i.e. 2 per-expert cuBLAS calls per local expert, plus per-expert Python
  (``handle_custom_ddp_from_mcore``) (TransformerEngine
  ``transformer_engine/pytorch/module/grouped_linear.py``).
* **Per-expert quantisation.** With FP8 current scaling and MXFP8 each expert's slice is
  quantised on its own (``split_quantize`` / the single-tensor path, TransformerEngine
  #1525: only delayed scaling has the fused multi-tensor cast-transpose). Per tensor,
  ``Float8CurrentScalingQuantizer::quantize_impl`` launches ``nvte_compute_amax``,
  ``nvte_compute_scale_from_amax`` and ``nvte_quantize_v2`` (3 kernels);
  ``MXFP8Quantizer::quantize`` one ``nvte_quantize_v2`` (1 kernel)
  (``transformer_engine/pytorch/csrc/quantizer.cpp``). Forward: each GroupedLinear's
  input; backward: each GroupedLinear's output gradient (before its dgrad/wgrad).
  Each kernel costs the framework's ``host_op_s``.
* **Router and preprocess.** The router's GEMM, score function, top-k, auxiliary-loss
  bookkeeping and the dispatcher's preprocess (per-expert counts, their EP all-gather,
  the D2H copies) are tens of small eager ops.

Measured host times (not the throughput rows): an nsys/NVTX profile of Megatron-Core
Qwen3-30B-A3B on 8 B200, EP 8, MBS 1, BF16, ``alltoall`` dispatcher, TE grouped GEMM
(yanring/Megatron-MoE-ModelZoo issue #7, 2025-08-18; NVTX ranges are host wall time, the
minimum over 6,137 instances taken as the host's own cost, the median including waits):

* ``#MOE_EXPERTS_COMP`` min 1.94 ms per MoE layer forward with 16 local experts:
  2 GroupedLinear x 16 experts = 32 per-expert GEMMs -> ``EXPERT_FWD_GEMM_S`` = 60.6 us
  per local expert per GroupedLinear forward, all-in (TE's Python per expert, the C++
  GEMM call, and the range's few other launches -- activation, chunk sorts --
  amortised; in BF16, so no quantisation in it).
* ``nvte_cublas_gemm``: 645,099 calls (105 per MoE-layer instance = 16 x (2 forward + 4
  backward) per-expert GEMMs + the dense ones), median 13.7 us of host time each in TE's
  C++ alone -> ``EXPERT_BWD_GEMM_S`` per per-expert dgrad or wgrad GEMM. The profile's
  backward ranges are not in the stored excerpt, so the backward's per-expert Python is
  not priced: a lower bound.
* ``#MOE_ROUTER_AND_PRE`` min 1.72 ms per MoE layer forward -> ``ROUTER_PRE_FWD_S``,
  charged on the routing op (the router GEMM's own launch is priced as an op; the
  backward of the router stays one ``host_op_s`` per op: a lower bound).

Not priced (no measured figure in the sources read): ``#MOE_DISPATCH`` (min 0.29 ms; the
host wait it contains is ``moe_dispatch_syncs``), the combine, the backward's Python.

The figures were measured on one host; they are scaled by the host CPU's single-thread
speed (hwprofiles/hosts.toml, as the serving engines' ``reference_host``):
``reference / system``. The profile does not name its host: ASSUMPTION, the DGX B200's
Xeon Platinum 8570 (``REFERENCE_HOST``), the DGX B200's own CPU (scale 1 there); GB200 and
GB300 NVL72 run them on the superchip's Grace (scale 1.43); systems without a host entry
take the reference's speed (scale 1). The terms apply where TransformerEngine runs
the experts: NVIDIA devices under the Megatron-Core frameworks
(``FrameworkProfile.te_moe_host``); CUDA graphs remove them with the rest of the host cost.
"""

from __future__ import annotations

from collections.abc import Sequence

from xpusim.hwprofiles.hosts import host_speed, system_host_speed
from xpusim.hwprofiles.spec import System
from xpusim.sim.ir import GemmShape, Op, OpKind
from xpusim.sim.training.framework import framework_profile

MODELZOO7 = ("yanring/Megatron-MoE-ModelZoo#7 (Qwen3-30B-A3B, 8 B200, EP 8, BF16): nsys "
             "NVTX host ranges, minimum over 6,137 MoE-layer forwards")
EXPERT_FWD_GEMM_S = 1.94e-3 / 32  # '#MOE_EXPERTS_COMP' min / (2 x 16 per-expert GEMMs)
EXPERT_BWD_GEMM_S = 13.7e-6  # 'nvte_cublas_gemm' median host time per call (C++ only)
ROUTER_PRE_FWD_S = 1.72e-3  # '#MOE_ROUTER_AND_PRE' min, per MoE layer forward
# Kernels per per-expert quantisation (TransformerEngine csrc/quantizer.cpp): FP8 current
# scaling amax + scale + cast; MXFP8 one cast with its block scales. "fp8" is FP8-CS here
# (Megatron-Bridge's FP8 recipes; delayed scaling's fused multi-tensor cast is not modelled).
QUANT_LAUNCHES = {"fp8": 3, "fp8_e4m3": 3, "fp8_e5m2": 3, "mxfp8": 1}
# With current scaling the amax runs as its own op (``<gemm>_amax_quant``,
# sim.training.lowprec.cast_ops): one of the per-expert launches above is its.
AMAX_LAUNCHES = 1
_AMAX_QUANT = "_amax_quant"
REFERENCE_HOST = "xeon-8570"  # ASSUMPTION: ModelZoo#7's host is not named (8 B200 node)
_QUANT = "_quant"


def _local_experts(op: Op) -> float:
    s = op.shape
    return s.batch if isinstance(s, GemmShape) else 1.0


def op_extra_host_s(op: Op, phase: str, host_op_s: float,
                    expert_gemms: dict[str, tuple[float, str]],
                    amaxed: frozenset[str] = frozenset()) -> float:
    """Host seconds (at the reference host) the framework spends issuing ``op`` beyond the
    one ``host_op_s`` it is already charged as one op. ``expert_gemms``: the local-expert
    count and operand format of each grouped expert GEMM of the run, by name (the cast of
    its input, ``<name>_quant``, quantises per expert into that format). ``amaxed``: the
    casts (by name) whose amax runs as its own op ``<name>_amax_quant``: that op issues
    ``AMAX_LAUNCHES`` of the per-expert launches, the cast the rest."""
    forward = phase != "bwd"
    if op.kind == OpKind.ROUTING:
        return max(0.0, ROUTER_PRE_FWD_S - 2 * host_op_s) if forward else 0.0
    if not op.role.expert:
        return 0.0
    if op.kind == OpKind.GEMM and isinstance(op.shape, GemmShape):
        per = EXPERT_FWD_GEMM_S if forward else EXPERT_BWD_GEMM_S
        return max(0.0, _local_experts(op) * per - host_op_s)
    if op.name.endswith(_AMAX_QUANT):
        experts, _ = expert_gemms.get(op.name[: -len(_AMAX_QUANT)], (0.0, ""))
        return max(0.0, experts * AMAX_LAUNCHES * host_op_s - host_op_s)
    if op.name.endswith(_QUANT):
        name = op.name[: -len(_QUANT)]
        experts, fmt = expert_gemms.get(name, (0.0, ""))
        launches = QUANT_LAUNCHES.get(fmt, 0) - (AMAX_LAUNCHES if name in amaxed else 0)
        if experts > 0 and launches > 0:
            return max(0.0, experts * launches * host_op_s - host_op_s)
    return 0.0


def segment_extra_host_s(ops: Sequence[Op], phase: str, framework: str) -> float:
    """The extra host seconds (reference host) of a run of ops under ``framework``: the
    sum of ``op_extra_host_s``; 0 where the framework does not run TE's grouped experts."""
    profile = framework_profile(framework)
    if not profile.te_moe_host or profile.host_op_s <= 0:
        return 0.0
    gemms = {op.name: (_local_experts(op), op.dtype) for op in ops
             if op.role.expert and op.kind == OpKind.GEMM and isinstance(op.shape, GemmShape)}
    if not gemms and not any(op.kind == OpKind.ROUTING for op in ops):
        return 0.0
    amaxed = frozenset(op.name[: -len(_AMAX_QUANT)] for op in ops
                       if op.name.endswith(_AMAX_QUANT))
    total = 0.0
    for op in ops:
        total += op_extra_host_s(op, phase, profile.host_op_s, gemms, amaxed)
    return total


def te_host_scale(system: System) -> float:
    """Factor on the measured MoE host times on ``system``: 0 off NVIDIA (no
    TransformerEngine), else reference / system single-thread speed (1 when the system
    has no host entry in hwprofiles/hosts.toml)."""
    if system.device.arch != "nvidia":
        return 0.0
    speed = system_host_speed(system.name)
    if speed is None:
        return 1.0
    return host_speed(REFERENCE_HOST) / speed
