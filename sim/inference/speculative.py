"""Speculative decoding (SD): draft gamma tokens, verify them in one target forward.

One SD round over a batch of B requests (MoESD Eq. 2, with the draft's gamma
sequential steps as in its Eq. 4):

    t_round = gamma * t_draft_step(B) + t_verify(B, gamma+1 tokens each) + t_reject(B)

t_reject is the rejection sampler's device passes over the B x gamma x vocab fp32
probabilities of target and draft (``rejection_ops``, priced by the cost model) plus
the engine profile's host terms (``reject_s``, ``reject_per_token_s``).

The target scores gamma+1 positions per request (the gamma drafted tokens plus the
bonus position), as vLLM does; the step times come from the simulator (ops ->
cost model -> engine) with the serving engine's host overheads. With a
batch-expansion scorer (vLLM V0) that forward is B x (gamma+1) one-token decode
sequences (``scoring_batch``). CUDA graphs pad the decode-shaped forwards (the AR
step, each draft step, a batch-expanded scoring forward) to the engine's captured
sizes (``padded_run``, ``xpusim.sim.inference.graph_padding``). A round yields
E = 1 + sum_{i=1..gamma} prod_{j<=i} alpha_j tokens per request, which for a
constant alpha is (1 - alpha^(gamma+1)) / (1 - alpha) (Leviathan et al.; MoESD
Eq. 5 writes it as sigma * (gamma+1)). Speedup = E * t_ar / t_round, where t_ar
is one plain decode step (MoESD Eq. 4).

Target efficiency (MoESD §3.1) = T_T(B,1) / T_T(B,gamma): plain decode step time
over verification time; here the verification forward is the gamma+1-token one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from scipy.optimize import brentq
from xpusim.hwprofiles.spec import Device, System
from xpusim.sim import ops
from xpusim.sim.cost import RooflineModel
from xpusim.sim.errors import InputError, NegativeVerdict
from xpusim.sim.inference.engine_profile import NO_ENGINE, EngineProfile
from xpusim.sim.inference.graph_padding import capture_sizes, padded_step, padding_dummies
from xpusim.sim.inference.kvcache import MemoryPlan, plan_memory
from xpusim.sim.inference.lowering import StepBatch, StepResult, StepSimulator
from xpusim.sim.inference.routing import UNIFORM, Routing
from xpusim.sim.ir import Op
from xpusim.sim.models.spec import ModelSpec
from xpusim.sim.parallel import ParallelPlan

HEAD_KINDS = ("eagle", "mtp")


def check_draft_vocab(target: ModelSpec, draft: ModelSpec | str, flag: str = "--draft") -> None:
    """A draft model proposes token ids of the target's vocabulary: vLLM's SpecDecodeWorker
    asserts the two vocab sizes are equal (vllm/spec_decode/spec_decode_worker.py,
    ``_vocab_size``: "make sure it's consistent between draft and target workers"). A
    draft of another tokenizer (qwen2 target, llama draft) was priced without a word."""
    if isinstance(draft, str) or draft.vocab == target.vocab:
        return
    raise InputError(
        f"{flag} {draft.name}: its vocabulary ({draft.vocab:,} tokens) is not the target "
        f"{target.name}'s ({target.vocab:,}); a draft must share the target's tokenizer (vLLM "
        "asserts equal vocab sizes): pick a draft of the same family, or eagle / mtp"
    )


def expected_tokens(alpha: float | tuple[float, ...], gamma: int) -> float:
    """Tokens one SD round emits per request: 1 + sum_i prod_{j<=i} alpha_j."""
    rates = _rates(alpha, gamma)
    total, survive = 1.0, 1.0
    for a in rates:
        survive *= a
        total += survive
    return total


def _rates(alpha: float | tuple[float, ...], gamma: int) -> tuple[float, ...]:
    rates = (alpha,) * gamma if isinstance(alpha, int | float) else tuple(alpha)
    if len(rates) != gamma:
        raise InputError(
            f"per-position acceptance has {len(rates)} rates; gamma is {gamma}: "
            "give one rate per drafted position"
        )
    for a in rates:
        if not 0.0 <= a <= 1.0:
            raise InputError(f"acceptance rate {a} is outside [0, 1]")
    return rates


def sigma_to_alpha(sigma: float, gamma: int) -> float:
    """Invert MoESD Eq. 5, sigma = [(1 - a^(g+1)) / (1 - a)] / (g+1), for a."""
    lo = 1.0 / (gamma + 1)
    if not lo <= sigma <= 1.0:
        raise InputError(f"sigma must be in [1/(gamma+1), 1] = [{lo:.3f}, 1], got {sigma}")
    if sigma >= 1.0:
        return 1.0
    if sigma <= lo:
        return 0.0
    return brentq(lambda a: expected_tokens(a, gamma) / (gamma + 1) - sigma, 0.0, 1.0 - 1e-12)


def rejection_ops(batch: int, gamma: int, vocab: int) -> list[Op]:
    """The device work of vLLM's rejection sampler for one round (fp32 probabilities).

    vLLM 0.6 ``RejectionSampler`` (modified rejection sampling, Leviathan et al.) takes
    the target's and the draft's probabilities at the gamma drafted positions of every
    request, [B, gamma, vocab] each in fp32, and
    1. forms the recovered distribution max(0, p_target - p_draft), normalised: reads
       both tensors, writes one (sub, clamp, sum, divide ~ 4 FLOPs per element);
    2. samples from it by the exponential race argmax(p / q), q ~ Exp(1): reads the
       recovered distribution, writes the noise (~3 FLOPs: draw, divide, compare).
    The accept test itself touches B x gamma scalars (negligible). The bonus position
    is sampled by the ordinary sampler, which the engine's step cost covers.
    """
    numel = float(batch * gamma * vocab)
    return [
        ops.elementwise("rejection.recovered_probs", numel, "fp32", 4.0, inputs=2, outputs=1),
        ops.elementwise("rejection.sample", numel, "fp32", 3.0, inputs=1, outputs=1),
    ]


def rejection_device_time(device: Device, batch: int, gamma: int, vocab: int) -> float:
    """Seconds of the rejection sampler's device passes (memory-bound roofline cost)."""
    model = RooflineModel(device)
    return sum(model.time(op).time_s for op in rejection_ops(batch, gamma, vocab))


