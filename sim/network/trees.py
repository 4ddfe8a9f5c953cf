"""NCCL's double binary tree between nodes, and the traffic it puts on each node.

NVIDIA/nccl src/graph/trees.cc: ``ncclGetBtree`` builds a binary tree over the node
indices from their bit patterns (root 0 has one child, every other inner node two),
``ncclGetDtree`` adds a second tree, the mirror of the first for an even node count
(rank r plays n-1-r) and the first shifted by one for an odd count, and each tree
carries half of the buffer. A node sends its half-buffer D = S/2 once to its parent
(reduce) and once to each child (broadcast), and receives as much: the busiest node,
an inner node with two children in one tree and a leaf in the other, sends 4D = 2S,
against 2(N-1)/N x S for a ring. At N = 2 both are S.
"""

from __future__ import annotations

from functools import cache


def btree(nranks: int, rank: int) -> tuple[int, int, int]:
    """(parent, child0, child1) of ``rank`` in NCCL's binary tree; -1 for none."""
    bit = 1
    while bit < nranks:
        if bit & rank:
            break
        bit <<= 1
    if rank == 0:
        return -1, -1, (bit >> 1) if nranks > 1 else -1
    up = (rank ^ bit) | (bit << 1)
    if up >= nranks:
        up = rank ^ bit
    lowbit = bit >> 1
    down0 = -1 if lowbit == 0 else rank - lowbit
    down1 = -1 if lowbit == 0 else rank + lowbit
    while down1 >= nranks:  # as trees.cc: step the low bit down until in bounds
        down1 = -1 if lowbit == 0 else rank + lowbit
        lowbit >>= 1
    return up, down0, down1


def _sends(nranks: int, rank: int) -> int:
    """Half-buffers ``rank`` sends in one tree: one to its parent, one to each child."""
    return sum(1 for peer in btree(nranks, rank) if peer >= 0)


@cache
def dtree_max_sends(nranks: int) -> int:
    """The most half-buffers any node sends over both trees of the double binary tree."""
    if nranks <= 1:
        return 0
    best = 0
    for rank in range(nranks):
        # Tree 1 is the mirror (even count) or the shift by one (odd count) of tree 0.
        second = nranks - 1 - rank if nranks % 2 == 0 else (rank - 1 + nranks) % nranks
        best = max(best, _sends(nranks, rank) + _sends(nranks, second))
    return best
