"""What a simulated training step reports: step time, throughput and MFU under each
convention, memory per stage, per-stage busy time, bubble and exposed communication,
compute time and FLOPs by phase and op kind, and the terms that explain the step.

``stage_stats`` reads them off the engine's result; ``sim.training.simulate`` assembles
the ``TrainingResult``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from xpusim.hwprofiles.spec import Device
from xpusim.sim.engine import SimResult
from xpusim.sim.ir import Stream
from xpusim.sim.models.spec import ModelSpec
from xpusim.sim.parallel import ParallelPlan, microbatches
from xpusim.sim.schedules import closed_form_bubble
from xpusim.sim.training.framework import framework_profile
from xpusim.sim.training.memory import MemoryBreakdown, format_breakdown
from xpusim.sim.training.spans import length, overlap, union_arrays


@dataclass
class StageStats:
    stage: int
    rank: int
    busy_s: dict[str, float]  # compute phases and comm labels -> seconds
    bubble_s: float
    exposed_comm_s: float
    work_s: float  # forward + backward + recompute compute time
    # Compute-stream time added by SM contention with overlapped collectives (included
    # in busy_s and work_s; sim.engine_share).
    compute_slowed_s: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)  # every field, in declaration order (the JSON's keys)


@dataclass
class TrainingResult:
    model: str
    system: str
    plan: ParallelPlan
    devices: int
    step_time_s: float
    tokens_per_step: float
    model_flops_per_token: float
    peaks: dict[str, float]  # name -> per-device peak FLOP/s used for MFU
    flops_conventions: dict[str, float]  # convention -> model FLOPs per token (mfu_conventions)
    memory: list[MemoryBreakdown]
    stages: list[StageStats]
    compute_by_kind_s: dict[str, float]  # per step, mean over stages
    flops_by_phase: dict[str, float]  # "phase:op kind" -> lowered FLOPs per step, all devices
    simulated_ranks: int
    tasks: int
    wall_s: float
    sim: SimResult | None = field(default=None, repr=False)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_per_step / self.step_time_s

    @property
    def mfu_by_peak(self) -> dict[str, float]:
        achieved = self.model_flops_per_token * self.tokens_per_s / self.devices
        return {name: achieved / peak for name, peak in self.peaks.items()}

    def mfu_table(self) -> dict[str, dict[str, float]]:
        """MFU for every (FLOPs-per-token convention, peak) pair: the same run, counted
        the ways papers count it."""
        per_device = self.tokens_per_s / self.devices
        return {
            conv: {name: f * per_device / peak for name, peak in self.peaks.items()}
            for conv, f in self.flops_conventions.items()
        }

    @property
    def mfu(self) -> float:
        return self.mfu_by_peak["matrix"]

    @property
    def peak_memory(self) -> MemoryBreakdown:
        return max(self.memory, key=lambda m: m.total)

    @property
    def oom(self) -> bool:
        return any(m.oom for m in self.memory)

    @property
    def bubble_fraction(self) -> float:
        return sum(s.bubble_s for s in self.stages) / len(self.stages) / self.step_time_s

    @property
    def exposed_comm_s(self) -> float:
        return sum(s.exposed_comm_s for s in self.stages) / len(self.stages)

    @property
    def compute_slowed_s(self) -> float:
        """Mean over stages of the compute time added by SM contention."""
        return sum(s.compute_slowed_s for s in self.stages) / len(self.stages)

    def breakdown(self) -> dict[str, float]:
        """Mean over stages of busy time per phase / comm group, plus bubble and exposed comm."""
        keys = sorted({k for s in self.stages for k in s.busy_s})
        n = len(self.stages)
        out = {k: sum(s.busy_s.get(k, 0.0) for s in self.stages) / n for k in keys}
        out["bubble"] = sum(s.bubble_s for s in self.stages) / n
        out["exposed_comm"] = self.exposed_comm_s
        return out

    def as_dict(self) -> dict[str, Any]:
        m = microbatches(self.plan)
        return {
            "model": self.model,
            "system": self.system,
            "devices": self.devices,
            "plan": self.plan.as_dict(),
            "microbatches": m,
            "step_time_s": self.step_time_s,
            "tokens_per_step": self.tokens_per_step,
            "tokens_per_s": self.tokens_per_s,
            "tokens_per_s_per_device": self.tokens_per_s / self.devices,
            "model_flops_per_token": self.model_flops_per_token,
            "mfu": self.mfu,
            "mfu_by_peak": self.mfu_by_peak,
            "peak_flops": self.peaks,
            "flops_per_token_conventions": self.flops_conventions,
            "mfu_conventions": self.mfu_table(),
            "memory_per_device_bytes": self.peak_memory.total,
            "memory": self.peak_memory.as_dict(),
            "memory_by_stage": [mem.as_dict() for mem in self.memory],
            "oom": self.oom,
            "bubble_fraction": self.bubble_fraction,
            "bubble_closed_form": closed_form_bubble(
                self.plan.pp, m, self.plan.vpp if self.plan.interleaved else 1
            ),
            "exposed_comm_s": self.exposed_comm_s,
            "compute_slowed_s": self.compute_slowed_s,
            "breakdown_s": self.breakdown(),
            "compute_by_kind_s": self.compute_by_kind_s,
            "flops_by_phase": self.flops_by_phase,
            "stages": [s.as_dict() for s in self.stages],
            "simulated_ranks": self.simulated_ranks,
            "tasks": self.tasks,
            "wall_s": self.wall_s,
        }


_PHASES = ("fwd", "bwd", "recompute", "optimizer")


def stage_stats(sim: SimResult, rank: int, stage: int) -> StageStats:
    """Busy time by phase and comm group; bubble = compute-stream idle not explained by comm.

    Reads the engine's per-(rank, stream, label) busy time and interval unions, which
    every run keeps (no per-task records needed)."""
    busy: dict[str, float] = {}
    compute_iv: list[list[float]] = []
    async_iv: list[list[float]] = []
    blocking = work = 0.0
    for (r, stream, label), d in sim.busy_by_label.items():
        if r != rank:
            continue
        key = label if label in _PHASES else f"comm_{label}"
        busy[key] = busy.get(key, 0.0) + d
        if stream == Stream.COMPUTE:
            compute_iv.append(sim.spans[(r, stream, label)])
            if key.startswith("comm_"):
                blocking += d
            elif key != "optimizer":
                work += d
        elif label != "pp":
            async_iv.append(sim.spans[(r, stream, label)])
    cu, au = union_arrays(compute_iv), union_arrays(async_iv)
    exposed_async = length(au) - overlap(au, cu)
    idle = sim.makespan_s - length(cu)
    bubble = max(0.0, idle - exposed_async)
    return StageStats(stage, rank, busy, bubble, blocking + exposed_async, work,
                      sim.slowed_s.get(rank, 0.0))


def device_peaks(device: Device, dtype: str) -> dict[str, float]:
    """Per-device peak FLOP/s used as MFU denominators: the matrix unit's peak in
    ``dtype``, the marketing figure, and a peak a paper quotes (``quoted_tflops``)."""
    peaks = {"matrix": device.peak_for("matrix", dtype)}
    marketing = device.marketing_peak.get(dtype) or device.marketing_peak.get(
        "fp16" if dtype == "bf16" else dtype
    )
    if marketing:
        peaks["marketing"] = marketing
    quoted = device.quoted_peak.get(dtype)
    if quoted:
        peaks["quoted"] = quoted
    return peaks


def mfu_conventions(spec: ModelSpec, seq: int) -> dict[str, float]:
    """Model FLOPs per token under the conventions papers use (3 x forward, no recompute).

    ``causal``: attention over s/2 keys on average (this simulator's ``mfu``);
    ``full_attention``: over all s keys (PaLM's 12·L·H·Q·T, what many reports use);
    ``+mtp``: the MTP modules with their output head counted as model work.
    """
    from xpusim.sim.models.counting import model_flops_per_token

    out = {}
    for causal in (True, False):
        for mtp in (False, True):
            name = ("causal" if causal else "full_attention") + ("+mtp" if mtp else "")
            out[name] = model_flops_per_token(spec, seq, causal=causal, include_mtp=mtp)
    return out


def oom_message(result_or_memory: TrainingResult | list[MemoryBreakdown]) -> str:
    mems = (
        result_or_memory.memory
        if isinstance(result_or_memory, TrainingResult)
        else result_or_memory
    )
    worst = max(mems, key=lambda m: m.total)
    return "out of memory: " + format_breakdown(worst)


_KIND_SOURCES = {
    "gemm": "matrix-unit roofline x the device's GEMM efficiency curve and tile quantisation "
    "(hwprofiles device [efficiency], sim/cost/roofline.py)",
    "elementwise": "HBM roofline (memory_max x bandwidth); includes bias/GELU/residual/dropout, "
    "the fused rotary embedding on Q and K (sim/training/layers._with_rotary), "
    "the unfused fp32 gradient accumulation (plan.grad_accum_fusion) and norms' backward; "
    "with --framework torchtitan-eager the unfused eager passes (sim/training/eager.py) and "
    "FSDP2's all-gather copy-out; with --framework composer-fsdp1 FSDP1's post-backward "
    "gradient passes (sim/training/fsdp1.py); with a low-precision --dtype the casts of GEMM inputs "
    "and output gradients (*_quant: both usages, one FP8 copy where [kernels] "
    "non_tn_fp8_gemm; with --fp8-scaling current each cast's own amax pass, *_amax_quant; "
    "with --dtype nvfp4 an amax pass, a rowwise cast and a random-Hadamard columnwise cast, "
    "*_rht_quant; sim/training/lowprec.py, sim/training/nvfp4.py)",
    "norm": "HBM roofline: LayerNorm/RMSNorm read + write of the activations",
    "softmax": "HBM roofline: cross-entropy softmax over B*s*V/tp fp32 logits",
    "embedding": "HBM roofline: embedding row gather (and its scatter-add in backward)",
    "reduction": "HBM roofline",
    "memcpy": "HBM roofline",
    "permute": "HBM roofline: MoE token permutation/unpermutation",
    "scale_swizzle": "MXFP8 / NVFP4 on NVIDIA: TransformerEngine 2.x swizzles both operands' "
    "block scales into cuBLASLt's layout before every GEMM, two launches per GEMM (HBM roofline "
    "+ launch; sim/training/lowprec.py)",
}
_PHASE_NAMES = {"fwd": "forward", "bwd": "backward", "recompute": "recompute"}
# compute_by_kind_s key of the compute stream's waits for CPU-offload copies (per step).
OFFLOAD_KEY = "offload:exposed"


def offload_source(plan: ParallelPlan) -> str:
    return (f"--cpu-offload-layers {plan.cpu_offload_layers}: TransformerEngine's offload "
            "handler (cpu_offload_v1.py AsyncDoubleBufferGroupOffloadHandler): each layer's "
            "D2H copy waited for L/N layers of forward later, its H2D reload started L/N "
            "layers of backward ahead, over the system's [host_link] "
            "(sim/training/offload.py)")


def explain_terms(result: TrainingResult) -> list[tuple[str, float, str]]:
    """(term, seconds per step on the mean stage, source) for the predicted step.

    Compute terms are the stages' mean busy time per phase and op kind; communication
    counts only its exposed part (what the compute stream waits for); the bubble is the
    compute-stream idle time no communication explains; ``other`` is the rest of the
    makespan (a stage finishing before the slowest one, overlap bookkeeping).
    """
    plan = result.plan
    out: list[tuple[str, float, str]] = []
    host_src = framework_profile(plan.framework).source
    for key, seconds in sorted(result.compute_by_kind_s.items(), key=lambda kv: -kv[1]):
        phase, kind = key.split(":", 1)
        if seconds <= 0:
            continue
        if phase == "optimizer":
            out.append((
                "optimizer step",
                seconds,
                f"Adam over the ZeRO-{plan.zero} shard, HBM-bound "
                "(lowering.adam_bytes_per_param: 30 B/param at 16 bits; with --framework "
                "composer-fsdp1 Composer's eager DecoupledAdamW, 80 B/param, sim/training/"
                "fsdp1.py) + gradient-norm pass for clipping (+ fp16 loss-scale unscale)",
            ))
            continue
        if key == OFFLOAD_KEY:
            out.append(("cpu activation offload: copies not hidden (exposed)", seconds,
                        offload_source(plan)))
            continue
        if kind == "host":
            out.append((f"{_PHASE_NAMES.get(phase, phase)}: host dispatch (exposed)", seconds,
                        f"framework '{plan.framework}': {host_src}"))
            continue
        src = _KIND_SOURCES.get(kind, "roofline")
        if kind == "attention":
            src = (f"attention implementation '{plan.attention_impl}' "
                   "(sim/cost/attention_impl.py)")
        out.append((f"{_PHASE_NAMES.get(phase, phase)}: {kind}", seconds, src))
    b = result.breakdown()
    groups = ", ".join(
        f"{k[5:]} {b[k]:.3g} s" for k in sorted(b) if k.startswith("comm_") and b[k] > 0
    )
    out.append((
        "communication (exposed)",
        result.exposed_comm_s,
        f"sim/network on the system topology (busy per stage: {groups}); TP/CP/EP on the "
        "compute stream are exposed, DP/PP/overlapped EP only where the compute waits",
    ))
    if result.compute_slowed_s > 0:
        out.append((
            "compute slowed by overlapped collectives",
            result.compute_slowed_s,
            "SM contention: an NCCL collective kernel holds one SM per channel while in "
            "flight, so compute-bound kernels overlapping it run on the other SMs "
            "(sim/cost/pricing.overlap_compute_share, sim/engine_share.py)",
        ))
    out.append((
        "pipeline bubble",
        b["bubble"],
        f"schedule {'interleaved' if plan.interleaved else '1F1B'} run by the engine "
        "(sim/schedules.py); closed form (p-1)/(m*v) only a check",
    ))
    rest = result.step_time_s - sum(t for _, t, _ in out)
    out.append((
        "other (stage imbalance, overlap bookkeeping)",
        rest,
        "makespan minus the terms above, on the mean stage",
    ))
    return out