def scoring_batch(engine: EngineProfile, batch: int, gamma: int, context: float) -> StepBatch:
    """The target's scoring forward of one round over ``batch`` requests at ``context``.

    "batch_expansion" (vLLM 0.5.x / 0.6.x with CUDA graphs; vllm/spec_decode/
    batch_expansion.py ``BatchExpansionTop1Scorer._expand_batch``): each request becomes
    gamma+1 one-token decode sequences (``_get_token_ids_to_score``: [], [t1], ...,
    [t1..tg]; ``token_chunk_size=1``, ``is_prompt`` False), the i-th attending to
    context + 1 + i positions; the scorer worker runs them as one ordinary decode batch
    of B x (gamma+1) (0.6.3 disables the MQA scorer unless ``enforce_eager``:
    spec_decode_worker.py ``create_worker``). Priced as that batch at the mean context
    context + gamma/2. Otherwise one forward of B sequences x gamma+1 query tokens.
    """
    if engine.spec_scorer == "batch_expansion":
        return StepBatch(batch * (gamma + 1), 1, context + gamma / 2, "verify")
    return StepBatch(batch, gamma + 1, context, "verify")


def draft_rows(engine: EngineProfile, batch: int, bonus_share: float) -> int:
    """Rows of each draft step of a round over ``batch`` requests.

    vLLM V0 (0.5.5 .. 0.6.x, vllm/spec_decode/multi_step_worker.py
    ``_expand_execute_model_request``): a request whose previous round ended on the bonus
    token (every draft accepted: spec_decode_worker.py
    ``_track_sequences_with_bonus_tokens``) is run with and without that token, so the
    proposer's ``sampler_output`` runs all gamma steps on B + n rows; n is taken at its
    mean, B x ``bonus_share`` (``bonus_share``: P(all gamma drafts accepted), rounded to
    whole rows). Other engines (``draft_bonus_expansion`` false): B.
    """
    if not engine.draft_bonus_expansion:
        return batch
    return batch + round(batch * bonus_share)


