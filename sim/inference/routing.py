"""Which experts the tokens of one step touch: uniform, Zipf or a measured histogram.

Decode reads the weights of every distinct expert its tokens route to, so the
distinct count drives weight traffic. Under uniform routing the expectation is
closed-form, E * (1 - (1 - k/E)^t) (MoESD Eq. 8). For skewed routing we sample:
each token draws k distinct experts without replacement with probabilities p
(Gumbel top-k, seeded), and the EP rank holding the most assignments sets the
pace (it finishes last), so its assignments and distinct experts form the MoELoad.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from xpusim.sim.errors import InputError
from xpusim.sim.inference.ep_dispatch import check_ep_dispatch
from xpusim.sim.inputs import read_text
from xpusim.sim.limits import check_zipf
from xpusim.sim.models.spec import ModelSpec
from xpusim.sim.workloads.transformer import MoELoad, expected_active_experts, uniform_moe_load


@dataclass(frozen=True)
class Routing:
    """How tokens choose experts.

    kind: "uniform" (closed form), "zipf" (p_i ~ 1/i^zipf_s), "histogram" (p_i ~
    histogram[i], e.g. measured expert counts). ``samples`` draws are averaged.
    ``ep_dispatch`` / ``ep_dispatch_dtype`` / ``ll_intranode``: the kernel that carries
    the tokens to their experts under EP, the dtype it dispatches in and, for the
    low-latency kernel, the path of its same-node copies (``ep_dispatch.py``;
    "collective": plain all-to-all collectives).
    """

    kind: str = "uniform"
    zipf_s: float = 1.0
    histogram: tuple[float, ...] = ()
    seed: int = 0
    samples: int = 16
    ep_dispatch: str = "collective"
    ep_dispatch_dtype: str = "bf16"
    ll_intranode: str = "nic"

    def probabilities(self, num_experts: int) -> np.ndarray:
        if self.kind == "zipf":
            p = 1.0 / np.arange(1, num_experts + 1, dtype=float) ** self.zipf_s
        elif self.kind == "histogram":
            if len(self.histogram) != num_experts:
                raise InputError(
                    f"routing histogram has {len(self.histogram)} entries; the model "
                    f"has {num_experts} experts: give one count per expert"
                )
            p = np.asarray(self.histogram, dtype=float)
            if (p < 0).any() or p.sum() <= 0:
                raise InputError("routing histogram: counts must be >= 0 and not all zero")
        elif self.kind == "uniform":
            p = np.ones(num_experts)
        else:
            raise InputError(f"unknown routing '{self.kind}': use uniform, zipf or histogram")
        return p / p.sum()


UNIFORM = Routing()


def routing_from_text(
    text: str, seed: int = 0, ep_dispatch: str = "collective", ep_dispatch_dtype: str = "bf16",
    ll_intranode: str = "nic",
) -> Routing:
    """The ``--routing`` option: ``uniform``, ``zipf:S`` or the path of a per-expert counts
    file; with the ``--ep-dispatch`` kernel, ``--ep-dispatch-dtype`` and ``--ll-intranode``
    (``ep_dispatch.py``)."""
    check_ep_dispatch(ep_dispatch, ep_dispatch_dtype, ll_intranode)
    return replace(_distribution(text, seed), ep_dispatch=ep_dispatch,
                   ep_dispatch_dtype=ep_dispatch_dtype, ll_intranode=ll_intranode)


def _distribution(text: str, seed: int) -> Routing:
    """``routing_from_text``'s distribution of expert choices."""
    if text == "uniform":
        return Routing(seed=seed)
    if text == "zipf" or text.startswith("zipf:"):
        s = check_zipf(text[5:], f"--routing {text}") if ":" in text else 1.0
        return Routing("zipf", zipf_s=s, seed=seed)
    if not Path(text).exists():
        raise InputError(f"--routing {text}: use uniform, zipf:S, or a file of per-expert counts")
    body = read_text(text, "--routing counts file")
    try:
        counts = tuple(float(x) for x in body.replace(",", " ").split())
    except ValueError:
        raise InputError(
            f"--routing {text}: the file must hold numbers (one count per expert)"
        ) from None
    if not counts or not all(math.isfinite(c) and c >= 0 for c in counts) or not sum(counts):
        raise InputError(
            f"--routing {text}: the counts must be finite, >= 0 and not all zero"
        )
    return Routing("histogram", histogram=counts, seed=seed)


