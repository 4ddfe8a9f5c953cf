"""A forward's priced items, kept to re-price the same step at another context.

A serving run prices each decode batch size at two or more context grid points
(``StepCosts``), and lowering plus pricing a step costs ~1 ms. Between two contexts of
the same (sequences, new tokens, phase) only the attention cores change: the step's
context enters the lowering only through ``StepShape.kv_len`` (``step_blocks`` ->
``layer_forward``), which only ``attention_ops`` reads — for each layer's attention core
and, with MLA, for the choice between the absorbed (kv_len > q_len) and the expanded
form. Keyed on ``context > 0`` as well, every other item of the step is the same value
at any context, priced by the same cost model (chosen by sequences and phase), so its
time is the same float. Re-pricing therefore rebuilds and prices only the attention
cores and sums the items in the same order: the same floats as lowering afresh
(``tests/test_priced_step.py`` compares the two with ``==``).
"""

from __future__ import annotations

from dataclasses import dataclass

from xpusim.sim.ir import Op, OpKind


@dataclass(frozen=True)
class PricedStep:
    """A step's distinct items in first-appearance order as (runs, seconds, is an
    attention op), and its attention cores as (entry index, layer that builds it)."""

    entries: tuple[tuple[int, float, bool], ...]
    cores: tuple[tuple[int, int], ...]

    def sums(self) -> tuple[float, float, float]:
        """(all items, attention ops, the other items): device seconds, each distinct
        item's time times its runs, added in first-appearance order."""
        total = attention_s = other_s = 0.0
        for count, t, is_attention in self.entries:
            total += count * t
            if is_attention:
                attention_s += count * t
            else:
                other_s += count * t
        return total, attention_s, other_s

    def with_cores(self, times: list[float]) -> PricedStep:
        """The same step with its attention cores at ``times`` (in ``cores`` order)."""
        entries = list(self.entries)
        for (index, _), t in zip(self.cores, times, strict=True):
            count, _, is_attention = entries[index]
            entries[index] = (count, t, is_attention)
        return PricedStep(tuple(entries), self.cores)


def block_layers(blocks: list[tuple[list, int]], start: int = 0) -> list[int]:
    """The first layer of each block of ``step_blocks`` (embedding, runs of same-kind
    layers, LM head): -1 for the embedding and LM head blocks. ``start``: the first
    layer of a pipeline stage's blocks."""
    first, layer = [-1], start
    for _, count in blocks[1:-1]:
        first.append(layer)
        layer += count
    return [*first, -1]


def attention_core(items: list[Op]) -> Op:
    """The one attention core among a layer's ``attention_ops``."""
    cores = [op for op in items if op.kind == OpKind.ATTENTION]
    assert len(cores) == 1, f"expected one attention core, got {len(cores)}"
    return cores[0]
