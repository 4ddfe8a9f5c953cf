"""The kernel that carries an inference step's MoE tokens to their experts and back.

``transformer.ffn_items`` gives every MoE layer under EP two ``CommNeed`` s, the
dispatch (``moe_dispatch``) and the combine (``moe_combine``), each ``t x top_k x hidden
x dtype`` bytes per rank for ``t`` tokens a rank. By default (``collective``) the step
prices them as plain all-to-all collectives on the system (``network.comm_time_fn``).
Serving engines instead run dedicated EP kernels, which ``xpusim ep`` already models
(``sim/network/ep.py``, docs/ep.md): ``deepep`` (DeepEP / DeepEP-Ascend normal kernels)
and ``low-latency`` (DeepEP's low-latency kernels; on Huawei devices CANN's
MoeDistributeDispatch / MoeDistributeCombine). ``EPKernelComm`` prices the two needs
with ``simulate_ep`` instead, for the same tokens, shape and system that ``xpusim ep``
would be given; every other collective keeps the system's pricer. The needs stay in
the step as communication (their ``CollectiveKind``), only their time changes.

How a step maps onto ``EPConfig``:

* tokens per device = the step's tokens per EP rank (``StepShape.tokens``: requests /
  ep x new tokens each), read back from the need's bytes (``t = bytes / (top_k x
  hidden x dtype bytes)``, the lowering's formula inverted; an expected count, so it
  may be fractional);
* hidden, top-k and routed experts from the model spec; EP = the plan's ep;
* the dispatch in ``dispatch_dtype`` (a flag: ``bf16`` unless the engine quantises
  before dispatch, e.g. CloudMatrix-Infer's INT8 "early quantization"); the combine in
  16 bits (``COMBINE_DTYPE``): DeepEP's combine takes BF16 and DeepEP-Ascend's too
  (the S11/S12 combine rows of sim/data/validation/ep.toml, "combine rows bf16");
* same-node copies of the low-latency kernel over ``ll_intranode`` (``--ll-intranode``,
  ``LL_INTRANODE``): ``nic`` (default, NIC to NIC: DeepEP as launched) or ``fabric``
  (NVLink/xGMI stores beside the RDMA: DeepEP after PR 173's
  ``allow_nvlink_for_low_latency_mode``, UCCL-EP; docs/ep.md). The other kernels have
  no such choice, so ``fabric`` is refused with them;
* routing uniform and dropless. ASSUMPTION: a skewed ``--routing`` still scales the
  expert GEMMs (``routing.moe_load``) but not the kernel's bytes, as the collective
  path's bytes are uniform too;
* the EP group is devices 0..ep-1 filling nodes in order (``ep.py``) and the system
  is sized for it as ``xpusim ep`` sizes it (``system_for_ep``). That holds for an
  inference plan only with tp 1 (``ParallelPlan.ep_group``: with tp > 1 the group's
  devices are tp apart), so the kernels need ``--tp 1``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from xpusim.hwprofiles.spec import System
from xpusim.sim.errors import InputError
from xpusim.sim.ir import Collective, dtype_bytes
from xpusim.sim.models.spec import ModelSpec
from xpusim.sim.network.ep import LL_INTRANODE, EPConfig, simulate_ep, system_for_ep
from xpusim.sim.parallel import ParallelPlan

COLLECTIVE = "collective"
EP_DISPATCH_CHOICES = (COLLECTIVE, "deepep", "low-latency")
# Dispatched activations: 16-bit, or 1-byte where the engine quantises before dispatch.
EP_DISPATCH_DTYPES = ("bf16", "fp16", "fp8", "int8")
COMBINE_DTYPE = "bf16"
DISPATCH_NEED, COMBINE_NEED = "moe_dispatch", "moe_combine"  # transformer.ffn_items


LOW_LATENCY = "low-latency"


def check_ep_dispatch(kernel: str, dispatch_dtype: str, ll_intranode: str = "nic") -> None:
    """The ``--ep-dispatch``, ``--ep-dispatch-dtype`` and ``--ll-intranode`` flags name a
    kernel, a dtype and a same-node path; a path other than the default only with the
    low-latency kernel, the one kernel that has the choice (``network/ep.py``)."""
    if kernel not in EP_DISPATCH_CHOICES:
        raise InputError(
            f"--ep-dispatch {kernel}: choose one of {', '.join(EP_DISPATCH_CHOICES)}"
        )
    if dispatch_dtype not in EP_DISPATCH_DTYPES:
        raise InputError(
            f"--ep-dispatch-dtype {dispatch_dtype}: choose one of {', '.join(EP_DISPATCH_DTYPES)}"
        )
    if ll_intranode not in LL_INTRANODE:
        raise InputError(f"--ll-intranode {ll_intranode}: choose one of {', '.join(LL_INTRANODE)}")
    if ll_intranode != LL_INTRANODE[0] and kernel != LOW_LATENCY:
        raise InputError(ll_intranode_refusal(kernel))


def ll_intranode_refusal(kernel: str) -> str:
    """Why ``--ll-intranode`` is refused with ``kernel`` (the CLI's and the API's text)."""
    return (f"--ll-intranode picks the path of the low-latency kernel's same-node copies; "
            f"--ep-dispatch {kernel} has no such choice: give --ep-dispatch {LOW_LATENCY} "
            "or drop --ll-intranode")


@dataclass
class EPKernelComm:
    """A collective pricer: the MoE dispatch / combine needs by the EP kernel model,
    every other collective by ``inner`` (the system's pricer)."""

    inner: Callable[[Collective], float]
    spec: ModelSpec
    system: System  # sized for the EP group (``system_for_ep``)
    ep: int
    kernel: str  # "deepep" | "low-latency"
    dispatch_dtype: str
    need_dtype: str  # the lowering's dtype of the needs' bytes
    ll_intranode: str = "nic"  # LL_INTRANODE: the low-latency kernel's same-node path
    # (dispatch, combine) seconds by tokens per rank: a serving run asks for few sizes.
    _times: dict[float, tuple[float, float]] = field(default_factory=dict)

    def __call__(self, coll: Collective) -> float:
        if coll.name not in (DISPATCH_NEED, COMBINE_NEED):
            return self.inner(coll)
        dispatch_s, combine_s = self.times(self.tokens_per_rank(coll.bytes))
        return dispatch_s if coll.name == DISPATCH_NEED else combine_s

    def tokens_per_rank(self, nbytes: float) -> float:
        """``transformer.ffn_items``' bytes ``t x top_k x hidden x dtype`` inverted."""
        moe = self.spec.moe
        assert moe is not None
        return nbytes / (moe.top_k * self.spec.hidden * dtype_bytes(self.need_dtype))

    def config(self, tokens: float, dtype: str) -> EPConfig:
        """``xpusim ep``'s inputs for ``tokens`` a rank with activations in ``dtype``."""
        moe = self.spec.moe
        assert moe is not None
        return EPConfig(hidden=self.spec.hidden, top_k=moe.top_k, experts=moe.num_experts,
                        ep=self.ep, tokens_per_device=tokens, dtype_bytes=dtype_bytes(dtype),
                        dispatch=self.kernel, ll_intranode=self.ll_intranode)

    def times(self, tokens: float) -> tuple[float, float]:
        """(dispatch, combine) seconds of one MoE layer: the dispatch's time with the
        dispatch dtype, the combine's with 16-bit activations (two runs of the model,
        as the ep rows price the two dtypes)."""
        hit = self._times.get(tokens)
        if hit is None:
            dispatch = simulate_ep(self.config(tokens, self.dispatch_dtype), self.system)
            combine = simulate_ep(self.config(tokens, COMBINE_DTYPE), self.system)
            hit = self._times[tokens] = (dispatch.dispatch_time_s, combine.combine_time_s)
        return hit


def ep_kernel_comm(
    inner: Callable[[Collective], float],
    spec: ModelSpec,
    system: System,
    plan: ParallelPlan,
    dtype: str,
    kernel: str,
    dispatch_dtype: str,
    ll_intranode: str = "nic",
) -> Callable[[Collective], float]:
    """``inner`` itself for ``collective`` (or no EP); else an ``EPKernelComm`` around it."""
    check_ep_dispatch(kernel, dispatch_dtype, ll_intranode)
    if kernel == COLLECTIVE or plan.ep == 1 or spec.moe is None:
        return inner
    if plan.tp != 1:
        raise InputError(
            f"--ep-dispatch {kernel} models the EP group as {plan.ep} consecutive devices "
            f"(sim/network/ep.py); with --tp {plan.tp} its devices are {plan.tp} apart: "
            "use --tp 1 (data-parallel attention) or --ep-dispatch collective"
        )
    sized, _ = system_for_ep(system, plan.ep, None)
    return EPKernelComm(inner, spec, sized, plan.ep, kernel, dispatch_dtype, dtype,
                        ll_intranode)
