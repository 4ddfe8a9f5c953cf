"""CPU activation offloading (``--cpu-offload-layers N``): Megatron-Core's
``cpu_offloading`` run through TransformerEngine's offload handler (docs/training.md,
"CPU activation offloading").

Sources (read 2026-12-06):

* Megatron-Core ``TransformerBlock`` builds the context with
  ``get_cpu_offload_context(cpu_offloading, cpu_offloading_num_layers, num_layers,
  cpu_offloading_activations, cpu_offloading_weights, cpu_offloading_double_buffering)``
  and commits one offload group after every transformer layer
  (megatron/core/transformer/transformer_block.py); ``TransformerConfig.__post_init__``
  refuses ``cpu_offloading_num_layers`` outside [0, num_layers), PP > 1 and any recompute
  (megatron/core/transformer/transformer_config.py; ``parallel._check_offload``).
  Megatron-Bridge's ``set_recompute_overrides(cfg, cpu_offloading_num_layers=N)`` sets
  ``cpu_offloading = True``, ``cpu_offloading_weights = False`` and leaves double
  buffering off (scripts/performance/utils/helpers.py).
* What moves: every tensor a TE module or Megatron's SwiGLU marks for offload
  (``mark_activation_offload``: LayerNormLinear's input, mu, rsigma and normed input;
  Linear's saved input; fused attention's q, k, v, out and softmax statistics;
  ``BiasSwiGLUFunction``'s input with ``cpu_offload_input``, megatron/core/fusions/
  fused_bias_swiglu.py): the layer's saved activations, here ``layers.activation_bytes``
  of the layer slot. Layers N..L-1 keep theirs.
* When (NVIDIA/TransformerEngine transformer_engine/pytorch/cpu_offload_v1.py @ 047883f3,
  ``AsyncDoubleBufferGroupOffloadHandler``): groups are layers 0..N-1; ``layer_window_map``
  (``window_map``) spreads them over the L layers. Forward: group 0's device-to-host copy
  starts on the D2H stream when layer 0's forward ends; at the end of layer window[k]'s
  forward the compute stream waits for the D2H stream (two-way ``wait_stream``), frees
  group k and starts group k+1's copy. Backward: before layer window[k]'s backward the
  compute stream waits for the H2D stream, then starts reloading group k; before layer
  0's backward it waits for the last reload. So each copy hides behind about L/N layers
  of compute and only what exceeds it is exposed (``exposed_s``).
* Memory: the peak is at the end of the forward, where layers N..L-1 and group N-1
  (waited for and freed only after layer L-1) are resident: the activations of layers
  0..N-2 are off the GPU (``offloaded_bytes``). The backward's reloads (no double buffer:
  fresh tensors, one group ahead) never exceed that.

The copies run at the system's host link (``System.host_link``), one direction at a
time per stream. The waits are added to the engine's step (``simulate.price_step``) as
compute-stream time that hides nothing else: a slight overestimate where the engine's
compute stream already idles on DP traffic at that point.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from xpusim.hwprofiles.spec import System
from xpusim.sim.errors import InputError
from xpusim.sim.ir import Op
from xpusim.sim.parallel import ParallelPlan
from xpusim.sim.training import layers as L
from xpusim.sim.training.chunks import RankPlan
from xpusim.sim.training.units import main_grad_dtype


def window_map(layers: int, offload: int) -> list[int]:
    """TE's ``layer_window_map``: the layer at whose forward end group k's copy is waited
    for (and group k+1's started), and before whose backward group k's reload starts."""
    out: list[int] = []
    constant = 0
    for i in range(offload):
        w = (layers // offload) * (i + 1) - 1
        if i < layers % offload:
            w += i + 1
            constant = i + 1
        else:
            w += constant
        out.append(w)
    return out


def offloaded_bytes(layer_acts: Sequence[float], offload: int) -> float:
    """Activation bytes off the GPU at the memory peak (end of the forward): those of
    layers 0..N-2; group N-1 is still resident until after layer L-1."""
    return float(sum(layer_acts[: max(offload - 1, 0)]))


def exposed_s(fwd: Sequence[float], bwd: Sequence[float], copy: Sequence[float]) -> tuple[float, float]:
    """(forward, backward) seconds per micro-batch the compute stream waits for the
    copies: ``fwd[j]`` / ``bwd[j]`` layer j's compute, ``copy[k]`` group k's copy time
    in one direction (N = len(copy) offloaded layers), the handler's synchronisation."""
    n, layers = len(copy), len(fwd)
    if n == 0:
        return 0.0, 0.0
    win = window_map(layers, n)
    t = d2h = wait_f = 0.0
    k = 0
    for j in range(layers):
        t += fwd[j]
        if j == 0:
            d2h = t + copy[0]
        if k < n and win[k] == j:
            w = max(0.0, d2h - t)
            wait_f, t = wait_f + w, t + w
            if k + 1 < n:
                d2h = t + copy[k + 1]
            k += 1
    t = h2d = wait_b = 0.0
    k = n
    for c in reversed(range(layers)):
        if win[k - 1] == c:
            w = max(0.0, h2d - t)
            wait_b, t = wait_b + w, t + w
            h2d = t + copy[k - 1]
            k -= 1 if k > 1 else 0
        if c == 0:
            w = max(0.0, h2d - t)
            wait_b, t = wait_b + w, t + w
        t += bwd[c]
    return wait_f, wait_b


def layer_activations(rp: RankPlan, plan: ParallelPlan) -> list[float]:
    """Saved activation bytes of each transformer layer slot of ``rp``, in slot order."""
    return [
        L.activation_bytes(items, plan.layer_recompute(name), plan.recompute_modules,
                           ch.input_bytes)
        for ch in rp.chunks
        for name, items in ch.slots
        if name.startswith("L")
    ]


def host_bandwidth(system: System) -> float:
    """The system's host link, one direction per device; an error when unpublished."""
    if system.host_link is None:
        raise InputError(
            f"--cpu-offload-layers: system '{system.name}' has no [host_link] (the device's "
            "link to host memory) in its profile; add one with its source"
        )
    return system.host_link.bandwidth


def layer_compute_s(rp: RankPlan, plan: ParallelPlan, op_s: Callable[[Op], float]
                    ) -> tuple[list[float], list[float]]:
    """(forward, backward) device seconds of each transformer layer of ``rp``: its ops
    priced one by one (``op_s``: the pricing's op time). Collectives and host time are
    left out, so each layer's hiding time is a lower bound."""
    fwd: list[float] = []
    bwd: list[float] = []
    for ch in rp.chunks:
        for name, items in ch.slots:
            if not name.startswith("L"):
                continue
            back = L.backward_items(items, plan.sequence_parallel, main_grad_dtype(plan))
            fwd.append(sum(op_s(it) for it in items if isinstance(it, Op)))
            bwd.append(sum(op_s(it) for it in back if isinstance(it, Op)))
    return fwd, bwd


def rank_exposed_s(rp: RankPlan, plan: ParallelPlan, system: System,
                   op_s: Callable[[Op], float]) -> float:
    """Seconds per micro-batch rank ``rp``'s compute waits for its offload copies."""
    n = plan.cpu_offload_layers
    if n <= 0:
        return 0.0
    bw = host_bandwidth(system)
    acts = layer_activations(rp, plan)
    fwd, bwd = layer_compute_s(rp, plan, op_s)
    f, b = exposed_s(fwd, bwd, [a / bw for a in acts[:n]])
    return f + b
