"""Where a training job's ranks sit on its system (``xpusim train --devices N
[--per-node K]``; docs/training.md, 'Part of a system').

Rank r of a plan (``Layout``'s global rank) runs on device r: one contiguous block from
device 0 that fills node 0, then node 1, ... With ``ParallelPlan.per_node`` = k the job
uses the first k devices of each node instead (rank r on device r mod k of node r // k),
the placement a scheduler's segments give (Megatron-Bridge's GB200 launcher asks Slurm
for ``--segment`` of 16 four-GPU trays: 64 GPUs of each 72-GPU rack). The lowering keeps
rank ids; the network prices a collective over the devices of its ranks (``device_of``)
and the node-spanning checks count ``rank_nodes`` consecutive ranks per node.
"""

from __future__ import annotations

from typing import Any

from xpusim.hwprofiles.spec import System
from xpusim.sim.errors import InputError
from xpusim.sim.parallel import ParallelPlan


def job_devices(plan: ParallelPlan, system: System) -> int:
    """The devices a training plan runs on, out of ``system``'s.

    A plan whose ``dp`` is set spans ``plan.devices`` (= world) devices from device 0:
    one contiguous block (rank r on device r), or with ``per_node`` = k the first k
    devices of each node in turn (``device_of``), so the network prices the links those
    devices really have (NVLink inside a node, the NICs across); a job smaller than the
    system leaves the other devices idle (``xpusim train --devices``; docs/training.md,
    'Part of a system'). An unset ``dp`` (0) fills the whole system. Degrees that are
    not yet checked fall through to ``validate_plan``, which names them."""
    system_devices, devices_per_node = system.num_devices, system.devices_per_node
    degrees: tuple[object, ...] = (plan.tp, plan.cp, plan.pp, plan.dp)
    if not plan.dp and plan.per_node not in (0, devices_per_node):
        raise InputError(
            f"per_node (--per-node) {plan.per_node!r} leaves devices of every node idle, "
            "so the job cannot fill the system: give its size (--devices N, or --dp)"
        )
    if not plan.dp or not all(isinstance(d, int) and d >= 1 for d in degrees):
        return system_devices
    if plan.first_device != 0:
        raise InputError(
            f"a training plan starts at device 0 (got first_device={plan.first_device}): "
            "its ranks are the system's first devices"
        )
    k = check_per_node(plan, devices_per_node)
    nodes = -(-plan.devices // k)
    if plan.devices > system_devices or nodes * devices_per_node > system_devices:
        raise InputError(
            f"the plan needs tp*cp*dp*pp = {plan.tp}*{plan.cp}*{plan.dp}*{plan.pp} = "
            f"{plan.devices} devices ({k} per node: {nodes} node(s)); the system has "
            f"{system_devices}: lower --dp or raise --nodes"
        )
    return plan.devices


def check_per_node(plan: ParallelPlan, devices_per_node: int) -> int:
    """The devices the plan uses per node (``per_node``, 0 = all ``devices_per_node``),
    checked: at most a node's, and (when given) dividing the plan's devices if it spans
    nodes."""
    k: Any = plan.per_node  # a plan file or API caller may pass any value
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= devices_per_node:
        raise InputError(
            f"per_node (--per-node) must be an integer from 1 to the {devices_per_node} "
            f"devices of a node (0: all of them), got {k!r}"
        )
    per: int = k or devices_per_node
    if k and plan.devices > k and plan.devices % k:  # contiguous: the last node may be part
        raise InputError(
            f"--per-node {per} does not divide the plan's {plan.devices} devices: "
            "every node used holds the same number of ranks; change --per-node"
        )
    return per


def device_of(plan: ParallelPlan, rank: int, devices_per_node: int) -> int:
    """The device of ``rank``: ``rank`` itself, or with ``per_node`` = k, device
    rank mod k of node rank // k (nodes of ``devices_per_node``)."""
    k = plan.per_node
    if not k or k == devices_per_node:
        return rank
    return rank // k * devices_per_node + rank % k


def rank_nodes(plan: ParallelPlan, devices_per_node: int) -> int:
    """Consecutive ranks per node: ``per_node``, else the node's devices."""
    return plan.per_node or devices_per_node
