"""Fit a serving-engine profile's host overheads to reported SD speedups (calibration).

Host overheads are serial ``Delay`` s around the device work of each forward, so a
step's time is (device time, from the simulator) + (host terms, linear in the
parameters). We simulate the device times once and fit

    step_overhead_s          (per target forward: AR step and verify)
    step_overhead_per_seq_s  (per sequence of a forward; a verify pass counts B x (gamma+1),
                              a draft step its bonus-expanded rows, ``draft_rows``,
                              once per round with ``draft_prepare_once``)
    draft_step_overhead_s    (per draft forward)

with ``scipy.optimize.least_squares`` (trust region reflective, bounds >= 0) on the
relative error of the peak speedups of the chosen cases. Run once on 2xA800 (see
docs/speculative_decoding.md); the fitted values are written into
``hwprofiles/engines/vllm-0.6.toml`` by hand with this provenance, and every other
platform is predicted without refitting.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy.optimize import least_squares
from xpusim.hwprofiles import load_system
from xpusim.hwprofiles.spec import System
from xpusim.sim.inference.engine_profile import EngineProfile, engine_for_system, load_engine
from xpusim.sim.inference.moesd_reference import FIT_SELECTION, PeakCase, case_model, load_reference
from xpusim.sim.inference.speculative import all_accepted, draft_rows, expected_tokens
from xpusim.sim.models.hf_config import load_model
from xpusim.sim.models.spec import ModelSpec

FIT_PARAMS = ("step_overhead_s", "step_overhead_per_seq_s", "draft_step_overhead_s")


@dataclass(frozen=True)
class DeviceTimes:
    """Per batch: device-only (and fixed-host) times of the three forwards of a round."""

    case: PeakCase
    batches: np.ndarray
    host_scale: float  # the system's host-CPU scale of the fitted (reference-host) terms
    ar: np.ndarray
    draft: np.ndarray  # one draft forward
    verify: np.ndarray
    draft_rows: np.ndarray  # sequences of each draft forward (speculative.draft_rows)
    draft_prepares: int = 0  # draft forwards paying the per-sequence term (0: all gamma)


def zero_fit_params(engine: EngineProfile) -> EngineProfile:
    """The profile with the fitted host terms at zero: device time plus fixed host terms."""
    zeros: dict[str, Any] = {p: 0.0 for p in FIT_PARAMS}
    return replace(engine, **zeros)


def device_times(
    case: PeakCase,
    load: Callable[[str], ModelSpec],
    system: System,
    devices: int,
    engine: EngineProfile,
    batches: list[int],
    context: float = 512.0,
) -> DeviceTimes:
    model = case_model(case, load, system, devices, zero_fit_params(engine), context)
    rows = model.sweep(batches)
    g = case.gamma
    share = all_accepted(case.alpha, g)
    return DeviceTimes(
        case,
        np.array(batches, float),
        engine_for_system(engine, system.name).host_scale,
        np.array([r.t_ar_s for r in rows]),
        np.array([r.t_draft_s / g for r in rows]),
        np.array([r.t_verify_s + r.t_reject_s for r in rows]),
        np.array([draft_rows(engine, b, share) for b in batches], float),
        # speculative.draft_steps_time: inputs prepared once per round (vLLM V0 multi-step)
        1 if engine.draft_prepare_once and engine.host_overlap == "none" else 0,
    )


def peak_speedup(times: DeviceTimes, params: np.ndarray) -> float:
    """Peak over batches of the speedup with the fitted host terms added (exact: they are serial)."""
    step, per_seq, draft_step = np.asarray(params) * times.host_scale
    g = times.case.gamma
    b = times.batches
    tokens = expected_tokens(times.case.alpha, g)
    ar = times.ar + step + per_seq * b
    prepares = times.draft_prepares or g
    round_s = (
        g * (times.draft + draft_step) + prepares * per_seq * times.draft_rows
        + times.verify + step + per_seq * b * (g + 1)
    )
    return float(np.max(tokens * ar / round_s))


@dataclass(frozen=True)
class FitResult:
    params: dict[str, float]
    residuals: list[float]  # relative errors of the fitted cases
    cases: list[str]


def fit_engine(
    cases: list[PeakCase],
    load: Callable[[str], ModelSpec],
    system: System,
    devices: int,
    engine: EngineProfile,
    batches: list[int],
    context: float = 512.0,
) -> FitResult:
    times = [device_times(c, load, system, devices, engine, batches, context) for c in cases]

    def residuals(x: np.ndarray) -> np.ndarray:
        return np.array([peak_speedup(t, x) / t.case.peak_speedup - 1.0 for t in times])

    x0 = np.array([1e-3, 1e-5, 1e-3])
    sol = least_squares(
        residuals, x0, bounds=(0.0, [0.05, 1e-3, 0.05]), method="trf", x_scale=[1e-3, 1e-5, 1e-3]
    )
    return FitResult(
        dict(zip(FIT_PARAMS, map(float, sol.x), strict=True)),
        [float(r) for r in residuals(sol.x)],
        [c.label for c in cases],
    )


def fit_vllm_on_2xa800(system_name: str = "hgx-a800", engine_name: str = "vllm-0.6") -> FitResult:
    """The documented calibration: Table 1 humaneval T=0 rows (Qwen2 + Mixtral, gamma 2-4) on 2xA800."""
    ref = load_reference()
    cases = [c for c in ref.table1 if FIT_SELECTION(c)]
    return fit_engine(
        cases, load_model, load_system(system_name), 2, load_engine(engine_name), ref.batches
    )


if __name__ == "__main__":
    result = fit_vllm_on_2xa800()
    for key, value in result.params.items():
        print(f"{key.removesuffix('_s')}_us = {value * 1e6:.1f}")
    for label, err in zip(result.cases, result.residuals, strict=True):
        print(f"  {label}: {err:+.1%}")
