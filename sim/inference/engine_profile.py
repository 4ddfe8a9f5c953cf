"""Serving-engine profiles (vLLM, ...): the host-side costs the hardware model cannot see.

A profile is a TOML file in ``hwprofiles/engines/`` (or a user path) with
unit-suffixed keys (``_us``); this module loads it into an ``EngineProfile`` in SI.
Each parameter is documented in the file with its source; values fitted to
measurements say so in ``[fit]``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, replace
from pathlib import Path

from hwprofiles.loader import ROOT as HWPROFILES_ROOT
from hwprofiles.spec import Device
from sim.errors import InputError
from sim.tomlfile import read_toml

ENGINE_DIR = HWPROFILES_ROOT / "engines"
US = 1e-6


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
    sources: dict[str, str] = field(default_factory=dict)

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
        return self.step_overhead_s + self.step_overhead_per_seq_s * sequences

    def sampling_time(self, tokens: float) -> float:
        return self.sampling_s + self.sampling_per_token_s * tokens

    def reject_time(self, scored_tokens: float) -> float:
        return self.reject_s + self.reject_per_token_s * scored_tokens


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
_PLAIN_KEYS = {
    "cuda_graphs": bool,
    "cuda_graph_max_batch": int,
    "memory_utilization": float,
    "max_num_seqs": int,
    "max_batched_tokens": int,
}


def list_engines() -> list[str]:
    return sorted(p.stem for p in ENGINE_DIR.glob("*.toml"))


def load_engine(name_or_path: str | None) -> EngineProfile:
    """Load ``hwprofiles/engines/<name>.toml`` or a path; None or "none" gives NO_ENGINE."""
    if name_or_path in (None, "", "none"):
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
    values: dict = {"name": name, "description": str(data.get("description", ""))}
    sources: dict[str, str] = {}
    known = {"kind", "name", "description", "schema_version", "fit"}
    for section, body in data.items():
        if section in known:
            continue
        if not isinstance(body, dict):
            raise InputError(
                f"{path}: top-level field '{section}' is unknown; parameters live "
                f"in sections such as [host], [kernels], [speculative], [scheduler]"
            )
        for key, value in body.items():
            where = f"{section}.{key}"
            if key == "source":
                sources[section] = str(value)
            elif key in _US_KEYS:
                if not isinstance(value, int | float) or value < 0:
                    raise InputError(
                        f"{path}: field '{where}' must be a number >= 0 (microseconds)"
                    )
                values[_US_KEYS[key]] = float(value) * US
            elif key in _PLAIN_KEYS:
                typ = _PLAIN_KEYS[key]
                if typ is bool and not isinstance(value, bool):
                    raise InputError(f"{path}: field '{where}' must be true or false")
                if typ is not bool and (not isinstance(value, int | float) or value <= 0):
                    raise InputError(f"{path}: field '{where}' must be a positive number")
                values[key] = typ(value)
            else:
                allowed = ", ".join(sorted([*_US_KEYS, *_PLAIN_KEYS]))
                raise InputError(f"{path}: unknown field '{where}'; known fields: {allowed}")
    if "fit" in data:
        sources["fit"] = str(data["fit"].get("method", "")) if isinstance(data["fit"], dict) else ""
    if not 0 < values.get("memory_utilization", 0.9) <= 1:
        raise InputError(f"{path}: memory_utilization must be in (0, 1]")
    return EngineProfile(**values, sources=sources)