def draft_steps_time(engine: EngineProfile, step_s: float, rows: int, gamma: int) -> float:
    """Wall time of a round's gamma draft forwards, each ``step_s`` with its host terms.

    vLLM V0 (v0.5.5 .. v0.6.3.post1, ``vllm/spec_decode/multi_step_worker.py``
    ``sampler_output``): when the draft runs on ``TP1DraftModelRunner`` and
    ``supports_gpu_multi_step`` holds (decode only, flash-attn backend, no LoRA), the
    proposer calls ``execute_model`` once with ``num_steps = gamma``;
    ``draft_model_runner.py`` prepares the inputs on the host once and advances them on
    the GPU between steps (``_gpu_advance_step``; "we could get rid of most CPU-GPU
    synchronization and data transfer overheads by keeping model input and output tensors
    on GPU all the time"; sampler outputs are not serialised to the CPU). With
    ``draft_prepare_once`` the per-sequence host term is therefore paid once per round,
    the per-forward one (``draft_step_overhead``) every step. Exact for serial host work
    (``host_overlap = "none"``); other overlap rules keep gamma full steps.
    """
    if not engine.draft_prepare_once or engine.host_overlap != "none":
        return gamma * step_s
    per_seq = engine.step_overhead_per_seq_s * rows * engine.host_scale
    return gamma * step_s - (gamma - 1) * per_seq


def all_accepted(alpha: float | tuple[float, ...], gamma: int) -> float:
    """P(a round accepts all gamma drafts): the product of the per-position rates."""
    share = 1.0
    for a in _rates(alpha, gamma):
        share *= a
    return share


