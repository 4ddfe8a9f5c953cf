"""Memory of an inference deployment: weights, KV cache and activations per device.

Per-rank figures follow the sharding of ``xpusim.sim.workloads.transformer``: attention and
dense FFN weights split over TP, routed experts split over EP (E/ep experts per rank,
each expert's FFN split over TP), embedding and LM head vocab-parallel over TP.
KV cache: GQA keeps 2 * kv_heads * head_dim values per token per layer, split over
TP by KV heads (replicated when tp > kv_heads, as vLLM does); MLA keeps one latent
of kv_lora_rank + qk_rope_head_dim per token per layer, replicated on every TP rank
(the latent has no head dimension to split).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from xpusim.sim.errors import NegativeVerdict
from xpusim.sim.inference.stages import stage_layers
from xpusim.sim.ir import Op, OpKind, dtype_bytes
from xpusim.sim.models.counting import param_counts, stage_param_counts
from xpusim.sim.models.spec import ModelSpec


@dataclass(frozen=True)
class VocabLayout:
    """How an engine holds the two vocabulary tables (token embedding, LM head) on a rank.

    The default (both split over TP, in the run's dtype) is the rule of ``weights_per_rank``.
    ``tables_16bit``: a narrow dtype (fp8, int8, int4) leaves both tables 16-bit. The LM head
    because the quantiser skips it by name (``EngineProfile.lm_head_16bit``); the embedding
    because it is not a Linear layer, and TensorRT-LLM's ``quantize_layers``
    (tensorrt_llm/quantization/quantize.py) only replaces the Linear classes of its
    ``quant_map``. ``head_parallel`` / ``embedding_parallel``: each table is split over the
    TP ranks (else every rank holds it whole). TensorRT-LLM 0.x builds the embedding whole
    on every rank unless ``use_parallel_embedding`` is set (``PretrainedConfig.from_dict``:
    ``config.pop('use_parallel_embedding', False)``, tensorrt_llm/models/modeling_utils.py)
    while its LM head is a ColumnLinear split over TP. A tied table (no separate LM head) is
    counted under the head's layout.
    """

    tables_16bit: bool = False
    head_parallel: bool = True
    embedding_parallel: bool = True


def vocab_bytes_delta(
    spec: ModelSpec, tp: int, dtype: str, vocab: VocabLayout, first: bool = True,
    last: bool = True,
) -> float:
    """Bytes one rank holds for the vocabulary tables under ``vocab``, less what the default
    (both split over ``tp`` at ``dtype``) counts for them. ``first`` / ``last``: the rank's
    pipeline stage holds the embedding (first) and the LM head (last), as
    ``counting.stage_param_counts`` assigns them."""
    counts = param_counts(spec)
    b = dtype_bytes(dtype)
    table_b = max(b, 2.0) if vocab.tables_16bit else b
    head_tp = tp if vocab.head_parallel else 1
    emb_tp = tp if vocab.embedding_parallel else 1
    tied = counts.lm_head == 0
    delta = 0.0
    if first:
        held = head_tp if tied and last else emb_tp
        delta += counts.embedding * (table_b / held - b / tp)
    if last:
        delta += counts.lm_head * (table_b / head_tp - b / tp)
        if tied and not first:
            delta += counts.embedding * (table_b / head_tp - b / tp)
    return delta


# Both tables split over TP in the run's dtype: the rule of ``weights_per_rank``.
SPLIT_VOCAB = VocabLayout()


def weights_per_rank(spec: ModelSpec, tp: int, ep: int) -> float:
    """Parameters one rank holds: routed experts / (tp x ep), everything else / tp.

    Counts come from ``xpusim.sim.models.counting`` (the one parameter count of the project);
    norms are replicated in reality but are < 0.01 % of the weights.
    """
    counts = param_counts(spec)
    return (counts.total - counts.routed_experts) / tp + counts.routed_experts / (tp * ep)


# The KV-cache format of a run whose weights are ``dtype``, where it differs. NVIDIA's
# NVFP4 checkpoints (ModelOpt; the nvidia/*-Instruct-FP4 models of the TRT-LLM v1.0
# perf-overview) quantise the KV cache to FP8: ModelOpt's examples/llm_ptq/hf_ptq.py sets
# ``--kv_cache_qformat`` default "fp8" (NVIDIA/TensorRT-Model-Optimizer @ 42bb0236), the
# 70B FP4 checkpoint's hf_quant_config.json reads "quant_algo": "NVFP4",
# "kv_cache_quant_algo": "FP8", and TensorRT-LLM's PyTorch backend takes the cache format
# from that key (tensorrt_llm/_torch/model_config.py,
# ModelConfig.load_modelopt_quant_config). Every other dtype caches in its own format
# (ModelOpt FP8 checkpoints: kv_cache_quant_algo FP8; 16-bit models: 16-bit).
KV_CACHE_DTYPE = {"nvfp4": "fp8"}


def kv_cache_dtype(dtype: str) -> str:
    """The format of the KV cache of a run whose weights are ``dtype``."""
    return KV_CACHE_DTYPE.get(dtype, dtype)


def in_kv_format(item: Op, dtype: str) -> Op:
    """``item`` (an op of a ``dtype`` run) with an attention core in the KV cache's format:
    its dtype (the kernel's element size, e.g. masked MHA's FP8 dequantisation) and its
    bytes (Q, K, V, O at that element size) become ``kv_cache_dtype(dtype)``'s. Any other
    op, or a run whose cache keeps its dtype, is returned as is."""
    kv = kv_cache_dtype(dtype)
    if kv == dtype or item.kind != OpKind.ATTENTION or item.dtype != dtype:
        return item
    scale = dtype_bytes(kv) / dtype_bytes(dtype)
    return Op(item.name, item.kind, item.flops,
              {level: b * scale for level, b in item.bytes.items()},
              kv, item.unit, item.shape, item.role)


def kv_bytes_per_token(
    spec: ModelSpec, dtype: str = "bf16", tp: int = 1, layers: int | None = None
) -> float:
    """KV-cache bytes one token occupies on one TP rank, all layers (or ``layers`` of
    them: one pipeline stage's)."""
    b = dtype_bytes(dtype)
    if spec.mla is not None:
        per_layer = (spec.mla.kv_lora_rank + spec.mla.qk_rope_head_dim) * b
    else:
        kv_heads_rank = max(1.0, spec.kv_heads / tp)
        per_layer = 2 * kv_heads_rank * spec.head_dim * b
    return per_layer * (spec.layers if layers is None else layers)


# How an engine caches the KV of sliding-window layers (engine profile ``[kv_cache]
# sliding_window_kv``; docs/inference.md gives each engine's rule and source):
# "window": a windowed layer keeps only the blocks covering its window (vLLM V1's hybrid
# KV cache manager, SlidingWindowManager); "uniform": only when every layer has the same
# window (vLLM V0's BlockSpaceManager and V1 before the hybrid manager: one sliding_window
# per model; interleaved models are cached as full); "full": every layer caches the whole
# context (static caches, engines without a sliding-window pool).
SLIDING_WINDOW_KV = ("window", "uniform", "full")


def blocks_of(tokens: int, block: int) -> int:
    """Blocks of ``block`` tokens that ``tokens`` tokens of context fill (the last partly):
    a request's KV units when no layer is windowed (``KVLayout.units``)."""
    return -(-tokens // block)


@dataclass(frozen=True)
class KVLayout:
    """KV blocks a request holds, counted in units of one block of ``group`` layers.

    Full-attention layers hold ceil(tokens / block) blocks; windowed layers at most
    ``cap`` = ceil(window / block) + 1 (the blocks covering the last ``window`` tokens,
    which start mid-block: vLLM V1's SlidingWindowManager frees the blocks wholly before
    token (computed - window + 1)). ``full`` and ``sliding`` are the layer counts of each
    class over ``group`` = their gcd (vLLM's hybrid manager forms KV-cache groups of equal
    layer counts that share one block pool). A model without windowed layers, or an
    engine that caches them fully, is ``full = 1, sliding = 0, group = layers``: a
    request holds ceil(tokens / block) units, as before windows were modelled.
    """

    block: int = 16
    full: int = 1
    sliding: int = 0
    cap: int = 0
    group: int = 1

    @property
    def windowed(self) -> bool:
        return self.sliding > 0

    def units(self, tokens: int) -> int:
        """Units a request with ``tokens`` tokens of context holds."""
        n = blocks_of(tokens, self.block)
        if not self.sliding:
            return n
        return self.full * n + self.sliding * min(n, self.cap)

    def total_units(self, kv_tokens: float) -> int:
        """Units in a cache sized for ``kv_tokens`` tokens of whole-context KV (all
        layers): whole blocks of every layer, each split into its layers' groups."""
        return int(kv_tokens // self.block) * (self.full + self.sliding)


def kv_layout(spec: ModelSpec, rule: str = "full", block: int = 16) -> KVLayout:
    """The KV layout of ``spec`` under an engine's ``sliding_window_kv`` rule.

    Several distinct windows are cached with the largest one (conservative; no model
    the project ships has more than one window size). A chunked layer (Llama 4) is
    bounded the same way: it keeps the blocks of its current chunk, which starts at a
    multiple of the chunk (vLLM V1's ChunkedLocalAttentionManager frees the blocks
    before it), ceil(chunk / block) blocks, one more when the chunk is not a whole
    number of blocks. A request's blocks there fall back at each chunk edge; ``cap``
    bounds them from above."""
    caps = [_bounded_blocks(spec, i, block) for i in range(spec.layers)]
    sliding = [c for c in caps if c > 0]
    if rule == "full" or not sliding or (rule == "uniform" and len(sliding) < spec.layers):
        return KVLayout(block=block, group=spec.layers)
    n_full = spec.layers - len(sliding)
    group = math.gcd(n_full, len(sliding))
    return KVLayout(block, n_full // group, len(sliding) // group, max(sliding), group)


def _bounded_blocks(spec: ModelSpec, layer: int, block: int) -> int:
    """The most KV blocks layer ``layer`` holds for one request (0: unbounded, a full
    layer): the blocks covering a sliding window, or those of the current chunk."""
    window, chunk = spec.attention_window(layer), spec.attention_chunk(layer)
    if chunk:
        return -(-chunk // block) + (1 if chunk % block else 0)
    return -(-window // block) + 1 if window > 0 else 0


def activation_bytes(
    spec: ModelSpec, tokens: float, dtype: str = "bf16", tp: int = 1, logits: bool = True,
    logit_rows: float | None = None,
) -> float:
    """Peak transient activation memory of one forward over ``tokens`` tokens on one rank.

    The largest live set in a layer is the FFN-up output plus the residual stream; we take
    tokens * (2*hidden + 2*ffn_inner/tp) elements plus fp32 logits of ``logit_rows`` rows
    (at most ``tokens``; None: every token, an upper bound). The engines compute logits
    for the sampled positions only, one per sequence of the step: vLLM's LogitsProcessor
    prunes the hidden states to ``selected_token_indices``, TensorRT-LLM gathers the last
    token's (``gather_last_token_logits``; the PyTorch backend's ``last_token_ids``), so a
    step holds at most max_num_seqs rows. ``logits`` False: a pipeline stage without the
    LM head.
    """
    b = dtype_bytes(dtype)
    if spec.moe is not None:
        inner = max(
            spec.moe.expert_ffn * spec.moe.top_k,
            spec.moe.shared_ffn * spec.moe.shared_experts,
            spec.ffn,
        )
    else:
        inner = spec.ffn
    hidden = tokens * (2 * spec.hidden + 2 * inner / tp) * b
    rows = tokens if logit_rows is None else min(tokens, logit_rows)
    return hidden + rows * spec.vocab / tp * 4 if logits else hidden


@dataclass(frozen=True)
class MemoryPlan:
    """Per-device memory of a deployment (bytes)."""

    capacity: float  # device memory usable by the engine (HBM x gpu_memory_utilization)
    weights: float
    activations: float
    kv_cache: float  # what remains for the KV cache
    kv_bytes_per_token: float
    kv_tokens: float  # tokens of context the whole deployment can cache

    def as_dict(self) -> dict[str, float]:
        return {
            "capacity_bytes": self.capacity,
            "weights_bytes": self.weights,
            "activation_bytes": self.activations,
            "kv_cache_bytes": self.kv_cache,
            "kv_bytes_per_token": self.kv_bytes_per_token,
            "kv_tokens": self.kv_tokens,
        }


def plan_memory(
    spec: ModelSpec,
    hbm_bytes: float,
    tp: int,
    ep: int,
    dtype: str = "bf16",
    memory_utilization: float = 0.9,
    max_batched_tokens: float = 8192,
    kv_dtype: str | None = None,
    pp: int = 1,
    vocab: VocabLayout = SPLIT_VOCAB,
    max_num_seqs: float | None = None,
) -> MemoryPlan:
    """KV-cache capacity = HBM x utilisation - weights - activation workspace (vLLM's rule).

    With ep > 1 the deployment has ep groups of tp ranks, each caching its own
    requests, so the deployment caches ep x (per-rank tokens). With pp > 1 each stage
    has its own plan (``stage_memory``) and the deployment's is the stage that caches
    the fewest tokens: vLLM 0.6 sizes every worker's cache to the smallest block count
    any worker reports (``DistributedGPUExecutor.determine_num_available_blocks``:
    ``num_gpu_blocks = min(b[0] for b in num_blocks)``, vllm/executor/
    distributed_gpu_executor.py). ``vocab``: how the engine holds the embedding and LM head
    (``VocabLayout``; the default splits both over TP in ``dtype``). ``max_num_seqs``: the
    logit rows a step holds (``activation_bytes``); None: one per token.
    """
    if pp > 1:
        stages = stage_memory(spec, hbm_bytes, tp, ep, pp, dtype, memory_utilization,
                              max_batched_tokens, kv_dtype, vocab, max_num_seqs)
        return min(stages, key=lambda m: m.kv_tokens)
    weights = weights_per_rank(spec, tp, ep) * dtype_bytes(dtype)
    weights += vocab_bytes_delta(spec, tp, dtype, vocab)
    acts = activation_bytes(spec, max_batched_tokens, dtype, tp, logit_rows=max_num_seqs)
    per_token = kv_bytes_per_token(spec, kv_dtype or kv_cache_dtype(dtype), tp)
    return _plan(hbm_bytes * memory_utilization, weights, acts, per_token, ep)


def _plan(capacity: float, weights: float, acts: float, per_token: float,
          ep: int) -> MemoryPlan:
    """What is left for the KV cache on one rank, and the tokens it holds across the ep
    groups (each caches its own requests)."""
    kv = capacity - weights - acts
    tokens = max(0.0, kv) / per_token * ep if per_token else 0.0
    return MemoryPlan(capacity, weights, acts, kv, per_token, tokens)


def stage_memory(
    spec: ModelSpec,
    hbm_bytes: float,
    tp: int,
    ep: int,
    pp: int,
    dtype: str = "bf16",
    memory_utilization: float = 0.9,
    max_batched_tokens: float = 8192,
    kv_dtype: str | None = None,
    vocab: VocabLayout = SPLIT_VOCAB,
    max_num_seqs: float | None = None,
) -> list[MemoryPlan]:
    """Each pipeline stage's memory plan: the weights of its own layers (with the
    embedding on the first stage and the LM head on the last,
    ``counting.stage_param_counts``), the KV cache of its own layers (vLLM's
    CacheEngine counts ``model_config.get_num_attention_layers(parallel_config)``, the
    layers ``get_pp_indices`` gives the worker) and its activation workspace, logits
    only on the last stage; the vocabulary tables under ``vocab`` on the stages that hold
    them."""
    capacity = hbm_bytes * memory_utilization
    plans = []
    for start, end in stage_layers(spec.layers, pp):
        dense, routed = stage_param_counts(spec, start, end)
        weights = (dense / tp + routed / (tp * ep)) * dtype_bytes(dtype)
        weights += vocab_bytes_delta(spec, tp, dtype, vocab, start == 0, end == spec.layers)
        acts = activation_bytes(spec, max_batched_tokens, dtype, tp, end == spec.layers,
                                max_num_seqs)
        per_token = kv_bytes_per_token(spec, kv_dtype or kv_cache_dtype(dtype), tp, end - start)
        plans.append(_plan(capacity, weights, acts, per_token, ep))
    return plans


def require_fit(plan: MemoryPlan, what: str) -> None:
    """Out-of-memory verdict (exit 3) with the breakdown when nothing is left for the KV cache."""
    if plan.kv_cache <= 0:
        raise NegativeVerdict(
            f"{what}: weights ({plan.weights / 2**30:.1f} GiB) + activations "
            f"({plan.activations / 2**30:.1f} GiB) exceed the usable device memory "
            f"({plan.capacity / 2**30:.1f} GiB); use more devices "
            "(--devices / --tp / --pp / --ep)",
            plan.as_dict(),
        )


def step_kv_bytes(plan: MemoryPlan, requests: float, context: float, ep: int = 1) -> float:
    """KV bytes a step keeps on one device: each request's context plus its new token,
    the requests split over the ``ep`` groups (each caches its own requests)."""
    return requests * (context + 1) / ep * plan.kv_bytes_per_token


def require_kv_fit(plan: MemoryPlan, kv_needed: float, what: str) -> None:
    """Out-of-memory verdict (exit 3) when a step's KV cache exceeds what is left for it.

    ``kv_needed`` is the KV bytes the step keeps on one device (requests x cached tokens x
    ``kv_bytes_per_token`` / ep); the room is vLLM's rule, HBM x utilisation - weights -
    activation workspace (``plan.kv_cache``).
    """
    if kv_needed <= plan.kv_cache:
        return
    gib = 2**30
    raise NegativeVerdict(
        f"out of memory: {what} needs {kv_needed / gib:.1f} GiB of KV cache per device, "
        f"but only {max(plan.kv_cache, 0.0) / gib:.1f} GiB is left (usable "
        f"{plan.capacity / gib:.1f} GiB - weights {plan.weights / gib:.1f} GiB - activations "
        f"{plan.activations / gib:.1f} GiB; room for {plan.kv_tokens:,.0f} tokens); use a "
        "smaller --batch or --context, or more devices (--devices / --tp / --ep)",
        {**plan.as_dict(), "kv_needed_bytes": kv_needed, "fits": False},
    )
