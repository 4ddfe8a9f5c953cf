"""The first output token of an engine whose prefill does not sample it
(``EngineProfile.first_token = "generation"``: LMDeploy TurboMind 0.1).

TurboMind's context decode runs the prompt minus its last token (InternLM/lmdeploy
src/turbomind/models/llama/LlamaBatch.cc, ``contextDecode`` / ``ContextDecode``:
``invokePlusScalar(input_length_buf_ + base, -1, ...)``, ``get_input_len =
h_input_length_buf_[i] - 1``, skipped for a one-token input). The last prompt token enters
the first ``Generate()`` step, which samples the first output token, and the streaming
callback delivers it in ``Finish()`` after that step (``InternalThreadEntry``:
``Initialize(); ContextDecode(); ... Generate(); Finish();``). So the time to first token
of ``b`` prompts of ``p`` tokens is the prefill of ``b x (p - 1)`` tokens plus one decode
step of ``b`` requests at context ``p - 1``.

Both forwards run in one iteration of the engine's loop, so the engine's host work around
a step (scheduling, inputs, sampling: ``StepSimulator.host_terms``) is paid once: the
context decode is priced device-only and the generation step with the host terms
(docs/inference.md, "LMDeploy TurboMind 0.1: the first token comes from a generation step").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from xpusim.sim.errors import InputError
from xpusim.sim.inference.engine_profile import EngineProfile
from xpusim.sim.inference.lowering import StepBatch, StepResult, StepSimulator, step_bound


def from_generation(engine: EngineProfile) -> bool:
    """The engine samples the first output token in a generation step (TurboMind 0.1)."""
    return engine.first_token == "generation"


@dataclass(frozen=True)
class FirstTokenStep:
    """The time to first token of an engine with ``first_token = "generation"``."""

    prompt: int  # prompt tokens per request
    context: StepResult | None  # the context decode of prompt - 1 tokens (None: prompt 1)
    generation: StepResult  # the first generation step at context prompt - 1, host included
    step: StepResult  # the two composed (``composed``): what ``infer`` reports

    def as_dict(self) -> dict[str, Any]:
        """``infer --json``'s ``first_token``: the rule and both parts."""
        return {
            "sampled_by": "generation",
            "context_decode_tokens": self.prompt - 1,
            "generation_context": self.prompt - 1,
            "context_decode": None if self.context is None else self.context.as_dict(),
            "generation": self.generation.as_dict(),
        }


def first_token_batches(batch: int, prompt: int) -> tuple[StepBatch | None, StepBatch]:
    """(context decode, first generation step) of ``batch`` prompts of ``prompt`` tokens;
    no context decode for a one-token prompt (TurboMind skips it)."""
    if prompt < 1:
        raise InputError(f"a prompt needs >= 1 token (got {prompt})")
    context = StepBatch(batch, prompt - 1, 0, "prefill") if prompt > 1 else None
    return context, StepBatch(batch, 1, prompt - 1, "decode")


def first_token_step(sim: StepSimulator, batch: int, prompt: int) -> FirstTokenStep:
    """The time to first token of ``batch`` prompts of ``prompt`` tokens on ``sim``'s
    deployment: the context decode (device only) then the first generation step."""
    context_batch, generation_batch = first_token_batches(batch, prompt)
    context = None if context_batch is None else sim.run(context_batch, host=False)
    generation = sim.run(generation_batch)
    step = generation if context is None else composed(context, generation)
    return FirstTokenStep(prompt, context, generation, step)


def composed(first: StepResult, second: StepResult) -> StepResult:
    """Two forwards run back to back as one step: times, terms, bytes, kernels and tokens
    summed, the time by kind merged, the bound the largest summed term (as
    ``StepSimulator`` names it); the distinct experts touched are the larger count."""
    by_kind = dict(first.by_kind)
    for kind, t in second.by_kind.items():
        by_kind[kind] = by_kind.get(kind, 0.0) + t
    compute = first.compute_s + second.compute_s
    memory = first.memory_s + second.memory_s
    overhead = first.overhead_s + second.overhead_s
    host = first.host_s + second.host_s
    return StepResult(
        first.time_s + second.time_s, first.device_s + second.device_s, host, by_kind,
        compute, memory, overhead, step_bound(compute, memory, overhead, by_kind, host),
        first.kernels + second.kernels, first.weight_bytes_read + second.weight_bytes_read,
        first.kv_bytes_read + second.kv_bytes_read,
        max(first.experts_loaded, second.experts_loaded), first.tokens + second.tokens,
    )  # fmt: skip


def refuse_generation_first_token(engine: EngineProfile, command: str) -> None:
    """A serving run or SD study with an engine whose first token comes from a generation
    step: their schedulers sample it in the prefill step, so it would be mispriced."""
    if from_generation(engine):
        raise InputError(
            f"{command} with --engine {engine.name}: the engine samples each request's first "
            "token in a generation step (its profile's [scheduler] first_token = "
            "\"generation\"), which the serving and speculative-decoding loops do not model; "
            "it is characterised for single steps only (xpusim infer without --serve). Use "
            "a serving profile (trtllm-*, vllm-*) for this run"
        )


def refuse_pipeline(engine: EngineProfile, pp: int) -> None:
    """``infer --pp`` with such an engine: its first-token rule is modelled on one stage."""
    if pp > 1 and from_generation(engine):
        note = f" ({engine.pp_note})" if engine.pp_note else ""
        raise InputError(
            f"--pp {pp} with --engine {engine.name}: the engine has no pipeline "
            f"parallelism{note}; use --tp only"
        )
