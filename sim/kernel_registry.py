"""Kernel names -> the torch-free functions that describe them as IR, with their shape keys.

``xpusim predict kernel NAME --shape k=v,...`` and the calibration suites both go
through here, so a kernel is predicted from exactly the op graph its describe()
function builds (``sim/workloads/attention.py``, ``moe.py``, ``cdc.py``). The
describe modules are imported when first used, so a missing one only disables
its kernel.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from xpusim.sim.errors import InputError
from xpusim.sim.ir import RankGraph
from xpusim.sim.units import split_list


@dataclass(frozen=True)
class ShapeKey:
    """One ``--shape`` key: its type, default (None = required) and meaning."""

    name: str
    kind: type  # int, bool, or tuple (a list of numbers separated by ':')
    default: int | bool | None
    help: str
    minimum: int = 1


@dataclass(frozen=True)
class KernelEntry:
    name: str
    module: str
    function: str
    keys: tuple[ShapeKey, ...]
    # Builds describe()'s keyword arguments from the parsed shape and dtype.
    kwargs: Callable[[dict, str], dict]
    help: str

    def key(self, name: str) -> ShapeKey | None:
        return next((k for k in self.keys if k.name == name), None)


_ATTN_KEYS = (
    ShapeKey("batch", int, 1, "batch size"),
    ShapeKey("heads", int, None, "query heads"),
    ShapeKey("seq", int, None, "sequence length (queries = keys)"),
    ShapeKey("head_dim", int, None, "dimension of one head"),
    ShapeKey("causal", bool, False, "causal mask (0/1)"),
    ShapeKey("kv_heads", int, None, "key/value heads for GQA (default: heads)"),
)


def _attn_kwargs(s: dict, dtype: str) -> dict:
    return {
        "batch": s["batch"],
        "heads": s["heads"],
        "seq": s["seq"],
        "head_dim": s["head_dim"],
        "causal": s["causal"],
        "kv_heads": s.get("kv_heads"),
        "dtype": dtype,
    }


def _fast_kwargs(s: dict, dtype: str) -> dict:
    return {**_attn_kwargs(s, dtype), "outer_block": s["block"]}


def _moe_kwargs(s: dict, dtype: str) -> dict:
    return {
        "tokens": s["tokens"],
        "hidden": s["hidden"],
        "expert_ffn": s["expert_ffn"],
        "num_experts": s["experts"],
        "top_k": s["top_k"],
        "shared_experts": s["shared_experts"],
        # Each shared expert is as wide as a routed one (MoELayer's default shared_ffn).
        "shared_ffn": s["expert_ffn"] if s["shared_experts"] else 0,
        "dtype": dtype,
        # Rows per expert (a routing histogram); absent = uniform routing.
        "tokens_per_expert": list(s["tokens_per_expert"]) if "tokens_per_expert" in s else None,
    }


def _cdc_kwargs(s: dict, dtype: str) -> dict:
    return {
        "upscale": s["upscale"],
        "batch": s["batch"],
        "height": s["height"],
        "width": s["width"],
        "dtype": dtype,
    }


KERNELS: dict[str, KernelEntry] = {
    e.name: e
    for e in (
        KernelEntry(
            "standard-attention",
            "xpusim.sim.workloads.attention",
            "describe_standard_attention",
            _ATTN_KEYS,
            _attn_kwargs,
            "materialised attention: QK^T, scale, mask, softmax, PV (kernels/attention.py)",
        ),
        KernelEntry(
            "fastattention",
            "xpusim.sim.workloads.attention",
            "describe_fast_attention",
            (*_ATTN_KEYS, ShapeKey("block", int, 128, "outer tile size (query and key rows)")),
            _fast_kwargs,
            "FastAttention: tiled, online softmax, tiling mask (kernels/attention.py)",
        ),
        KernelEntry(
            "moe",
            "xpusim.sim.workloads.moe",
            "describe_moe",
            (
                ShapeKey("tokens", int, None, "tokens in the batch"),
                ShapeKey("hidden", int, None, "model hidden size"),
                ShapeKey("expert_ffn", int, None, "intermediate size of one expert"),
                ShapeKey("experts", int, None, "routed experts"),
                ShapeKey("top_k", int, None, "experts per token"),
                ShapeKey("shared_experts", int, 0, "always-active shared experts", minimum=0),
                ShapeKey(
                    "tokens_per_expert",
                    tuple,
                    None,
                    "rows each expert receives, ':'-separated (e.g. 20:12:0:32; "
                    "default uniform tokens*top_k/experts)",
                    minimum=0,
                ),
            ),
            _moe_kwargs,
            "MoE layer: router, dispatch, grouped SwiGLU experts, combine (kernels/moe.py)",
        ),
        KernelEntry(
            "cdc",
            "xpusim.sim.workloads.cdc",
            "describe_cdc",
            (
                ShapeKey("upscale", int, 4, "super-resolution factor"),
                ShapeKey("batch", int, 1, "images"),
                ShapeKey("height", int, None, "input (low-resolution) height in pixels"),
                ShapeKey("width", int, None, "input width in pixels"),
            ),
            _cdc_kwargs,
            "CDC super-resolution network forward (kernels/cdc.py)",
        ),
    )
}


def kernel_entry(name: str) -> KernelEntry:
    entry = KERNELS.get(name)
    if entry is None:
        raise InputError(f"unknown kernel '{name}': expected one of {', '.join(KERNELS)}")
    return entry


# A shape value is a tensor dimension: at most 2^31 - 1 (sim.limits.MAX_DIM).
MAX_SHAPE_VALUE = 2**31 - 1


def _convert(entry: KernelEntry, key: ShapeKey, value: object) -> int | bool | tuple[int, ...]:
    if key.kind is tuple:
        return _convert_list(entry, key, value)
    text = str(value).strip().lower()
    try:
        if key.kind is bool:
            if text in ("1", "true", "yes", "1.0"):
                return True
            if text in ("0", "false", "no", "0.0"):
                return False
            raise ValueError(text)
        number = float(text)
        if not number.is_integer() or number < key.minimum or number > MAX_SHAPE_VALUE:
            raise ValueError(text)
        return int(number)
    except ValueError:
        what = (
            "0 or 1"
            if key.kind is bool
            else f"an integer >= {key.minimum} (and <= {MAX_SHAPE_VALUE:,}, docs/limits.md)"
        )
        raise InputError(
            f"kernel {entry.name}: shape key '{key.name}' must be {what}, got '{value}'"
        ) from None


def _convert_list(entry: KernelEntry, key: ShapeKey, value: object) -> tuple[int, ...]:
    """'20:12:0:32' (or a sequence) -> (20, 12, 0, 32): integers >= ``key.minimum``."""
    items = value if isinstance(value, list | tuple) else str(value).replace("/", ":").split(":")
    try:
        numbers = tuple(float(str(v).strip()) for v in items if str(v).strip())
        if not numbers or any(
            not n.is_integer() or not key.minimum <= n <= MAX_SHAPE_VALUE for n in numbers
        ):
            raise ValueError(value)
    except ValueError:
        raise InputError(
            f"kernel {entry.name}: shape key '{key.name}' must be integers >= {key.minimum} "
            f"separated by ':' (e.g. {key.name}=20:12:0:32), got '{value}'"
        ) from None
    return tuple(int(n) for n in numbers)


def normalise_shape(name: str, shape: Mapping[str, object]) -> dict:
    """Check keys, convert values, fill defaults; the error names the key and the valid keys."""
    entry = kernel_entry(name)
    valid = ", ".join(k.name for k in entry.keys)
    out: dict = {}
    for key_name, value in shape.items():
        key = entry.key(key_name)
        if key is None:
            raise InputError(f"kernel {name}: unknown shape key '{key_name}'; valid keys: {valid}")
        out[key_name] = _convert(entry, key, value)
    for key in entry.keys:
        if key.name not in out:
            if key.default is None and key.name not in ("kv_heads", "tokens_per_expert"):
                raise InputError(
                    f"kernel {name}: shape key '{key.name}' is required "
                    f"({key.help}); valid keys: {valid}"
                )
            if key.default is not None:
                out[key.name] = key.default
    return out


# Tiles of a blockwise kernel's op graph: describe() lists ~17 ops per (query block,
# key block) pair, ~40 us and ~1.5 KB each to build and price (fastattention at seq
# 16384, block 128: 16,384 tiles, 279K ops, 11 s, 400 MB), so 2^14 tiles is the most
# that answers within about ten seconds.
MAX_KERNEL_TILES = 2**14


def check_kernel_work(name: str, shape: Mapping[str, object]) -> None:
    """Refuse, in O(1), a shape whose op graph would take minutes and gigabytes."""
    seq, block = shape.get("seq"), shape.get("block")
    if isinstance(seq, int | float) and isinstance(block, int | float) and block > 0:
        per_side = -(-int(seq) // int(block))
        if per_side > 2**31 or per_side * per_side > MAX_KERNEL_TILES:
            raise InputError(
                f"kernel {name}: seq={int(seq)} in blocks of {int(block)} is {per_side:,}^2 "
                f"tiles, above the limit of {MAX_KERNEL_TILES:,} (each tile is ~17 ops in "
                "the graph; docs/limits.md): raise block= or lower seq= (the time per tile "
                "is the same, so the total scales with the tile count)"
            )


def parse_shape(name: str, text: str) -> dict:
    """'batch=1,heads=8,seq=1024' -> a normalised shape dict for kernel ``name``."""
    pairs: dict[str, str] = {}
    for item in split_list(text, "--shape"):
        if "=" not in item:
            raise InputError(f"--shape: expected key=value pairs separated by commas, got '{item}'")
        key, value = (s.strip() for s in item.split("=", 1))
        if key in pairs:  # was: the last one silently won
            raise InputError(f"--shape: '{key}' is given twice; give each key once")
        pairs[key] = value
    return normalise_shape(name, pairs)


def describe_kernel(
    name: str, shape: Mapping[str, object], dtype: str = "fp32", **extra: object
) -> RankGraph:
    """The op graph of kernel ``name`` at ``shape`` (validated), built by its describe().

    ``extra`` goes to describe() unchanged (e.g. ``tokens_per_expert`` for moe: a
    measured routing histogram instead of uniform routing).
    """
    entry = kernel_entry(name)
    s = normalise_shape(name, shape)
    check_kernel_work(name, s)
    try:
        module = importlib.import_module(entry.module)
    except ModuleNotFoundError as exc:
        raise InputError(
            f"kernel {name}: its describe module {entry.module} is not available ({exc})"
        ) from None
    fn = getattr(module, entry.function)
    kwargs = {k: v for k, v in entry.kwargs(s, dtype).items() if v is not None}
    return fn(**kwargs, **extra)