def round_graph_sizes(engine: EngineProfile) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(captured sizes of the AR and draft decode steps, of the scoring forward): the
    engine's ``cuda_graph_batch_sizes`` under its own limits; the scoring forward is
    padded only when it is an ordinary decode batch (``spec_scorer`` "batch_expansion")."""
    graphs = capture_sizes(engine.cuda_graph_batch_sizes, engine.max_num_seqs,
                           engine.max_batched_tokens)
    return graphs, scoring_graphs(engine, graphs)


def scoring_graphs(engine: EngineProfile, graphs: tuple[int, ...]) -> tuple[int, ...]:
    """The captured sizes the scoring forward pads to: the decode steps' ``graphs`` when it
    is an ordinary decode batch (``spec_scorer`` "batch_expansion"), else none."""
    return graphs if engine.spec_scorer == "batch_expansion" else ()


def padded_run(sim: StepSimulator, batch: StepBatch, graphs: Sequence[int]) -> StepResult:
    """``sim.run(batch)`` with CUDA-graph padding of a one-token-per-sequence forward: the
    device work of the padded batch (``graph_padding.padded_step``: the dummies hold no
    context; with identical padding rows they route as one token in MoE layers) and the
    host work of the real sequences (the runner's per-sequence input
    preparation and sampling cover the real ones; vLLM's ``_get_cuda_graph_pad_size``
    only extends the input tensors). Unpadded (the same result as ``sim.run``) when
    ``batch`` is already a captured size, too large for a graph, or not one-token."""
    if batch.q_len != 1:
        return sim.run(batch)
    padded, context = padded_step(int(batch.sequences), batch.context, graphs)
    if padded == batch.sequences:
        return sim.run(batch)
    dummies = padding_dummies(sim.engine.cuda_graph_pad_rows, int(batch.sequences), padded)
    device = sim.run(replace(batch, sequences=padded, context=context, dummies=dummies),
                     host=False)
    before, after = sim.host_terms(batch, True)
    total = sim.engine.step_time(device.time_s, before, after)
    host = total - device.time_s
    top = max(device.compute_s, device.memory_s, device.overhead_s)
    bound = "host" if host > top and device.bound != "communication" else device.bound
    return replace(device, time_s=total, host_s=host, bound=bound)


def head_spec(target: ModelSpec, kind: str) -> tuple[ModelSpec, int]:
    """A one-layer draft head on the target's devices, and its input projection width.

    EAGLE (Li et al. 2024): one decoder layer of the target's width with a dense
    FFN (Mixtral's EAGLE uses the expert's intermediate size), an fc over
    [token embedding, target feature] (2h -> h), and the target's embedding and LM
    head. MTP (DeepSeek-V3): one target layer (MoE if the target is) with eh_proj
    (2h -> h) and the shared embedding and head.
    """
    if kind == "eagle":
        inner = target.moe.expert_ffn if target.moe else target.ffn
        spec = replace(
            target, name=f"eagle-head({target.name})", layers=1, ffn=inner, moe=None, mtp_layers=0
        )
    elif kind == "mtp":
        spec = replace(target, name=f"mtp-head({target.name})", layers=1, mtp_layers=0)
        if target.moe is not None:
            spec = replace(spec, moe=replace(target.moe, first_dense_layers=0, layer_freq=1))
    else:
        raise InputError(
            f"unknown draft head '{kind}': use one of {', '.join(HEAD_KINDS)} or a model name"
        )
    return spec, 2 * target.hidden


def check_head_devices(draft: ModelSpec | str | None, draft_devices: int | None) -> None:
    """A head runs on the target's devices with the target's plan (``draft_simulator``):
    a ``--draft-devices`` given with one was ignored silently."""
    if isinstance(draft, str) and draft in HEAD_KINDS and draft_devices not in (None, 1):
        raise InputError(
            f"--draft-devices {draft_devices}: the {draft} head runs inside the target, on its "
            "devices and plan (no separate draft model); drop --draft-devices"
        )


def draft_simulator(
    target: ModelSpec,
    draft: ModelSpec | str,
    system: System,
    plan: ParallelPlan,
    engine: EngineProfile,
    dtype: str = "bf16",
    routing: Routing = UNIFORM,
    draft_plan: ParallelPlan | None = None,
) -> StepSimulator:
    """The draft's step simulator: a head on the target's plan, or a model on ``draft_plan``.

    Draft forwards pay the proposer's per-step host cost instead of the target's.
    """
    draft_engine = replace(engine, step_overhead_s=engine.draft_step_overhead_s)
    if isinstance(draft, str):
        head, fc_in = head_spec(target, draft)
        return StepSimulator(head, system, plan, draft_engine, dtype, routing, fc_in)
    return StepSimulator(draft, system, draft_plan or ParallelPlan(tp=1), draft_engine, dtype)


def require_draft_fit(
    target_memory: MemoryPlan,
    draft: ModelSpec | str,
    system: System,
    draft_tp: int,
    engine: EngineProfile,
    dtype: str,
    what: str,
) -> None:
    """Out-of-memory verdict (exit 3) when a draft model does not fit beside the target.

    vLLM runs a draft model on the target's first ``draft_tp`` devices (it has no
    devices of its own), so on those devices both models' weights and activation
    workspaces share the usable memory (HBM x gpu_memory_utilization). A head (eagle,
    mtp) is part of the target's own weights and needs no check here.
    """
    if isinstance(draft, str):
        return
    if draft_tp > system.num_devices:
        raise InputError(
            f"--draft-devices {draft_tp}: the system has {system.num_devices} devices; "
            f"pass --draft-devices <= {system.num_devices}"
        )
    dm = plan_memory(
        draft,
        system.device.hbm_capacity,
        draft_tp,
        1,
        dtype,
        engine.memory_utilization,
        engine.max_batched_tokens,
        max_num_seqs=engine.max_num_seqs,
    )
    need = target_memory.weights + target_memory.activations + dm.weights + dm.activations
    if need > target_memory.capacity:
        gib = 2**30
        raise NegativeVerdict(
            f"{what}: the draft {draft.name} does not fit beside the target: target weights "
            f"{target_memory.weights / gib:.1f} GiB + activations "
            f"{target_memory.activations / gib:.1f} GiB + draft weights {dm.weights / gib:.1f} "
            f"GiB (TP {draft_tp}) + activations {dm.activations / gib:.1f} GiB = "
            f"{need / gib:.1f} GiB > {target_memory.capacity / gib:.1f} GiB usable per device; "
            "use a smaller draft, more --draft-devices, or more target devices",
            {
                "target": target_memory.as_dict(),
                "draft": dm.as_dict(),
                "needed_bytes": need,
                "fits": False,
            },
        )


@dataclass(frozen=True)
class SDRow:
    """One batch size of an SD study (seconds; experts per MoE layer, whole model)."""

    batch: int
    gamma: int
    t_ar_s: float
    t_sd_round_s: float
    t_draft_s: float
    t_verify_s: float
    t_reject_s: float
    expected_tokens: float
    speedup: float
    target_efficiency: float
    experts_loaded: float  # distinct routed experts touched by the verify pass
    experts_loaded_ar: float  # ... by the plain decode step
    bound_ar: str
    bound_verify: str

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class SpeculativeModel:
    """Target + draft on a system; ``row(batch)`` prices one SD round against plain decoding.

    ``draft`` is a ModelSpec (a separate small model with its own ``draft_plan``,
    by default one device: vLLM's draft runs TP=1 on the first GPU) or a head kind
    in HEAD_KINDS (runs on the target's devices with the target's plan).
    """

    def __init__(
        self,
        target: ModelSpec,
        draft: ModelSpec | str,
        system: System,
        plan: ParallelPlan,
        gamma: int,
        alpha: float | tuple[float, ...],
        engine: EngineProfile = NO_ENGINE,
        context: float = 512.0,
        draft_plan: ParallelPlan | None = None,
        dtype: str = "bf16",
        routing: Routing = UNIFORM,
    ) -> None:
        if gamma < 1:
            raise InputError(f"gamma must be >= 1, got {gamma}")
        self.gamma = gamma
        self.alpha = alpha
        self.tokens_per_round = expected_tokens(alpha, gamma)
        self.engine = engine
        self.context = context
        self.target = StepSimulator(target, system, plan, engine, dtype, routing)
        # The sampler runs eagerly (outside CUDA graphs) on the target's first device.
        self.reject_device = engine.device_for_step(system.device, None)
        # With EP the requests are split over the ep groups (data-parallel attention,
        # lowering.step_shape): each group samples and rejects only its own.
        self.ep = plan.ep
        self.vocab = target.vocab
        self.draft = draft_simulator(
            target, draft, system, plan, engine, dtype, routing, draft_plan
        )
        # CUDA-graph sizes the decode steps and the scoring forward are padded to.
        self.graphs, self.scoring_graphs = round_graph_sizes(engine)

    def row(self, batch: int) -> SDRow:
        g = self.gamma
        ar = padded_run(self.target, StepBatch(batch, 1, self.context, "decode"), self.graphs)
        # The draft's i-th step attends to context + i positions; the mean is used.
        rows = draft_rows(self.engine, batch, all_accepted(self.alpha, g))
        draft = padded_run(
            self.draft, StepBatch(rows, 1, self.context + (g - 1) / 2, "decode"), self.graphs
        )
        verify = padded_run(
            self.target, scoring_batch(self.engine, batch, g, self.context), self.scoring_graphs
        )
        t_draft = draft_steps_time(self.draft.engine, draft.time_s, rows, g)
        per_group = math.ceil(batch / self.ep)
        t_reject = self.engine.reject_time(per_group * (g + 1)) + rejection_device_time(
            self.reject_device, per_group, g, self.vocab
        )
        t_round = t_draft + verify.time_s + t_reject
        return SDRow(
            batch,
            g,
            ar.time_s,
            t_round,
            t_draft,
            verify.time_s,
            t_reject,
            self.tokens_per_round,
            self.tokens_per_round * ar.time_s / t_round,
            ar.time_s / verify.time_s,
            verify.experts_loaded,
            ar.experts_loaded,
            ar.bound,
            verify.bound,
        )

    def sweep(self, batches: list[int]) -> list[SDRow]:
        return [self.row(b) for b in batches]


def peak(rows: list[SDRow]) -> SDRow:
    return max(rows, key=lambda r: r.speedup)


def band_width(rows: list[SDRow]) -> tuple[int, int]:
    """(smallest, largest) batch whose speedup is >= peak / sqrt(2) (MoESD Fig. 4)."""
    top = peak(rows).speedup / 2**0.5
    inside = [r.batch for r in rows if r.speedup >= top]
    return min(inside), max(inside)
