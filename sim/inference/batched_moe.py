"""An MoE layer's items after the router, for the decode template (``batched_step``).

Per step: ``moe_items`` builds them at the step's routed load, as ``step_blocks`` does,
and ``moe_run`` finds them among a step's distinct items (twentieth session).

Over a block of batch sizes: an MoE decode step's routed load is not affine in the batch
size B while the tokens touch fewer experts than there are (uniform routing: E·(1 − (1 −
k/E)^t) experts, fractional rows per expert), so those items are built per step. Once
the expected count reaches a fixed float (all E/ep local experts: Mixtral's 8 from B ≈ 131
at top-2, where (3/4)^t < 2⁻⁵⁴ and 1 − (3/4)^t rounds to 1), every number of every item
(FLOPs, bytes, GEMM rows: T·k/E rows per expert) is affine in B. ``affine_moe_items``
finds where in a block that holds (the routed load of each size, computed) and gives
each item's numbers as ``v(1) + (B − 1)·step``, accepted only where the values are
dyadic rationals that stay exact over the block (a power-of-two expert count; 60 experts'
T·k/60 rows are not) and the law reproduces the item built at the run's two first sizes
and its last. ``batched_step`` prices them in numpy with the rest of the block's
items and checks the block's sums at its ends against the per-step path.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from xpusim.sim.ir import GemmShape, Op

# At most this many fractional bits in a number's value or step (Mixtral: T·2/8 rows).
_FRACTION_BITS = 16
_MANTISSA = 2 ** 53  # integers below this are exact in float64


def moe_items(sim: Any, batch: Any) -> list[Op]:
    """The items of ``batch``'s MoE layers after the router (top-k, permute, experts,
    unpermute, shared experts) as ``step_blocks`` builds them: ``ffn_items`` at the step's
    routed load (``padded_moe_load``), at 16-bit activations, in the KV format. Their
    numbers follow the load (experts touched, padded tokens), not the batch size."""
    from xpusim.sim.inference.kvcache import in_kv_format
    from xpusim.sim.inference.lowering import sixteen_bit_activations, step_shape
    from xpusim.sim.inference.routing import step_moe_load
    from xpusim.sim.workloads.transformer import Sharding, ffn_items

    spec, plan = sim.spec, sim.plan
    shape = step_shape(batch, plan)
    load = step_moe_load(spec, shape.tokens, batch.dummies, batch.q_len, plan.ep, sim.routing)
    layer = next((i for i in range(*sim.layers) if spec.is_moe_layer(i)), None)
    if layer is None:
        return []
    items = ffn_items(spec, layer, shape, Sharding(tp=plan.tp, ep=plan.ep), sim.dtype, load)
    built = sixteen_bit_activations(items[1:], sim.dtype)
    if not all(isinstance(it, Op) for it in built):
        return []  # a collective among them (expert parallelism): not this path
    return [in_kv_format(it, sim.dtype) for it in built if isinstance(it, Op)]


def moe_run(items: list[tuple[Any, int, int]], fresh: list[Op]) -> range | None:
    """Where ``fresh`` (``moe_items``) lies in a step's distinct ``items``, equal item by
    item: its indices if it lies there exactly once, else None (two MoE layer kinds, an
    item shared with another layer, no MoE layer)."""
    n = len(fresh)
    if not n:
        return None
    starts = [i for i in range(len(items) - n + 1)
              if all(items[i + j][0] == fresh[j] for j in range(n))]
    return range(starts[0], starts[0] + n) if len(starts) == 1 else None


def saturated_from(sim: Any, batch: Any, lo: int, hi: int) -> int | None:
    """The first batch size of ``lo`` .. ``hi`` from which every size up to ``hi`` routes
    to the same (float) number of experts, ``step_moe_load`` computed at each size; None
    off uniform routing (a sampled load: no such run) or with padding rows."""
    from xpusim.sim.inference.lowering import step_shape
    from xpusim.sim.inference.routing import step_moe_load

    if sim.routing.kind != "uniform" or batch.dummies != 0:
        return None
    spec, plan = sim.spec, sim.plan
    active = [step_moe_load(spec, step_shape(_at(batch, b), plan).tokens, 0.0, batch.q_len,
                            plan.ep, sim.routing).active_experts for b in range(lo, hi + 1)]
    start = hi
    while start > lo and active[start - 1 - lo] == active[-1]:
        start -= 1
    return start


def affine_moe_items(sim: Any, batch: Any, start: int, hi: int
                     ) -> list[tuple[Op, dict[str, tuple[float, float]]]] | None:
    """The MoE items of ``start`` .. ``hi`` (one routed expert count throughout:
    ``saturated_from``) as (the item at ``start``, per number that changes its value at
    B = 1 and its step per unit of B: ``batched_step._Item``'s ``grows``), or None where
    a number is not exactly affine there (module docstring)."""
    if hi - start < 2:
        return None
    at = [moe_items(sim, _at(batch, b)) for b in (start, start + 1, hi)]
    if not at[0] or not len(at[0]) == len(at[1]) == len(at[2]):
        return None
    out = []
    for a, b, c in zip(*at, strict=True):
        grows = _affine(a, b, c, start, hi)
        if grows is None:
            return None
        out.append((a, grows))
    return out


def _affine(a: Op, b: Op, c: Op, start: int, hi: int) -> dict[str, tuple[float, float]] | None:
    """(value at B = 1, step) of each number of item ``a`` (at ``start``), ``b`` (the next
    size) and ``c`` (at ``hi``): None unless the three are one item at three sizes and
    every number is exactly ``base + (B − 1)·step`` at all three, on a grid of at most
    ``_FRACTION_BITS`` fractional bits whose values over the block stay exact."""
    if not (_same(a, b) and _same(a, c)):
        return None
    grows = {}
    for name, (va, vb, vc) in _numbers((a, b, c)).items():
        step = vb - va
        base = va - (start - 1) * step
        bits = max(_fraction_bits(v) for v in (va, vb, vc, step, base))
        top = max(abs(base), abs(va), abs(vc))
        if bits > _FRACTION_BITS or top * 2.0 ** bits >= _MANTISSA:
            return None
        if (base + (start - 1) * step, base + start * step, base + (hi - 1) * step) != (va, vb, vc):
            return None
        grows[name] = (base, step)
    return grows


def _same(a: Op, b: Op) -> bool:
    """One item at two sizes: the same name, kind, dtype, unit and memory levels, and a
    GEMM's shape but its rows."""
    if (a.name, a.kind, a.dtype, a.unit, tuple(a.bytes)) != (b.name, b.kind, b.dtype, b.unit,
                                                              tuple(b.bytes)):
        return False
    sa, sb = a.shape, b.shape
    if isinstance(sa, GemmShape) and isinstance(sb, GemmShape):
        return replace(sa, m=0.0) == replace(sb, m=0.0)
    return type(sa) is type(sb)


def _numbers(ops: tuple[Op, ...]) -> dict[str, tuple[float, ...]]:
    """The numbers ``batched_step._price`` reads of each op: FLOPs, main-memory bytes, and
    a GEMM's rows."""
    out = {"flops": tuple(op.flops for op in ops), "bytes": tuple(op.main_bytes for op in ops)}
    shapes = [op.shape for op in ops]
    if all(isinstance(s, GemmShape) for s in shapes):
        out["m"] = tuple(s.m for s in shapes if isinstance(s, GemmShape))
    return out


def _fraction_bits(v: float) -> int:
    """Fractional bits of ``v``'s exact binary value (a float is a dyadic rational)."""
    return v.as_integer_ratio()[1].bit_length() - 1


def _at(batch: Any, sequences: int) -> Any:
    return type(batch)(float(sequences), batch.q_len, batch.context, batch.phase, batch.dummies)
