"""The reader of one HF ``config.json``: typed key access whose errors name the file and key.

Shared by ``hf_config`` (the families' table) and ``hf_families`` (the families added
later), so that neither imports the other's parsers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from xpusim.sim.errors import InputError
from xpusim.sim.limits import MAX_DIM, MAX_LAYERS

# Layer counts: the model is walked layer by layer (sim.limits.MAX_LAYERS).
LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_nextn_predict_layers", "num_mtp_layers")


class ConfigReader:
    """A config dict and where it came from, so every error names the file and the key."""

    def __init__(self, data: Mapping[str, Any], source: str) -> None:
        self.data = data
        self.source = source
        self.model_type = str(data.get("model_type", "?"))

    def error(self, key: str, problem: str) -> InputError:
        return InputError(f"{self.source}: key '{key}' {problem} (model_type '{self.model_type}')")

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def pick(self, *keys: str) -> str:
        """The first of ``keys`` present (aliases: HF name first); the first one if none is."""
        for key in keys:
            if self.has(key):
                return key
        return keys[0]

    def int_(self, key: str, default: int | None = None, minimum: int = 1) -> int:
        """An integer >= ``minimum``; required when ``default`` is None."""
        value = self.data.get(key)
        if value is None:
            if default is None:
                raise InputError(
                    f"{self.source}: missing required key '{key}' for model_type "
                    f"'{self.model_type}'; add it to the config (see docs/models.md)"
                )
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(key, f"must be an integer, got {value!r}")
        if not math.isfinite(value) or value != int(value):
            raise self.error(key, f"must be an integer, got {value!r}")
        if value < minimum:
            raise self.error(key, f"must be >= {minimum}, got {value!r}")
        high = MAX_LAYERS if key in LAYER_KEYS else MAX_DIM
        if value > high:
            # sim.limits: 1e30 is not a layer or head count; counts are tensor dimensions.
            raise self.error(key, f"must be <= {high:,} (docs/limits.md), got {value!r}")
        return int(value)

    def bool_(self, key: str, default: bool) -> bool:
        value = self.data.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, got {value!r}")
        return value

    def float_(self, key: str, default: float, low: float, high: float) -> float:
        """A finite number in (low, high]."""
        value = self.data.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(key, f"must be a number, got {value!r}")
        if not math.isfinite(value) or not low < value <= high:
            raise self.error(key, f"must be in ({low:g}, {high:g}], got {value!r}")
        return float(value)

    def str_(self, key: str, default: str) -> str:
        value = self.data.get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self.error(key, f"must be a string, got {value!r}")
        return value


def attention_heads(cfg: ConfigReader, hidden: int) -> tuple[int, int, int]:
    """(heads, kv_heads, head_dim) of GQA/MHA attention."""
    heads = cfg.int_("num_attention_heads")
    kv_heads = cfg.int_("num_key_value_heads", heads)
    if heads % kv_heads:
        raise cfg.error(
            "num_key_value_heads", f"({kv_heads}) must divide num_attention_heads ({heads})"
        )
    if cfg.has("head_dim"):
        head_dim = cfg.int_("head_dim")
    else:
        if hidden % heads:
            raise cfg.error(
                "num_attention_heads",
                f"({heads}) must divide hidden_size ({hidden}), or set head_dim",
            )
        head_dim = hidden // heads
    return heads, kv_heads, head_dim


def layer_values(cfg: ConfigReader, types: object, layers: int, kinds: dict[str, int]) -> tuple[int, ...]:
    """Each layer's value from a ``layer_types`` list (one attention kind name per layer,
    as HF's gpt-oss and Llama 4 configs write it), mapped through ``kinds``; a clear error
    naming ``layer_types`` for a list of the wrong length or an unknown kind."""
    if not isinstance(types, list) or len(types) != layers:
        raise cfg.error("layer_types", f"must be a list of {layers} entries (num_hidden_layers), "
                                       f"got {types!r:.80}")
    bad = [t for t in types if t not in kinds]
    if bad:
        names = " or ".join(repr(k) for k in kinds)
        raise cfg.error("layer_types", f"entries must be {names}, got {bad[0]!r}")
    return tuple(kinds[t] for t in types)
