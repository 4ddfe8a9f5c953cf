"""One inference forward through ``pp`` pipeline stages (``xpusim infer --pp P``).

The layers split into contiguous stages as vLLM 0.6 splits them (``stages.stage_layers``):
the embedding on the first stage, the LM head on the last. Each stage is a deployment of
``ep`` groups of ``tp`` ranks of its own (devices ``s x tp x ep`` onwards: TP innermost,
PP outermost, vLLM's rank order), priced by its own ``StepSimulator`` over its layers
only (``step_blocks(layers=...)``), so a stage's device time is the same lowering and
pricing as a whole-model step. Between two stages each TP rank sends its 1/tp slice of
the hidden states and residual to its peer (a send-recv on the system network, as
training prices its pipeline sends) and the receiving TP group all-gathers them
(``stages.activation_send``). One request batch traverses the stages in turn, so the
step's device time is the sum of the stage times and the hand-offs; the serving
engine's host work is added once around it. docs/inference.md, "Pipeline parallelism".
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from xpusim.hwprofiles.spec import System
from xpusim.sim.inference.engine_profile import NO_ENGINE, EngineProfile
from xpusim.sim.inference.lowering import (
    ACTIVATION_DTYPE,
    StepBatch,
    StepResult,
    StepSimulator,
    check_plan,
    step_shape,
)
from xpusim.sim.inference.routing import UNIFORM, Routing
from xpusim.sim.inference.stages import activation_send, stage_layers
from xpusim.sim.ir import Collective, CollectiveKind, dtype_bytes
from xpusim.sim.models.spec import ModelSpec
from xpusim.sim.network import comm_time_fn
from xpusim.sim.parallel import ParallelPlan

_COLLECTIVES = {str(k) for k in CollectiveKind}


@dataclass(frozen=True)
class PipelineStep:
    """A forward through the stages: the whole step, and each stage's part."""

    step: StepResult  # the step: stage times and hand-offs summed, host work around them
    stages: tuple[StepResult, ...]  # each stage's device work (no host work)
    layers: tuple[tuple[int, int], ...]  # [start, end) of each stage
    first_devices: tuple[int, ...]  # each stage's first device
    sends_s: tuple[float, ...]  # hand-off from stage i to i + 1 (send + TP all-gather)

    @property
    def bottleneck(self) -> int:
        """The stage with the longest device time (the first of equals)."""
        times = [s.device_s for s in self.stages]
        return times.index(max(times))

    def as_dict(self) -> dict[str, Any]:
        sends = [*self.sends_s, 0.0]
        return {
            "pp": len(self.stages),
            "bottleneck_stage": self.bottleneck,
            "bottleneck_s": self.stages[self.bottleneck].device_s,
            "sends_s": sum(self.sends_s),
            "stages": [
                {
                    "stage": i,
                    "layers": list(self.layers[i]),
                    "first_device": self.first_devices[i],
                    "device_s": stage.device_s,
                    "send_s": sends[i],
                    "bound": stage.bound,
                    "kernels": stage.kernels,
                    "weight_bytes_read": stage.weight_bytes_read,
                    "kv_bytes_read": stage.kv_bytes_read,
                }
                for i, stage in enumerate(self.stages)
            ],
        }


class PipelineSimulator:
    """Prices forwards of one model on a deployment with ``plan.pp`` stages."""

    def __init__(
        self,
        spec: ModelSpec,
        system: System,
        plan: ParallelPlan,
        engine: EngineProfile = NO_ENGINE,
        dtype: str = "bf16",
        routing: Routing = UNIFORM,
        attention_impl: str | None = None,
    ) -> None:
        check_plan(spec, system, plan)
        self.spec, self.system, self.plan, self.dtype = spec, system, plan, dtype
        self.layers = tuple(stage_layers(spec.layers, plan.pp))
        width = plan.tp * plan.ep  # devices per stage
        self.stages = tuple(
            StepSimulator(
                spec, system, replace(plan, pp=1, first_device=plan.first_device + s * width),
                engine, dtype, routing, attention_impl=attention_impl, layers=span,
            )
            for s, span in enumerate(self.layers)
        )  # fmt: skip
        self.engine = self.stages[0].engine  # rescaled to the system's host
        self._comm = comm_time_fn(system)

    def send_s(self, batch: StepBatch, stage: int) -> float:
        """The hand-off from ``stage`` to the next: each TP rank's send of its slice to
        its peer, priced as one send-recv pair (the tp pairs run at once on their own
        links), then the receivers' all-gather of the whole tensors over their TP group."""
        src, dst = self.stages[stage].plan, self.stages[stage + 1].plan
        tokens = step_shape(batch, src).tokens
        act = ACTIVATION_DTYPE if dtype_bytes(self.dtype) < 2 else self.dtype
        nbytes = activation_send(tokens, self.spec.hidden, src.tp, act)
        pair = (src.first_device, dst.first_device)
        t = self._comm(Collective("pp.send", CollectiveKind.SEND_RECV, pair, nbytes))
        if dst.tp > 1:
            t += self._comm(Collective("pp.all_gather", CollectiveKind.ALL_GATHER,
                                       dst.tp_group(), nbytes * dst.tp))
        return t

    def run(self, batch: StepBatch, host: bool = True) -> PipelineStep:
        """One forward of ``batch`` through every stage in turn."""
        stages = tuple(sim.run(batch, host=False) for sim in self.stages)
        sends = tuple(self.send_s(batch, i) for i in range(len(stages) - 1))
        device = sum(s.device_s for s in stages) + sum(sends)
        before, after = self.stages[0].host_terms(batch, host)
        total = self.engine.step_time(device, before, after)
        step = _combined(stages, sends, device, total, batch.tokens)
        first = tuple(sim.plan.first_device for sim in self.stages)
        return PipelineStep(step, stages, self.layers, first, sends)


def _combined(
    stages: tuple[StepResult, ...], sends: tuple[float, ...], device: float, total: float,
    tokens: float,
) -> StepResult:
    """The whole step from its stages: times, bytes and kernels summed over the stages
    (per TP rank position along the pipeline), the hand-offs as send-recv."""
    by_kind: dict[str, float] = {}
    for stage in stages:
        for kind, t in stage.by_kind.items():
            by_kind[kind] = by_kind.get(kind, 0.0) + t
    if sends:
        by_kind["pp send"] = sum(sends)
    host = total - device
    if host > 0:
        by_kind["host"] = host
    compute = sum(s.compute_s for s in stages)
    memory = sum(s.memory_s for s in stages)
    overhead = sum(s.overhead_s for s in stages)
    terms = {
        "compute": compute,
        "memory": memory,
        "kernel overhead": overhead,
        "communication": sum(v for k, v in by_kind.items() if k in _COLLECTIVES) + sum(sends),
        "host": host,
    }
    return StepResult(
        total, device, host, by_kind, compute, memory, overhead,
        max(terms, key=lambda k: terms[k]), sum(s.kernels for s in stages),
        sum(s.weight_bytes_read for s in stages), sum(s.kv_bytes_read for s in stages),
        stages[0].experts_loaded, tokens,
    )  # fmt: skip
