"""Lower one inference forward (prefill, decode or a speculative verify) to IR and run it.

A step is ``sequences`` requests, each with ``q_len`` new tokens attending to a
paged KV cache of ``context`` earlier positions (mean over the batch). The layer
ops come from ``xpusim.sim.workloads.transformer`` (one builder for training and
inference); here they are placed on one simulated rank of a TP group, their
``CommNeed`` s become collectives on concrete ranks, host overheads of the serving
engine become ``Delay`` s, and the SimPy engine gives the step time.

Scale by symmetry: all TP ranks (and all EP groups) run the same program, so rank 0
alone is simulated and its collectives are costed on the real group.

Parallel plan (``xpusim.sim.parallel.ParallelPlan``, the one plan type of training and
inference, with ``tp`` and ``ep`` set): ``tp`` ranks split attention and dense FFN
(Megatron); with ``ep`` > 1 the deployment has ep groups of tp ranks (devices = tp x
ep), each serving 1/ep of the requests (data-parallel attention) while routed experts
are spread over the ep groups and reached by all-to-all.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from xpusim.hwprofiles.spec import System
from xpusim.sim import ops
from xpusim.sim.cost import CachedCostModel
from xpusim.sim.cost.attention_impl import KernelCostModel
from xpusim.sim.cost.base import CostModel
from xpusim.sim.engine import Engine
from xpusim.sim.errors import InputError
from xpusim.sim.inference.batched_step import DecodeTemplate
from xpusim.sim.inference.decode_attention import with_engine_attention
from xpusim.sim.inference.engine_profile import NO_ENGINE, EngineProfile, engine_for_system
from xpusim.sim.inference.gemm_tactic import with_gemm_tactic
from xpusim.sim.inference.kvcache import (
    MemoryPlan,
    in_kv_format,
    kv_bytes_per_token,
    kv_cache_dtype,
    plan_memory,
    require_fit,
)
from xpusim.sim.inference.moe_gemm import with_moe_gemm
from xpusim.sim.inference.priced_step import (
    PricedStep,
    StepOpTimes,
    detached,
    distinct_items,
    simulator_memo,
)
from xpusim.sim.inference.routing import UNIFORM, Routing, experts_touched, step_moe_load
from xpusim.sim.inference.weight_only import gemv_memory_factors, with_weight_only_gemv
from xpusim.sim.ir import (
    Collective,
    CollectiveKind,
    Delay,
    GemmShape,
    Op,
    OpKind,
    RankGraph,
    Stream,
    dtype_bytes,
)
from xpusim.sim.models.spec import ModelSpec, layer_runs
from xpusim.sim.parallel import ParallelPlan
from xpusim.sim.workloads.transformer import (
    CommNeed,
    Sharding,
    StepShape,
    attention_core_op,
    embedding_forward,
    layer_forward,
    lm_head_forward,
    logits_gather,
)

_COLLECTIVE_KINDS = {str(k) for k in CollectiveKind}


def plan_for(devices: int | None, tp: int | None, ep: int = 1, pp: int = 1) -> ParallelPlan:
    """The plan of the ``--devices N`` (TP = N) or ``--tp T [--ep E] [--pp P]`` options."""
    if devices is not None and tp is not None:
        raise InputError("give either --devices N (TP=N) or --tp/--ep/--pp, not both")
    for flag, value in (("--devices", devices), ("--tp", tp), ("--ep", ep), ("--pp", pp)):
        if value is not None and value < 1:
            raise InputError(f"{flag} must be >= 1, got {value}")
    if tp is not None:
        return ParallelPlan(tp=tp, ep=ep, pp=pp)
    for flag, value in (("--ep", ep), ("--pp", pp)):
        if value != 1:
            raise InputError(f"{flag} needs --tp (devices = tp x pp x ep): add --tp T")
    return ParallelPlan(tp=devices or 1)


@dataclass(frozen=True)
class StepBatch:
    """``sequences`` requests x ``q_len`` new tokens over ``context`` cached positions each."""

    sequences: float
    q_len: float
    context: float
    phase: str = "decode"  # "prefill" | "decode" | "verify" (for labels and CUDA graphs)
    dummies: float = 0.0  # of ``sequences``: CUDA-graph padding rows (graph_padding)

    @property
    def tokens(self) -> float:
        return self.sequences * self.q_len

    @classmethod
    def for_phase(cls, phase: str, batch: int, context: int) -> StepBatch:
        """A prefill of ``batch`` prompts of ``context`` tokens, or a decode step of
        ``batch`` requests with ``context`` cached tokens each."""
        if phase == "prefill":
            return cls(batch, context, 0, "prefill")
        return cls(batch, 1, context, "decode")


@dataclass
class StepResult:
    """Time of one forward on the busiest rank, and why."""

    time_s: float
    device_s: float  # engine makespan of the device work (ops + collectives)
    host_s: float  # serving-engine delays (step overhead, sampling)
    by_kind: dict[str, float]
    compute_s: float  # sum of op compute terms
    memory_s: float  # sum of op memory terms
    overhead_s: float  # sum of per-kernel overheads
    bound: str
    kernels: int
    weight_bytes_read: float
    kv_bytes_read: float
    experts_loaded: float  # distinct routed experts per MoE layer (whole deployment)
    tokens: float
    details: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "time_s": self.time_s,
            "device_s": self.device_s,
            "host_s": self.host_s,
            "bound": self.bound,
            "compute_s": self.compute_s,
            "memory_s": self.memory_s,
            "kernel_overhead_s": self.overhead_s,
            "kernels": self.kernels,
            "weight_bytes_read": self.weight_bytes_read,
            "kv_bytes_read": self.kv_bytes_read,
            "experts_loaded": self.experts_loaded,
            "tokens": self.tokens,
            "time_by_kind_s": dict(sorted(self.by_kind.items(), key=lambda kv: -kv[1])),
        }


def require_memory(
    spec: ModelSpec, system: System, plan: ParallelPlan, engine: EngineProfile, dtype: str
) -> MemoryPlan:
    """The deployment's memory plan (vLLM's rule, the weights as the engine holds its
    vocabulary tables: ``EngineProfile.vocab_layout``); an out-of-memory verdict when no
    room is left for the KV cache."""
    memory = plan_memory(
        spec,
        system.device.hbm_capacity,
        plan.tp,
        plan.ep,
        dtype,
        engine.memory_utilization,
        engine.max_batched_tokens,
        pp=plan.pp, vocab=engine.vocab_layout(), max_num_seqs=engine.max_num_seqs,
    )
    require_fit(memory, f"{spec.name} on {plan.devices} x {system.device.name}")
    return memory


def check_plan(spec: ModelSpec, system: System, plan: ParallelPlan) -> None:
    if plan.tp < 1 or plan.ep < 1 or plan.pp < 1:
        raise InputError(
            f"tp, pp and ep must be >= 1 (got tp={plan.tp}, pp={plan.pp}, ep={plan.ep})"
        )
    if plan.cp != 1 or plan.vpp != 1 or plan.dp not in (0, plan.ep):
        # An inference step runs full sequences through pp stages; its only data
        # parallelism is the EP groups' (dp 0 reads as ep).
        raise InputError(
            f"an inference plan sets tp, pp and ep only (got cp={plan.cp}, vpp={plan.vpp}, "
            f"dp={plan.dp}): use ParallelPlan(tp=..., pp=..., ep=...)"
        )
    if plan.pp > spec.layers:
        raise InputError(
            f"--pp {plan.pp} exceeds the {spec.layers} layers of {spec.name}: every "
            f"pipeline stage needs a layer; use --pp <= {spec.layers}"
        )
    if plan.first_device + plan.devices > system.num_devices:
        raise InputError(
            f"plan needs {plan.devices} devices (tp {plan.tp} x pp {plan.pp} x ep "
            f"{plan.ep}) from device {plan.first_device}; system '{system.name}' has "
            f"{system.num_devices}: use --devices <= {system.num_devices} (tp x pp x ep <= "
            f"{system.num_devices}) or a larger system (--nodes)"
        )
    if spec.heads % plan.tp:
        raise InputError(
            f"TP={plan.tp} does not divide the {spec.heads} attention heads of "
            f"{spec.name}: choose a TP that divides {spec.heads}"
        )
    if plan.ep > 1:
        if spec.moe is None:
            raise InputError(f"--ep {plan.ep} needs an MoE model; {spec.name} is dense")
        if spec.moe.num_experts % plan.ep:
            raise InputError(
                f"EP={plan.ep} does not divide the {spec.moe.num_experts} experts of {spec.name}"
            )


# A quantised serving model's activations: the 16-bit network dtype.
ACTIVATION_DTYPE = "fp16"
# Ops that read and write activations only (no weights): priced in the network dtype.
ACTIVATION_KINDS = (OpKind.NORM, OpKind.ELEMENTWISE, OpKind.EMBEDDING)


def flatten(blocks: list[tuple[list[Op | CommNeed], int]]) -> list[Op | CommNeed]:
    """A forward's ops and comm needs in order (embedding .. LM head): ``step_blocks``
    spelled out, each block repeated its count (the engine's program)."""
    items: list[Op | CommNeed] = []
    for block, count in blocks:
        for _ in range(count):
            items += block
    return items


def step_shape(batch: StepBatch, plan: ParallelPlan) -> StepShape:
    """The tokens of ``batch`` one rank processes: ep groups split the requests."""
    return StepShape(batch.sequences / plan.ep, batch.q_len, batch.context + batch.q_len,
                     causal=True)


def step_blocks(
    spec: ModelSpec,
    batch: StepBatch,
    plan: ParallelPlan,
    dtype: str = "bf16",
    routing: Routing = UNIFORM,
    fc_in: int = 0,
    lm_head_16bit: bool = False,
    vocab_parallel: bool = True,
    layers: tuple[int, int] | None = None,
) -> list[tuple[list[Op | CommNeed], int]]:
    """One forward on one rank as (block of items, how many times it runs in a row), in
    order: the embedding, each run of consecutive layers of one kind, the LM head (and its
    logits' TP gather, ``logits_gather``). ``layers`` (start, end): one pipeline stage's
    layers only (``pipeline.stage_layers``): no embedding unless it starts at layer 0, no head
    unless it ends at the last layer.

    ``fc_in`` > 0 adds a draft head's input projection (fc_in -> hidden) after the embedding
    (EAGLE's fc over [embedding, target feature], MTP's eh_proj: 2 x hidden -> hidden).
    ``lm_head_16bit``: a narrow ``dtype`` leaves the LM head in the 16-bit network dtype.
    ``vocab_parallel`` False: the embedding and LM head are whole on every TP rank, no gather
    (gpt-fast's tp.py shards only attention and the FFN; ``EngineProfile.vocab_parallel``).
    """
    shape = step_shape(batch, plan)
    seqs_rank = shape.sequences
    start, end = layers or (0, spec.layers)
    sh = Sharding(tp=plan.tp, ep=plan.ep)
    load = (step_moe_load(spec, shape.tokens, batch.dummies, batch.q_len, plan.ep, routing)
            if spec.moe else None)
    vocab_sh = sh if vocab_parallel else Sharding(tp=1, ep=plan.ep)
    head = sixteen_bit_activations(list(embedding_forward(spec, shape.tokens, vocab_sh,
                                                          dtype)), dtype) if start == 0 else []
    if fc_in and start == 0:
        head.append(ops.gemm("draft_fc", shape.tokens, spec.hidden, fc_in, dtype))
    blocks: list[tuple[list[Op | CommNeed], int]] = [(head, 1)]
    # Layers of one kind have identical ops: build (and narrow) each kind once and
    # repeat the same objects, which the step pricing relies on to stay cheap.
    built: dict[tuple[bool, int, int], list[Op | CommNeed]] = {}
    for kind, layer, count in layer_runs(spec, start, end):  # kind: (MoE?, window, chunk)
        if kind not in built:
            built[kind] = [in_kv_format(it, dtype) if isinstance(it, Op) else it
                           for it in sixteen_bit_activations(layer_forward(
                               spec, layer, shape, sh, dtype, load if kind[0] else None), dtype)]
        blocks.append((built[kind], count))
    # Only the positions that are sampled need logits (the last of each prefill sequence,
    # every position of a decode or verify step), gathered over TP for the sampler.
    logit_rows = seqs_rank if batch.phase == "prefill" else shape.tokens
    head_dtype = ACTIVATION_DTYPE if lm_head_16bit and dtype_bytes(dtype) < 2 else dtype
    tail = (sixteen_bit_activations(lm_head_forward(spec, logit_rows, vocab_sh, head_dtype), dtype)
            + logits_gather(spec, logit_rows, vocab_sh)) if end == spec.layers else []
    blocks.append((tail, 1))
    return blocks


def sixteen_bit_activations(items: list[Op | CommNeed], dtype: str) -> list[Op | CommNeed]:
    """``items`` with activations at 16 bits per element when ``dtype`` (the weights'
    format) is narrower: each tensor-parallel collective's buffer, and the norms,
    elementwise ops (residual adds, SwiGLU) and embedding lookup.

    A quantised serving model keeps a 16-bit network dtype and narrows only the GEMM
    operands: TensorRT-LLM's FP8 configurations set ``"dtype": "float16"`` with
    ``"quant_algo": "FP8"`` (docs/source/performance/perf-overview.md v0.10, "Network
    Configuration Files"); ``FP8RowLinear.forward`` (tensorrt_llm/quantization/layers.py)
    dequantises its input to ``self.dtype`` for the FP8 GEMM, ``RowLinear.multiply_reduce``
    (tensorrt_llm/layers/linear.py) all-reduces the GEMM's output in that dtype, and
    ``quantize_layers`` (tensorrt_llm/quantization/quantize.py) leaves the embeddings
    unquantised (default ``exclude_modules``). vLLM's RowParallelLinear likewise reduces
    the model-dtype output of a quantised GEMM, and weight-only int8/int4 (gpt-fast
    ``WeightOnlyInt8Linear``: weights cast to the input's dtype) keep 16-bit
    activations. Expert-parallel all-to-alls are left alone (some dispatchers send
    FP8), and so are the GEMMs (their weights are the narrow format), attention (an
    FP8 KV cache) and the LM head (whether it is quantised depends on the engine).
    """
    scale = dtype_bytes(ACTIVATION_DTYPE) / dtype_bytes(dtype)
    if scale <= 1:
        return items
    # Layers repeat the same item objects (step_blocks builds each kind once); keep
    # that sharing, which the step pricing relies on to stay cheap.
    done: dict[int, Op | CommNeed] = {}
    out: list[Op | CommNeed] = []
    for it in items:
        key = id(it)
        if key not in done:
            done[key] = _in_16bit(it, dtype, scale)
        out.append(done[key])
    return out


def _in_16bit(it: Op | CommNeed, dtype: str, scale: float) -> Op | CommNeed:
    # Built field by field rather than with dataclasses.replace, which inspects the
    # fields on every call: this runs for every activation op of every step shape.
    if isinstance(it, CommNeed) and it.group == "tp":
        return CommNeed(it.name, it.kind, it.nbytes * scale, it.group, it.module)
    if isinstance(it, Op) and it.kind in ACTIVATION_KINDS and it.dtype == dtype:
        return Op(it.name, it.kind, it.flops,
                  {level: b * scale for level, b in it.bytes.items()},
                  ACTIVATION_DTYPE, it.unit, it.shape, it.role)
    return it


def build_graph(
    items: list[Op | CommNeed],
    plan: ParallelPlan,
    host_before: float = 0.0,
    host_after: float = 0.0,
) -> RankGraph:
    """Rank-0 program: host delay, the items in order on the compute stream, host delay.

    Collectives of a forward block the next op (tensor-parallel reduce, MoE
    dispatch), so everything runs in program order on one stream.
    """
    graph = RankGraph(plan.first_device)
    tags: dict[str, int] = {}
    if host_before > 0:
        graph.add(Delay("step_overhead", host_before), Stream.COMPUTE, label="host")
    for item in items:
        if isinstance(item, CommNeed):
            group = plan.tp_group() if item.group == "tp" else plan.ep_group()
            tag = tags.get(item.name, 0)
            tags[item.name] = tag + 1
            graph.add(
                Collective(item.name, item.kind, group, item.nbytes, tag=tag),
                Stream.COMPUTE,
                label="comm",
            )
        else:
            graph.add(item, Stream.COMPUTE, label="device")
    if host_after > 0:
        graph.add(Delay("sampling", host_after), Stream.COMPUTE, label="host")
    return graph


class StepSimulator:
    """Prices forwards of one model on one deployment; caches op costs across steps."""

    def __init__(
        self,
        spec: ModelSpec,
        system: System,
        plan: ParallelPlan,
        engine: EngineProfile = NO_ENGINE,
        dtype: str = "bf16",
        routing: Routing = UNIFORM,
        fc_in: int = 0,
        attention_impl: str | None = None,
        layers: tuple[int, int] | None = None,
    ) -> None:
        """``layers`` (start, end): price one pipeline stage, whose ``plan`` has pp 1
        (``pipeline.PipelineSimulator`` builds one per stage); None: the whole model."""
        check_plan(spec, system, plan)
        if plan.pp != 1:
            raise InputError("a StepSimulator prices one pipeline stage (pp=1); a plan with "
                             "pp > 1 is priced by pipeline.PipelineSimulator")
        self.layers = layers or (0, spec.layers)
        self.fc_in = fc_in
        self.attention_impl = attention_impl  # None: the device's default implementation
        self.spec, self.system, self.plan = engine.priced_model(spec), system, plan
        # Host terms are seconds on the engine's reference host: rescale to this system's.
        engine = engine_for_system(engine, system.name)
        self.engine, self.dtype, self.routing = engine, dtype, routing
        # Cost models, priced skeletons, device sums, engine runs and collective times:
        # shared with every simulator of equal inputs in this process (``step_memo``).
        memo, self._comm = simulator_memo(spec, system, plan, engine, dtype, routing, fc_in,
                                          attention_impl, self.layers)
        self._models = memo.models
        self._priced, self._sums_memo, self._runs = memo.priced, memo.sums, memo.runs
        # Serving runs' interpolation tables, shared like the rest (``StepCosts``).
        self.costs_tables = memo.costs
        if memo.batched is None:
            memo.batched = DecodeTemplate()
        self._batched: DecodeTemplate = memo.batched
        self._memo: dict[tuple, StepResult] = {}
        self._fast_memo: dict[tuple, float] = {}  # time_s: step time only

    def model_key(self, batch: StepBatch) -> tuple[bool, bool]:
        """(CUDA graph?, decode?): which cost model prices ``batch`` (``_cost_model``)."""
        decode_batch = batch.sequences / self.plan.ep if batch.phase != "prefill" else None
        graphed = decode_batch is not None and decode_batch <= self.engine.cuda_graph_max_batch
        return graphed, decode_batch is not None

    def _cost_model(self, batch: StepBatch) -> CachedCostModel:
        key = self.model_key(batch)  # the generation-kernel rule: decode / verify steps only
        if key not in self._models:
            decode_batch = batch.sequences / self.plan.ep if key[1] else None
            device = self.engine.device_for_step(self.system.device, decode_batch)
            model: CostModel = KernelCostModel(device, self.attention_impl)
            if decode_batch is not None and self.attention_impl is None:
                # The engine's decode-attention kernel rule (--attention-impl overrides it).
                model = with_engine_attention(model, device, self.engine.generation_kernel())
            if decode_batch is not None:
                model = with_weight_only_gemv(model, gemv_memory_factors(self.engine))
            # One-profile GEMM tiles (gemm_tactic.py); the engine's MoE kernels (moe_gemm.py).
            tactic = with_gemm_tactic(model, self.engine.gemm_tactic_tokens)
            model = with_moe_gemm(tactic, self.engine.moe_gemm, device)
            self._models[key] = CachedCostModel(model)
        return self._models[key]

    def host_terms(self, batch: StepBatch, host: bool) -> tuple[float, float]:
        """The engine's host work before and after the forward (0 with ``host=False``)."""
        if not host:
            return 0.0, 0.0
        # vLLM's scorer runs a verify pass as sequences x q_len one-token sequences.
        runner_seqs = batch.sequences * (batch.q_len if batch.phase == "verify" else 1)
        before = self.engine.step_host_time(runner_seqs)
        after = self.engine.sampling_time(
            batch.sequences * (1 if batch.phase == "prefill" else batch.q_len)
        )
        return before, after

    def time_s(self, batch: StepBatch, host: bool = True) -> float:
        """``run(batch, host).time_s`` without building the graph: the forward is one
        stream in program order (``build_graph``) whose collectives wait for no other
        simulated rank, so the engine's makespan is the running sum of the items' times.
        Layers of one kind share their op objects, so each distinct op is priced once.
        The serving loop prices thousands of step shapes through this."""
        key = (batch, host)
        hit = self._fast_memo.get(key)
        if hit is not None:
            return hit
        # Full runs (``run``): none in most simulators (the serving loop runs none), and a
        # ``StepBatch`` key hashes in Python: not looked up then.
        full = self._memo.get(key) if self._memo else None
        if full is not None:
            return full.time_s
        device = self._device_sums(batch)[0]
        before, after = self.host_terms(batch, host)
        total = self.engine.step_time(device, before, after)
        self._fast_memo[key] = total
        return total

    def part_time(self, batch: StepBatch, attention: bool) -> float:
        """Device time of the step's attention ops (``attention=True``) or of all its
        other items (GEMMs, MoE, norms, collectives, ...), in program order; no host work.
        A mixed in-flight step prices its token-proportional work and its attention
        separately (``StepCosts.mixed``)."""
        _, attention_s, other_s = self._device_sums(batch)
        return attention_s if attention else other_s

    def _device_sums(self, batch: StepBatch) -> tuple[float, float, float]:
        """(all items, attention ops, the other items): device seconds of one forward,
        from one pricing pass. The engine adds the items one by one in program order;
        here each distinct op's time is multiplied by how often it runs (``step_blocks``:
        layers repeat the same op objects), which differs from that running sum only by
        rounding (~1e-15 relative; tests/test_serving_fast.py holds the two within 1e-12)
        and is what keeps pricing thousands of step shapes cheap. A dense decode step is
        read from its block's sums at its context (``DecodeTemplate.sums``); a step already
        priced at another context (> 0 both, or 0 both) is re-priced from it: only its
        attention cores change (``priced_step``). The same floats each way."""
        hit = self._sums_memo.get(batch)
        if hit is None:
            hit = self._batched.sums(self, batch)
            if hit is None:
                key = (batch.sequences, batch.q_len, batch.phase, batch.context > 0, batch.dummies)
                known = self._priced.get(key)
                if known is None:
                    priced = self._priced[key] = self._priced_step(batch)
                else:
                    priced = self._repriced(known, batch)
                hit = priced.sums()
            self._sums_memo[batch] = hit
        return hit

    def lower(self, batch: StepBatch) -> list[tuple[list[Op | CommNeed], int]]:
        """``step_blocks`` of ``batch`` on this simulator's model, plan and engine."""
        return step_blocks(self.spec, batch, self.plan, self.dtype, self.routing, self.fc_in,
                           self.engine.lm_head_16bit, self.engine.vocab_parallel, self.layers)

    def _priced_step(self, batch: StepBatch) -> PricedStep:
        """Each distinct item of the step, its runs and time, and its attention cores: a dense
        decode step from a block of batch sizes priced at once (``batched_step``)."""
        if batch.sequences <= 0 or batch.q_len <= 0:
            raise InputError(f"a step needs >= 1 sequence and >= 1 token (got {batch})")
        fast = self._batched.priced(self, batch)
        return fast if fast is not None else self._lowered_step(batch)

    def _lowered_step(self, batch: StepBatch) -> PricedStep:
        # Priced by the uncached model through a memo of this step only (``StepOpTimes``).
        op_time = StepOpTimes(self._cost_model(batch).inner)
        entries: list[tuple[int, float, bool]] = []
        cores: list[tuple[int, int]] = []
        for item, count, layer in distinct_items(self.lower(batch), self.layers[0]):
            if isinstance(item, CommNeed):  # its tag only matches a collective's members
                group = self.plan.tp_group() if item.group == "tp" else self.plan.ep_group()
                t = self._comm(Collective(item.name, item.kind, group, item.nbytes))
                entries.append((count, t, False))
            elif item.kind == OpKind.ATTENTION:
                assert layer >= 0, "an attention op outside the layers"
                cores.append((len(entries), layer))
                entries.append((count, op_time(item), True))
            else:
                entries.append((count, op_time(item), False))
        return PricedStep(tuple(entries), tuple(cores))

    def attention_time(self, op_time: StepOpTimes, batch: StepBatch, layer: int) -> float:
        """The attention core of ``layer`` at ``batch``, built as ``layer_forward`` builds
        it, priced by ``op_time``."""
        return op_time(in_kv_format(attention_core_op(
            self.spec, step_shape(batch, self.plan), Sharding(tp=self.plan.tp, ep=self.plan.ep),
            self.dtype, layer), self.dtype))

    def _repriced(self, known: PricedStep, batch: StepBatch) -> PricedStep:
        """``known`` (the same step at another context) with its cores at ``batch``'s."""
        op_time = StepOpTimes(self._cost_model(batch).inner)
        return known.with_cores([self._batched.core_time(self, op_time, batch, layer)
                                 for _, layer in known.cores])

    def run(self, batch: StepBatch, host: bool = True) -> StepResult:
        """Simulate one forward; ``host=False`` leaves out the engine's step/sampling delays."""
        key = (batch, host)
        hit = self._memo.get(key)
        if hit is None and key in self._runs:  # run by a simulator of equal inputs
            hit = self._memo[key] = detached(self._runs[key])
        if hit is not None:
            return hit
        if batch.sequences <= 0 or batch.q_len <= 0:
            raise InputError(f"a step needs >= 1 sequence and >= 1 token (got {batch})")
        items = flatten(self.lower(batch))
        model = self._cost_model(batch)
        before, after = self.host_terms(batch, host)
        # The device work alone; the engine's overlap rule adds the host work around it.
        graph = build_graph(items, self.plan)
        sim = Engine([graph], lambda op: model.time(op).time_s, self._comm).run()
        total = self.engine.step_time(sim.makespan_s, before, after)
        result = self._summarise(items, model, sim, total - sim.makespan_s, batch, total)
        self._memo[key], self._runs[key] = result, detached(result)
        return result

    def _summarise(self, items, model, sim, host_s, batch, total_s) -> StepResult:
        compute = memory = overhead = 0.0
        weight_bytes = kv_bytes = 0.0
        kernels = 0
        for item in items:
            if isinstance(item, CommNeed):
                continue
            cost = model.time(item)
            compute += cost.compute_s
            memory += cost.memory_s
            overhead += cost.overhead_s
            kernels += 1
            shape = item.shape
            if isinstance(shape, GemmShape):
                weight_bytes += shape.k * shape.n * shape.batch * dtype_bytes(item.dtype)
        seqs_rank = batch.sequences / self.plan.ep
        share = (self.layers[1] - self.layers[0]) / self.spec.layers  # a stage's layers
        kv_bytes = (seqs_rank * batch.context * share
                    * kv_bytes_per_token(self.spec, kv_cache_dtype(self.dtype), self.plan.tp))
        by_kind = sim.time_by_kind(self.plan.first_device)
        bound = step_bound(compute, memory, overhead, by_kind, host_s)
        by_kind = dict(by_kind)
        if host_s > 0:
            by_kind["host"] = host_s
        experts = experts_touched(self.spec, batch.tokens, self.routing) if self.spec.moe else 0.0
        return StepResult(total_s, sim.makespan_s, host_s, by_kind, compute, memory, overhead,
                          bound, kernels, weight_bytes, kv_bytes, experts, batch.tokens)


def step_bound(
    compute: float, memory: float, overhead: float, by_kind: dict[str, float], host_s: float
) -> str:
    """The largest of a step's summed terms: the name ``StepResult.bound`` carries."""
    comm = sum(v for k, v in by_kind.items() if k in _COLLECTIVE_KINDS)
    terms = {"compute": compute, "memory": memory, "kernel overhead": overhead,
             "communication": comm, "host": host_s}
    return max(terms, key=lambda k: terms[k])
