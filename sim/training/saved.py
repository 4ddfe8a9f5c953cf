"""What a slot holds on a rank: the activations one micro-batch keeps until its backward,
and the weights its ops read. Both are read off the ops' roles (sim.ir.Role), never
off op names.
"""

from __future__ import annotations

from xpusim.sim.ir import Weight
from xpusim.sim.training.items import Comm, Item


def activation_bytes(
    items: list[Item], policy: str, modules: tuple[str, ...], input_bytes: float
) -> float:
    """Bytes one micro-batch leaves alive in this slot until its backward.

    Each op keeps the tensors its role names (``Role.saves``), each once however many ops
    read it, unless the recompute policy drops the module that produced it: "full" keeps
    only the slot input (the checkpoint), "selective" drops what ``modules`` recompute
    (recomputing "attn" re-runs its core too).
    """
    if not items:
        return 0.0
    if policy == "full":
        return input_bytes  # only the slot input is checkpointed
    dropped = set(modules) if policy == "selective" else set()
    if "attn" in dropped:
        dropped.add("core_attn")  # recomputing the attention module re-runs its core too
    total = 0.0
    kept: set[str] = set()
    for it in items:
        if isinstance(it, Comm):
            continue
        for saved in it.role.saves:
            if saved.tensor:
                if saved.tensor in kept:
                    continue  # another reader keeps this tensor already
                kept.add(saved.tensor)
            if saved.by not in dropped:
                total += saved.nbytes(it.dtype)
    return total


def weight_params(items: list[Item]) -> tuple[float, float]:
    """(dense, expert) weight elements on this rank, from the weights the ops read
    (``Role.weight``): routed-expert matrices apart, everything else dense; embedding
    tables are added after the matrices."""
    dense = expert = tables = 0.0
    for it in items:
        if isinstance(it, Comm):
            continue
        weight = it.role.weight
        if weight == Weight.EXPERT:
            expert += it.role.weight_elements
        elif weight == Weight.TABLE:
            tables += it.role.weight_elements
        elif weight != Weight.NONE:
            dense += it.role.weight_elements
    if tables:
        dense += tables
    return dense, expert
