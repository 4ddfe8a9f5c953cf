"""Write (and read back) a calibration overlay: the fitted parameters as a profile patch.

The overlay has the same sections and unit-suffixed keys as a device profile
(``docs/profiles.md``) and is deep-merged over the base by ``xpusim.hwprofiles.loader``:

    schema_version = 1
    kind = "calibration"
    device = "cpu-host"
    [provenance]  # who/where/when: kept as metadata, ignored by the loader
    [fit]         # the fit summary: ditto
    [efficiency]  # the fitted parameters
    [matrix] / [vector] / [cores] / [hbm]  # peaks, core counts and bandwidth as calibrated
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from xpusim.calibrate.fit import FitParams
from xpusim.calibrate.fit_result import FitResult
from xpusim.hwprofiles.schema import GIGA, MIB, TERA, US
from xpusim.hwprofiles.spec import Device
from xpusim.sim.report import write_text_atomic


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return '"nan"'
        return repr(float(f"{value:.6g}"))
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def dumps(doc: dict[str, Any]) -> str:
    """Minimal TOML writer: top-level scalars, then one table per dict (inline dicts inside)."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    for key, table in doc.items():
        if isinstance(table, dict):
            lines.append("")
            lines.append(f"[{key}]")
            lines.extend(f"{k} = {_toml_value(v)}" for k, v in table.items())
    return "\n".join(lines) + "\n"


def overlay_doc(base: Device, result: FitResult, provenance: dict[str, Any]) -> dict[str, Any]:
    """The overlay as a dict: efficiency in profile units, raised peaks where the fit needs them."""
    p: FitParams = result.params
    fitted = p.to_device(base)
    e = fitted.efficiency
    src = (
        f"calibrated on {provenance.get('device_name', '?')} at {provenance.get('date', '?')} "
        f"by 'xpusim calibrate' (least_squares on log-time residuals, "
        f"{result.n_cases} cases); see [fit]"
    )
    doc: dict[str, Any] = {
        "schema_version": 1,
        "kind": "calibration",
        "device": base.name,
        "provenance": provenance,
        "fit": {
            "cases": result.n_cases,
            "fitted_kinds": list(result.fitted_kinds),
            "cost": result.cost,
            "rms_log_error": result.rms_log_error,
            "median_abs_error": result.median_abs_error,
            "p90_abs_error": result.p90_abs_error,
            "at_bound": list(result.at_bound),
            "held": list(result.held),
            "success": result.success,
            "message": result.message,
            "model_gap": result.model_gap,
            # Raw fitted maxima: above 1 means the profile peak was raised (see module doc).
            "raw_matrix_max": p.matrix_max,
            "raw_vector_max": p.vector_max,
            "raw_memory_max": p.memory_max,
        },
        "efficiency": {
            "matrix_max": e.matrix_max,
            "matrix_half_gflop": e.matrix_half_flops / GIGA,
            "vector_max": e.vector_max,
            "vector_half_mflop": e.vector_half_flops / 1e6,
            "memory_max": e.memory_max,
            "memory_half_mib": e.memory_half_bytes / MIB,
            "launch_overhead_us": e.launch_overhead_s / US,
            "cache_mib": e.cache_bytes / MIB,
            "cache_speedup": e.cache_speedup,
            "overlap": e.overlap,
            "kind_speed": dict(e.kind_speed),
            "kind_overhead_us": {k: v / US for k, v in e.kind_overhead_s.items()},
            "source": src,
        },
    }
    if e.first_touch:  # a CPU's first-touch bytes (sim/cost/first_touch.py); absent: off
        doc["efficiency"]["first_touch"] = True
    # Peaks, cores and bandwidth as calibrated: they differ from the base profile when a
    # fitted max exceeded 1 or when a CPU was timed with fewer threads than cores.
    doc["matrix"] = {"peak_tflops": {k: v / TERA for k, v in fitted.matrix_peak.items()}}
    doc["vector"] = {"peak_tflops": {k: v / TERA for k, v in fitted.vector_peak.items()}}
    doc["cores"] = {
        "count": fitted.cores,
        "matrix": fitted.matrix_cores,
        "vector": fitted.vector_cores,
    }
    doc["hbm"] = {"bandwidth_gbps": fitted.hbm_bandwidth / GIGA}
    return doc


def write_overlay(path: str | Path, doc: dict[str, Any]) -> Path:
    path = Path(path)
    # Atomic (temp file + rename): an interrupted run leaves the previous overlay whole.
    return write_text_atomic(
        path,
        "# Calibration overlay written by 'xpusim calibrate'; load with --calibration FILE.\n"
        + dumps(doc),
    )
