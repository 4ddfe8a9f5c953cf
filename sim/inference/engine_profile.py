"""Serving-engine profiles (vLLM, ...): the host-side costs the hardware model cannot see.

A profile is a TOML file in ``hwprofiles/engines/`` (or a user path) with
unit-suffixed keys (``_us``); this module loads it into an ``EngineProfile`` in SI.
Each parameter is documented in the file with its source; values fitted to
measurements say so in ``[fit]``.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeGuard

from xpusim.hwprofiles.hosts import host_speed, system_host_speed
from xpusim.hwprofiles.loader import ROOT as HWPROFILES_ROOT
from xpusim.hwprofiles.spec import Device
from xpusim.sim.errors import InputError
from xpusim.sim.inference.decode_attention import KERNELS, KV_CACHE_LAYOUTS, GenerationAttention
from xpusim.sim.inference.kvcache import SLIDING_WINDOW_KV, VocabLayout
from xpusim.sim.inference.moe_gemm import MOE_GEMM_KINDS
from xpusim.sim.models.spec import ModelSpec
from xpusim.sim.tomlfile import read_toml

ENGINE_DIR = HWPROFILES_ROOT / "engines"
US = 1e-6
# batch_heuristic values answered by trtllm-bench's heuristic (sim/inference/trtllm_bench.py):
# its PyTorch flow and its TensorRT-engine (build) flow.
BATCH_HEURISTICS = ("trtllm-bench", "trtllm-bench-build")


@dataclass(frozen=True)
class EngineProfile:
    """Per-step host costs of a serving engine, in seconds.

    * ``step_overhead_s``: host time of one target forward not hidden behind the GPU
      (scheduler, input preparation, Python); paid once per forward, plus
      ``step_overhead_per_seq_s`` per sequence the model runner handles (vLLM's
      speculative scorer expands each request into gamma+1 sequences).
    * ``sampling_s`` + ``sampling_per_token_s`` x tokens: logits processing and sampling.
    * ``kernel_overhead_graph_s`` / ``kernel_overhead_eager_s``: per-kernel cost that
      replaces the device profile's launch overhead, with CUDA graphs (decode with
      batch <= ``cuda_graph_max_batch``) and without (prefill, large batches).
    * ``draft_step_overhead_s``: host time of one draft forward (proposer loop).
    * ``reject_s`` + ``reject_per_token_s`` x scored tokens: rejection sampling.
    * ``memory_utilization``: fraction of device memory the engine may use;
      ``max_num_seqs`` and ``max_batched_tokens`` bound the scheduler.
    * ``detokenize_per_token_s``: host time per generated token (incremental
      detokenisation, stop checks, building the response).
    * ``request_overhead_s``: host time once per request when it is admitted
      (tokenised prompt enters the engine, sequence-group creation).
    * ``response_per_token_s``: host time per generated token to build and deliver a
      streamed response (a streaming benchmark gets one response per active request
      per iteration, so this cost grows with the batch, unlike ``request_overhead_s``).
    * ``host_overlap``: which host work runs while the device computes the next step:
      "none" (serial: vLLM <= 0.5), "output" (output processing, sampling bookkeeping
      and detokenisation hidden: vLLM 0.6's async output processor), "all" (the
      scheduler also runs one batch ahead: SGLang 0.4's and TRT-LLM 1.0's overlap
      scheduler). Hidden work costs time only where it exceeds the device time.
    * ``policy``: "prefill-first" (a step is all prefill or all decode: vLLM V0's
      default scheduler) or "mixed" (chunked prefill / in-flight batching: prompts
      share a step's ``max_batched_tokens`` with the running decodes) or "static" (one
      batch at a time, prefilled together and decoded until all finish:
      gptSessionBenchmark, gpt-fast).
    * ``pp_scheduler`` (``[scheduler]``): how the engine schedules a pipeline-parallel
      deployment (``xpusim infer --serve --pp P``; sim/inference/serving_pp.py): "none"
      (no pipeline-parallel scheduler modelled: refused), "virtual-engines" (vLLM V0: P
      schedulers, each with its own queue, ``max_num_seqs`` and 1/P of the KV blocks) or
      "micro-batches" (TensorRT-LLM: P micro-batches scheduled in turn from one request
      pool and one KV cache, each up to ``max_num_seqs``) or "batch-queue" (vLLM V1: one
      scheduler keeps up to P batches in flight, each from the requests not in flight,
      with its own token budget under one global ``max_num_seqs`` and one KV cache).
      ``pp_note``: why a profile has none (e.g. the engine version predates its PP
      support), quoted when ``--serve --pp`` is refused (and by ``infer --pp`` with
      ``first_token = "generation"``).
    * ``first_token`` (``[scheduler]``): which step samples a request's first output token:
      "context" (the prefill step of the whole prompt: every stack but one) or "generation"
      (LMDeploy TurboMind 0.1: the context decode runs the prompt minus its last token and the
      first generation step samples the first token; ``xpusim.sim.inference.first_token``).
    * ``kv_reserve``: "incremental" (blocks as tokens are generated; recompute
      preemption when full: vLLM) or "full" (prompt + max output reserved at
      admission, never preempted: TRT-LLM's GUARANTEED_NO_EVICT).
    * ``max_input_len``: with incremental KV, the longest context a preempted request
      is recomputed with (TRT-LLM's LlmRequest::pause keeps min(max_input_len, prompt +
      generated) tokens and generates the rest again); 0 keeps every generated token
      (vLLM's recompute).
    * ``chunked_prefill`` (``[scheduler]``, "mixed" policy): a prompt may be split over
      steps in the pieces the token budget leaves (TensorRT-LLM's chunked context, vLLM
      and SGLang chunked prefill); false: a prompt enters a step only whole, and waits
      for a step whose budget holds it (TensorRT-LLM 1.0's PyTorch flow of trtllm-bench,
      which runs without chunked prefill and sizes max_num_tokens for the longest prompt).
    * ``reference_host`` (a CPU of hwprofiles/hosts.toml) and ``host_scale``: the host
      terms are seconds on the reference host; ``on_host`` rescales them to a system's
      host CPU by single-thread speed.
    * ``paged_attention`` / ``fused_sampling``: the stack's kernel choices (recorded;
      the attention kernel is priced by the cost model).
    * ``generation_attention`` (+ ``xqa_group_sizes``, ``xqa_head_dims``): the rule for
      the decode-attention kernel (``xpusim.sim.inference.decode_attention``): "fused"
      (the cost model's kernel), "masked-mha" or "xqa-or-masked-mha" (TensorRT-LLM).
    * ``kv_cache_layout``: the KV cache masked MHA addresses, "paged" (the block table
      of KVBlockArray: the default) or "contiguous" (KVLinearBuffer: TensorRT-LLM
      engines built without ``--paged_kv_cache``); it sets the per-key addressing work
      (``decode_attention.MMHA_PAGED_ROW_OPS`` / ``MMHA_CONTIGUOUS_ROW_OPS``).
    * ``lm_head_16bit``: with a narrow ``--dtype`` (fp8, int8, int4), the LM head stays
      in the 16-bit network dtype (the stack's quantiser leaves it out by default).
    * ``vocab_parallel``: the embedding and LM head are split over the TP ranks
      (Megatron's vocab-parallel layers); false: every rank holds and reads both whole.
    * ``embedding_parallel``: with ``vocab_parallel``, the token embedding is split over
      the TP ranks too; false: every rank holds it whole while the LM head stays split
      (TensorRT-LLM 0.x without ``use_parallel_embedding``). Memory only: a step reads
      one embedding row per token. ``vocab_layout()`` gives the memory plan both tables'
      layout (``kvcache.VocabLayout``), with ``lm_head_16bit`` keeping both 16-bit.
    * ``sliding_window_kv`` (``[kv_cache]``): what a sliding-window layer caches
      (``xpusim.sim.inference.kvcache.KVLayout``): "window" (the blocks covering its
      window: vLLM V1's hybrid KV cache manager), "uniform" (the window only when every
      layer has the same one: vLLM V0) or "full" (the whole context: the default).
    * ``attention_window`` (``[kv_cache]``): which keys a sliding-window layer's attention
      reads: "config" (the checkpoint's window: the default) or "full" (every cached key:
      TensorRT-LLM 0.x, whose attention window is the runtime's
      ``max_attention_window_size``, max_seq_len for every layer unless set); with "full"
      the deployment prices the model without its windows (``without_windows``).
    * ``cuda_graph_batch_sizes``: with it, a generation-only step runs padded to the
      smallest captured batch size >= its batch (``xpusim.sim.inference.graph_padding``:
      TensorRT-LLM 1.0's ``cuda_graph_config`` with ``enable_padding``; vLLM V0/V1 and
      SGLang 0.4's captured decode sizes); empty: unpadded.
    * ``spec_scorer`` (``[speculative] spec_scorer``): how the target scores a round's
      drafts: "multi_query" (one forward of B sequences x gamma+1 query tokens) or
      "batch_expansion" (vLLM V0's ``BatchExpansionTop1Scorer``: B x (gamma+1) one-token
      decode sequences, an ordinary decode batch that CUDA graphs pad;
      ``xpusim.sim.inference.speculative.scoring_batch``).
    * ``draft_bonus_expansion`` (``[speculative]``): a request whose last round accepted
      every draft runs each draft step twice, with and without its bonus token (vLLM V0
      ``MultiStepWorker._expand_execute_model_request``;
      ``xpusim.sim.inference.speculative.draft_rows``).
    * ``draft_prepare_once`` (``[speculative]``): the proposer prepares the draft's inputs
      on the host once per round and advances them on the GPU for the other gamma-1 steps
      (vLLM V0 ``TP1DraftModelRunner`` GPU multi-step, ``MultiStepWorker.sampler_output``),
      so the per-sequence host term is paid once per round, the per-step one every step
      (``xpusim.sim.inference.speculative.draft_steps_time``).
    * ``cuda_graph_pad_rows``: the padding rows' inputs, "identical" (vLLM V0: token 0 at
      position 0, so in an MoE layer they touch one token's experts:
      ``routing.padded_moe_load``) or "distinct" (routed like real tokens).
    * ``weight_only_int8_gemv_factor``: one-row GEMMs with int8 weights take this multiple
      of their memory-roofline time (``xpusim.sim.inference.weight_only``); 1: none.
    * ``weight_only_int4_gemv_factor``, ``int4_group_size``, ``int4_group_bytes``: one-row
      GEMMs with group-quantised int4 weights stream each group's scale and zero
      (``int4_group_bytes`` per ``int4_group_size`` weights) besides the 4-bit weights, at
      1/factor of the memory roofline (``xpusim.sim.inference.weight_only``).
    * ``gemm_tactic_tokens`` (``[kernels]``): the engine's GEMMs run the tile chosen at
      this many token rows whatever their M (a TensorRT engine built with one
      optimisation profile and no GEMM plugin: its opt shape;
      ``xpusim.sim.inference.gemm_tactic``); 0: the best tile per problem.
    * ``moe_gemm`` (``[kernels]``): the library whose kernels run the routed experts'
      grouped GEMMs: "trtllm" (TensorRT-LLM's MoE plugin, ``xpusim.sim.inference.moe_gemm``,
      sim/cost/gemm_trtllm.py); "" (default): the generic GEMM path. No shipped profile
      sets it (docs/inference_notes.md, "TensorRT-LLM Mixtral rows").
    """

    name: str
    description: str = ""
    step_overhead_s: float = 0.0
    step_overhead_per_seq_s: float = 0.0
    sampling_s: float = 0.0
    sampling_per_token_s: float = 0.0
    kernel_overhead_graph_s: float | None = None
    kernel_overhead_eager_s: float | None = None
    cuda_graphs: bool = True
    cuda_graph_max_batch: int = 256
    draft_step_overhead_s: float = 0.0
    reject_s: float = 0.0
    reject_per_token_s: float = 0.0
    memory_utilization: float = 0.9
    max_num_seqs: int = 256
    max_batched_tokens: int = 8192
    # "none": max_num_seqs / max_batched_tokens as given; "trtllm-bench" (PyTorch flow)
    # or "trtllm-bench-build" (TensorRT-engine flow): per run from trtllm-bench's
    # heuristic (sim/inference/trtllm_bench.py), used by --serve.
    batch_heuristic: str = "none"
    detokenize_per_token_s: float = 0.0
    request_overhead_s: float = 0.0
    response_per_token_s: float = 0.0
    host_overlap: str = "none"
    policy: str = "prefill-first"
    pp_scheduler: str = "none"
    pp_note: str = ""
    first_token: str = "context"
    kv_reserve: str = "incremental"
    max_input_len: int = 0
    chunked_prefill: bool = True
    reference_host: str = ""
    host_scale: float = 1.0
    paged_attention: str = ""
    fused_sampling: bool = False
    generation_attention: str = "fused"
    xqa_group_sizes: tuple[int, ...] = ()
    xqa_head_dims: tuple[int, ...] = ()
    kv_cache_layout: str = "paged"
    cuda_graph_batch_sizes: tuple[int, ...] = ()
    spec_scorer: str = "multi_query"
    cuda_graph_pad_rows: str = "distinct"
    draft_bonus_expansion: bool = False
    draft_prepare_once: bool = False
    lm_head_16bit: bool = False
    vocab_parallel: bool = True
    embedding_parallel: bool = True
    weight_only_int8_gemv_factor: float = 1.0
    weight_only_int4_gemv_factor: float = 1.0
    int4_group_size: int = 128
    int4_group_bytes: float = 4.0
    gemm_tactic_tokens: int = 0
    moe_gemm: str = ""
    sliding_window_kv: str = "full"
    attention_window: str = "config"
    # Device architectures (hwprofiles arch: nvidia, amd, davinci, cpu) the stack runs on,
    # from [platform] device_archs; empty: not stated, any device.
    device_archs: tuple[str, ...] = ()
    sources: dict[str, str] = field(default_factory=dict)

    def generation_kernel(self) -> GenerationAttention:
        """The engine's decode-attention kernel rule."""
        return GenerationAttention(
            self.generation_attention, self.xqa_group_sizes, self.xqa_head_dims,
            self.kv_cache_layout,
        )

    def vocab_layout(self) -> VocabLayout:
        """How a rank holds the embedding and LM head, for the memory plan."""
        return VocabLayout(
            self.lm_head_16bit, self.vocab_parallel, self.vocab_parallel and self.embedding_parallel
        )

    def priced_model(self, spec: ModelSpec) -> ModelSpec:
        """``spec`` as this engine's kernels run it: with ``attention_window = "full"``
        no layer is windowed (TensorRT-LLM 0.x attends every cached key)."""
        if self.attention_window == "full" and spec.layer_windows:
            return replace(spec, layer_windows=())
        return spec

    def kernel_overhead(self, graphed: bool) -> float | None:
        if graphed and self.cuda_graphs:
            return self.kernel_overhead_graph_s
        return self.kernel_overhead_eager_s

    def device_for_step(self, device: Device, decode_batch: float | None) -> Device:
        """The device with its launch overhead replaced by this engine's per-kernel cost.

        CUDA graphs replay decode steps whose batch is at most ``cuda_graph_max_batch``
        (vLLM captures graphs for decode only); prefill runs eagerly.
        """
        graphed = decode_batch is not None and decode_batch <= self.cuda_graph_max_batch
        over = self.kernel_overhead(graphed)
        if over is None:
            return device
        return replace(device, efficiency=replace(device.efficiency, launch_overhead_s=over))

    def step_host_time(self, sequences: float) -> float:
        return (self.step_overhead_s + self.step_overhead_per_seq_s * sequences) * self.host_scale

    def sampling_time(self, tokens: float) -> float:
        """Host time after the forward: sampling bookkeeping and detokenisation."""
        per_token = (self.sampling_per_token_s + self.detokenize_per_token_s
                     + self.response_per_token_s)
        return (self.sampling_s + per_token * tokens) * self.host_scale

    def reject_time(self, scored_tokens: float) -> float:
        return (self.reject_s + self.reject_per_token_s * scored_tokens) * self.host_scale

    def request_time(self, requests: float) -> float:
        return self.request_overhead_s * requests * self.host_scale

    def step_time(self, device_s: float, before_s: float, after_s: float) -> float:
        """A forward's wall time from its device time and the host work around it.

        Serial host work adds to the device time; work the engine overlaps with the
        next step's device work (``host_overlap``) costs only its excess over it.
        """
        if self.host_overlap == "all":
            return max(device_s, before_s + after_s)
        if self.host_overlap == "output":
            return before_s + max(device_s, after_s)
        return before_s + device_s + after_s

    def on_host(self, host_single_thread: float | None) -> EngineProfile:
        """This profile with its host terms rescaled to a host of the given speed.

        Host work is one engine thread, so its time scales with single-thread speed:
        host_scale = reference speed / this host's speed. Unknown hosts (None) or
        profiles without a reference host keep the reference times.
        """
        if host_single_thread is None or not self.reference_host:
            return self
        ref = host_speed(self.reference_host)
        return replace(self, host_scale=ref / host_single_thread)


NO_ENGINE = EngineProfile(name="none", description="no host overheads; device launch overheads")

_US_KEYS = {
    "step_overhead_us": "step_overhead_s",
    "step_overhead_per_seq_us": "step_overhead_per_seq_s",
    "sampling_us": "sampling_s",
    "sampling_per_token_us": "sampling_per_token_s",
    "kernel_overhead_graph_us": "kernel_overhead_graph_s",
    "kernel_overhead_eager_us": "kernel_overhead_eager_s",
    "draft_step_overhead_us": "draft_step_overhead_s",
    "reject_us": "reject_s",
    "reject_per_token_us": "reject_per_token_s",
}
_US_KEYS["detokenize_per_token_us"] = "detokenize_per_token_s"
_US_KEYS["request_overhead_us"] = "request_overhead_s"
_US_KEYS["response_per_token_us"] = "response_per_token_s"
_PLAIN_KEYS = {
    "cuda_graphs": bool,
    "cuda_graph_max_batch": int,
    "memory_utilization": float,
    "max_num_seqs": int,
    "max_batched_tokens": int,
    "max_input_len": int,
    "chunked_prefill": bool,
    "fused_sampling": bool,
    "lm_head_16bit": bool,
    "vocab_parallel": bool,
    "embedding_parallel": bool,
    "weight_only_int8_gemv_factor": float,
    "weight_only_int4_gemv_factor": float,
    "int4_group_size": int,
    "int4_group_bytes": float,
    "gemm_tactic_tokens": int,
    "draft_bonus_expansion": bool,
    "draft_prepare_once": bool,
}
# Pipeline-parallel schedulers an engine profile can state (``EngineProfile.pp_scheduler``).
PP_SCHEDULERS = ("none", "virtual-engines", "micro-batches", "batch-queue")
# Which step samples a request's first output token (``EngineProfile.first_token``).
FIRST_TOKEN_STEPS = ("context", "generation")
# Text fields and their allowed values (None: any non-empty text).
_CHOICE_KEYS: dict[str, tuple[str, ...] | None] = {
    "host_overlap": ("none", "output", "all"),
    "policy": ("prefill-first", "mixed", "static"),
    "pp_scheduler": PP_SCHEDULERS,
    "pp_note": None,
    "first_token": FIRST_TOKEN_STEPS,
    "kv_reserve": ("incremental", "full"),
    "batch_heuristic": ("none", *BATCH_HEURISTICS),
    "reference_host": None,
    "paged_attention": None,
    "generation_attention": KERNELS,
    "kv_cache_layout": KV_CACHE_LAYOUTS,
    "sliding_window_kv": SLIDING_WINDOW_KV,
    "attention_window": ("config", "full"),
    "moe_gemm": MOE_GEMM_KINDS,
    "spec_scorer": ("multi_query", "batch_expansion"),
    "cuda_graph_pad_rows": ("distinct", "identical"),
}
# Lists of positive integers (stored as tuples).
_INT_LIST_KEYS = ("xqa_group_sizes", "xqa_head_dims", "cuda_graph_batch_sizes")
DEVICE_ARCHS = ("nvidia", "amd", "davinci", "cpu")  # hwprofiles Device.arch values
def engine_for_system(engine: EngineProfile, system_name: str) -> EngineProfile:
    """The engine with host terms rescaled to the system's host CPU (idempotent)."""
    if engine.host_scale != 1.0:
        return engine
    return engine.on_host(system_host_speed(system_name))


def list_engines() -> list[str]:
    return sorted(p.stem for p in ENGINE_DIR.glob("*.toml"))


def load_engine(name_or_path: str | None) -> EngineProfile:
    """Load ``hwprofiles/engines/<name>.toml`` or a path; None or "none" gives NO_ENGINE."""
    if name_or_path is None or name_or_path in ("", "none"):
        return NO_ENGINE
    path = Path(name_or_path)
    if path.suffix != ".toml" and not path.exists():
        path = ENGINE_DIR / f"{name_or_path}.toml"
        if not path.exists():
            close = difflib.get_close_matches(str(name_or_path), list_engines(), n=3, cutoff=0.3)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise InputError(
                f"unknown engine profile '{name_or_path}'.{hint} Known: "
                f"{', '.join(list_engines()) or '(none)'}, or pass a .toml path."
            )
    return _from_dict(read_toml(path, "engine profile"), path)


def _from_dict(data: dict, path: Path) -> EngineProfile:
    if data.get("kind") != "engine":
        raise InputError(f"{path}: field 'kind' must be \"engine\" (got {data.get('kind')!r})")
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise InputError(f"{path}: field 'name' is required (a string)")
    version = data.get("schema_version", 1)
    if version != 1 or isinstance(version, bool):  # the one engine format (docs/inference.md)
        raise InputError(
            f"{path}: field 'schema_version' must be 1 (the engine profile format this "
            f"xpusim reads), got {version!r}; fix it or drop the field"
        )
    values: dict = {"name": name, "description": str(data.get("description", ""))}
    sources: dict[str, str] = {}
    known = {"kind", "name", "description", "schema_version", "fit"}
    for section, body in data.items():
        if section not in known:
            _read_section(section, body, path, values, sources)
    if "fit" in data:
        sources["fit"] = str(data["fit"].get("method", "")) if isinstance(data["fit"], dict) else ""
    if not 0 < values.get("memory_utilization", 0.9) <= 1:
        raise InputError(f"{path}: memory_utilization must be in (0, 1]")
    if values.get("reference_host"):
        host_speed(values["reference_host"])  # a clear error for an unknown CPU
    return EngineProfile(**values, sources=sources)


def _read_section(
    section: str, body: object, path: Path, values: dict, sources: dict[str, str]
) -> None:
    """One ``[section]`` of a profile: its fields into ``values``, its source into ``sources``."""
    if not isinstance(body, dict):
        raise InputError(
            f"{path}: top-level field '{section}' is unknown; parameters live "
            f"in sections such as [host], [kernels], [speculative], [scheduler], [kv_cache]"
        )
    for key, value in body.items():
        if key == "source":
            sources[section] = str(value)
        elif key == "device_archs":
            values[key] = _device_archs(value, f"{section}.{key}", path)
        else:
            name, v = _field_value(key, value, f"{section}.{key}", path)
            values[name] = v


def _device_archs(value: object, where: str, path: Path) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(v in DEVICE_ARCHS for v in value):
        raise InputError(f"{path}: field '{where}' must be a list of {', '.join(DEVICE_ARCHS)}")
    return tuple(value)


def _finite_number(value: object) -> TypeGuard[int | float]:
    """A TOML number a profile figure can be: not true/false (TOML booleans are not 1/0
    microseconds), not nan or inf (TOML allows both; an inf overhead makes every step inf)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _field_value(key: str, value: object, where: str, path: Path) -> tuple[str, object]:
    """(EngineProfile field, checked value) of one profile field."""
    if key in _US_KEYS:
        if not _finite_number(value) or value < 0:
            raise InputError(
                f"{path}: field '{where}' must be a finite number >= 0 (microseconds), "
                f"got {value!r}"
            )
        return _US_KEYS[key], float(value) * US
    if key in _CHOICE_KEYS:
        allowed_values = _CHOICE_KEYS[key]
        if not isinstance(value, str) or not value or (
            allowed_values is not None and value not in allowed_values
        ):
            want = " | ".join(allowed_values) if allowed_values else "a non-empty string"
            raise InputError(f"{path}: field '{where}' must be {want} (got {value!r})")
        return key, value
    if key in _INT_LIST_KEYS:
        if not isinstance(value, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value
        ):
            raise InputError(f"{path}: field '{where}' must be a list of positive integers")
        return key, tuple(value)
    if key in _PLAIN_KEYS:
        typ = _PLAIN_KEYS[key]
        if typ is bool and not isinstance(value, bool):
            raise InputError(f"{path}: field '{where}' must be true or false")
        if typ is not bool and (not _finite_number(value) or value <= 0):
            raise InputError(f"{path}: field '{where}' must be a finite positive number, got {value!r}")
        return key, typ(value)
    allowed = ", ".join(sorted([*_US_KEYS, *_PLAIN_KEYS, *_CHOICE_KEYS, *_INT_LIST_KEYS,
                                "device_archs"]))
    raise InputError(f"{path}: unknown field '{where}'; known fields: {allowed}")


# The serving engine a request that names none runs: vLLM 0.6, except on an arch whose
# vLLM runs through a platform plugin. vLLM 0.6 has no Ascend backend; vLLM on Ascend NPUs
# is "a community maintained hardware plugin for running vLLM seamlessly on the Ascend NPU"
# (vllm-project/vllm-ascend README.md @ 01cf80cbc9bb566e97a69902b38b547c97a7e2de,
# Overview), whose profile is vllm-ascend-0.9 ([platform] device_archs = ["davinci"]).
DEFAULT_ENGINE = "vllm-0.6"
ARCH_DEFAULT_ENGINE = {"davinci": "vllm-ascend-0.9"}
# vLLM 0.6 never ran on a Blackwell GPU: its wheels were built with CUDA 12.1 / 12.4, and
# sm_100 code needs CUDA >= 12.7 (vllm-project/vllm PR #12271, "cuda 12.7 for B100/B200 and
# cuda 12.8 for RTX50"); vLLM 0.9.0 is the release whose "default wheel has been upgraded
# from CUDA 12.4 to CUDA 12.8" with an "initial set of optimized kernels on NVIDIA
# Blackwell" (v0.9.0 release notes, as quoted in NVIDIA-NeMo/Guardrails PR #1312), and
# that vLLM runs the V1 engine, the vllm-nightly profile. So a request that names no
# engine on an NVIDIA device of compute capability 10.0 or later runs vllm-nightly.
BLACKWELL_DEFAULT_ENGINE = "vllm-nightly"
BLACKWELL_MIN_MAJOR = 10


def is_blackwell_or_later(device: Device) -> bool:
    """An NVIDIA device of compute capability >= 10.0 (B200, GB200, B300, GB300, ...)."""
    cc = device.kernels.compute_capability
    return device.arch == "nvidia" and bool(cc) and int(cc.split(".")[0]) >= BLACKWELL_MIN_MAJOR


def default_engine(device: Device) -> str:
    """The engine of a request that names none on ``device`` (docs/inference.md)."""
    if is_blackwell_or_later(device):
        return BLACKWELL_DEFAULT_ENGINE
    return default_engine_of_arch(device.arch)


def default_engine_of_arch(arch: str) -> str:
    """``default_engine`` by architecture name (hwprofiles ``arch``), before the
    compute-capability rule (``is_blackwell_or_later``)."""
    return ARCH_DEFAULT_ENGINE.get(arch, DEFAULT_ENGINE)


def default_on(engine: str) -> list[str]:
    """Where ``engine`` is the default (``xpusim hw list``): arch names, with NVIDIA split at
    compute capability 10.0 ("nvidia-pre-sm100" / "nvidia-sm100+")."""
    out = []
    for arch in DEVICE_ARCHS:
        if arch == "nvidia" and engine == BLACKWELL_DEFAULT_ENGINE:
            out.append("nvidia-sm100+")
        if default_engine_of_arch(arch) == engine:
            out.append("nvidia-pre-sm100" if arch == "nvidia" else arch)
    return out


def default_engine_note(device: Device) -> str | None:
    """Why the default engine stands for ``device`` where no engine profile names its arch
    in ``[platform] device_archs`` (AMD GPUs, a CPU host): the note the commands print."""
    archs = {arch for name in list_engines() for arch in load_engine(name).device_archs}
    if device.arch in archs or device.arch in ARCH_DEFAULT_ENGINE:
        return None
    return (f"engine {default_engine(device)} (the default): no engine profile names "
            f"{device.arch} devices in [platform] device_archs, so {device.name} is served "
            "with vLLM 0.6's host terms (fitted on NVIDIA hosts); pass --engine to choose")


def check_engine_device(engine: EngineProfile, device: Device, where: str = "") -> None:
    """A serving stack on a device it does not run on (TensorRT-LLM on a 910B, MindIE on an
    H100) was priced as if it did."""
    if engine.device_archs and device.arch not in engine.device_archs:
        raise InputError(
            f"--engine {engine.name} runs on {' / '.join(engine.device_archs)} devices (its "
            f"profile's [platform] device_archs); {where or device.name} is {device.arch}: pick "
            "an engine of that platform ('xpusim hw list'), or --engine none"
        )