def moe_load(
    spec: ModelSpec, tokens_per_rank: float, ep: int, routing: Routing = UNIFORM
) -> MoELoad:
    """MoELoad of the busiest EP rank for ``tokens_per_rank`` tokens on each of ``ep`` ranks."""
    if spec.moe is None:
        raise InputError(f"model '{spec.name}' has no MoE layers")
    if routing.kind == "uniform" or tokens_per_rank <= 0:
        return uniform_moe_load(spec, tokens_per_rank, ep)
    moe = spec.moe
    if moe.num_experts % ep:
        raise InputError(f"EP={ep} does not divide the {moe.num_experts} experts of {spec.name}")
    tokens = max(1, round(tokens_per_rank * ep))
    p = routing.probabilities(moe.num_experts)
    logp = np.log(np.maximum(p, 1e-300))
    rng = np.random.default_rng(routing.seed)
    per_rank = moe.num_experts // ep
    assign_sum = active_sum = 0.0
    for _ in range(routing.samples):
        # Gumbel top-k: the k largest of log p + Gumbel noise are a weighted sample
        # of k distinct experts without replacement.
        keys = logp + rng.gumbel(size=(tokens, moe.num_experts))
        chosen = np.argpartition(-keys, moe.top_k - 1, axis=1)[:, : moe.top_k]
        counts = np.bincount(chosen.ravel(), minlength=moe.num_experts).reshape(ep, per_rank)
        busiest = int(np.argmax(counts.sum(axis=1)))
        assign_sum += counts[busiest].sum()
        active_sum += np.count_nonzero(counts[busiest])
    scale = tokens_per_rank * ep / tokens  # undo rounding of fractional token counts
    return MoELoad(
        tokens=assign_sum / routing.samples * scale, active_experts=active_sum / routing.samples
    )


def padded_moe_load(
    spec: ModelSpec, tokens_per_rank: float, dummies_per_rank: float, ep: int,
    routing: Routing = UNIFORM,
) -> MoELoad:
    """``moe_load`` of ``tokens_per_rank`` tokens of which ``dummies_per_rank`` are CUDA-graph
    padding rows with identical inputs (vLLM V0 pads with token 0 at position 0:
    model_runner.py ``input_tokens.extend(itertools.repeat(0, cuda_graph_pad_size))``;
    ``EngineProfile.cuda_graph_pad_rows`` "identical"), so they route alike: each adds
    its k assignments, but together they touch the experts of one token only."""
    if dummies_per_rank <= 0:
        return moe_load(spec, tokens_per_rank, ep, routing)
    assert spec.moe is not None
    real = tokens_per_rank - dummies_per_rank
    load = moe_load(spec, real + min(dummies_per_rank, 1.0), ep, routing)
    extra = max(dummies_per_rank - 1.0, 0.0) * spec.moe.top_k
    return MoELoad(tokens=load.tokens + extra, active_experts=load.active_experts)


def experts_touched(spec: ModelSpec, tokens: float, routing: Routing = UNIFORM) -> float:
    """Distinct experts (of one MoE layer, all EP ranks) touched by ``tokens`` tokens."""
    if spec.moe is None:
        return 0.0
    if routing.kind == "uniform":
        return expected_active_experts(spec.moe.num_experts, spec.moe.top_k, tokens)
    return moe_load(spec, tokens, 1, routing).active_experts


def step_moe_load(spec: ModelSpec, tokens_per_rank: float, dummies: float, q_len: float,
                  ep: int, routing: Routing = UNIFORM) -> MoELoad:
    """A serving step's routed load on one rank: ``padded_moe_load`` with the step's
    CUDA-graph padding rows (``dummies`` sequences of ``q_len`` tokens) spread over the EP
    ranks (the lowering's and the batched decode template's one formula)."""
    return padded_moe_load(spec, tokens_per_rank, dummies * q_len / ep, ep, routing)
