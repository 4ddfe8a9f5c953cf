"""What one serving iteration costs on a pipeline-parallel deployment, stage by stage.

The serving loop of ``xpusim infer --serve --pp P`` (sim/inference/serving_pp.py) needs
each stage's device time for a micro-batch's iteration, the hand-off between stages and
the engine's host work around it, not one summed step time: the stages work on different
micro-batches at once. Each stage is priced by its own ``StepCosts`` over the stage's
``StepSimulator`` (pipeline.py: its layers only, the embedding on the first stage, the LM
head on the last), with the same interpolation over context and token count as a
whole-model serving run; the hand-off is ``PipelineSimulator.send_s`` (each TP rank sends
its slice of the hidden states and residual, the next stage's TP group all-gathers them).
docs/inference.md, "Pipeline parallelism".
"""

from __future__ import annotations

from dataclasses import dataclass

from xpusim.sim.inference.graph_padding import padded_step
from xpusim.sim.inference.lowering import StepBatch
from xpusim.sim.inference.pipeline import PipelineSimulator
from xpusim.sim.inference.stepcosts import StepCosts


@dataclass(frozen=True)
class StageTimes:
    """One micro-batch iteration through the pipeline."""

    device: tuple[float, ...]  # each stage's device time, first stage first
    sends: tuple[float, ...]  # hand-off from stage i to i + 1 (P - 1 of them)
    before_s: float  # host work before the first stage: scheduling, inputs, new requests
    after_s: float  # host work once the last stage is done: sampling, outputs


class PipelineCosts:
    """Per-stage device times and host terms of serving iterations on ``pipe``."""

    def __init__(self, pipe: PipelineSimulator, graph_sizes: tuple[int, ...] = (),
                 exact: bool = False) -> None:
        self.pipe = pipe
        self.engine = pipe.engine  # rescaled to the system's host
        self.graph_sizes = graph_sizes
        self.stages = tuple(StepCosts(sim, graph_sizes=graph_sizes, exact=exact)
                            for sim in pipe.stages)
        self._sends: dict[int, tuple[float, ...]] = {}

    @property
    def pp(self) -> int:
        return len(self.stages)

    def sends(self, tokens: int) -> tuple[float, ...]:
        """The hand-offs of an iteration of ``tokens`` tokens (every row a stage runs,
        CUDA-graph padding rows included, travels to the next stage)."""
        hit = self._sends.get(tokens)
        if hit is None:
            batch = StepBatch(1, max(tokens, 1), 0, "prefill")
            hit = self._sends[tokens] = tuple(self.pipe.send_s(batch, i)
                                              for i in range(self.pp - 1))
        return hit

    def mixed(self, decode_batch: int, context: float, chunks: list[int],
              prefixes: list[int], sampled: int, admitted: int) -> StageTimes:
        """An in-flight-batching iteration: ``decode_batch`` decode tokens at mean
        ``context`` and the prompt ``chunks`` (``prefixes``: tokens each chunk's prompt
        already holds in the KV cache), each stage priced as ``StepCosts.mixed`` prices
        the whole model; the host terms are ``StepCosts.mixed``'s."""
        if chunks:
            device = tuple(s.mixed_device(decode_batch, context, chunks, prefixes)
                           for s in self.stages)
            tokens = decode_batch + sum(chunks)
        else:
            device = tuple(s.generation_device(decode_batch, context) for s in self.stages)
            tokens = padded_step(decode_batch, context, self.graph_sizes)[0]
        engine = self.engine
        before = engine.step_host_time(decode_batch + len(chunks)) + engine.request_time(admitted)
        return StageTimes(device, self.sends(tokens), before, engine.sampling_time(sampled))

    def prefill(self, sequences: int, prompt: float) -> StageTimes:
        """A prefill-only iteration (vLLM V0's prefill-first policy) of ``sequences``
        prompts of mean length ``prompt``; the new requests' host work before it."""
        device = tuple(s.prefill_device(sequences, prompt) for s in self.stages)
        engine = self.engine
        before = engine.step_host_time(sequences) + engine.request_time(sequences)
        return StageTimes(device, self.sends(round(sequences * prompt)), before,
                          engine.sampling_time(sequences))

    def decode(self, batch: int, context: float) -> StageTimes:
        """A decode-only iteration of ``batch`` requests at mean ``context`` (prefill-first)."""
        device = tuple(s.decode_device(batch, context) for s in self.stages)
        engine = self.engine
        return StageTimes(device, self.sends(batch), engine.step_host_time(batch),
                          engine.sampling_time(batch))
