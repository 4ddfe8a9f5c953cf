"""The calibration run: measure the cases, fit the fit set, write the overlay.

Measurements are kept as CSV rows (one per case, with the noise statistics) so a
fit can be redone from committed data without re-timing (``--from-measurements``).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from xpusim.calibrate.allocator import pin_glibc_malloc
from xpusim.calibrate.device import LocalDevice, profile_for_gpu
from xpusim.calibrate.fit import FitParams, build_table, fit, held_parameters
from xpusim.calibrate.fit_result import FitResult
from xpusim.calibrate.harness import (
    HarnessConfig,
    Measurement,
    measure,
    noise_score,
    thread_minor_faults,
    timer_for,
)
from xpusim.calibrate.suites import SUITES, Case
from xpusim.hwprofiles import load_device
from xpusim.hwprofiles.spec import Device
from xpusim.sim.cost.page_faults import PAGE_BYTES, fresh_page_bytes
from xpusim.sim.errors import InputError
from xpusim.sim.inputs import open_text
from xpusim.sim.ir import OpKind

# A CPU's ATen path kinds (sim/cost/priced_kind.py), each with build_table's flag that
# merges it back into its op's own kind.
PATH_KINDS = {"split_conv": str(OpKind.CONV2D_IM2COL), "split_upsample": str(OpKind.UPSAMPLE_CL)}

# Base profile per local device kind; a CUDA GPU's from its product name
# (device.profile_for_gpu); an NPU needs --profile (which Ascend is it?).
DEFAULT_PROFILE = {"cpu": "cpu-host"}


@dataclass(frozen=True)
class Measured:
    case: Case
    m: Measurement

    def row(self, device: LocalDevice | None = None) -> dict:
        row = {
            "suite": self.case.suite,
            "split": self.case.split,
            "case": self.case.name,
            "shape": json.dumps(self.case.params, sort_keys=True),
            "dtype": self.case.dtype,
            **self.m.as_dict(),
            # MoE: rows per expert in the measured run, so a refit needs no torch.
            "routing": "" if self.case.routing is None else json.dumps(list(self.case.routing)),
        }
        if device is not None:
            row.update(
                {
                    "device": device.name,
                    "threads": device.threads,
                    "torch": device.torch_version,
                    "host_cpu": device.host_cpu,
                    "date": device.date,
                }
            )
            if device.accelerator:  # a GPU's facts (CPU rows keep their columns)
                row["accelerator"] = device.accelerator
        return row


def base_profile(kind: str, profile: str | None, device_name: str = "") -> str:
    """The profile to calibrate: ``--profile``, else the kind's default, else (CUDA) the
    profile of the GPU named ``device_name``."""
    if profile:
        return profile
    if kind in DEFAULT_PROFILE:
        return DEFAULT_PROFILE[kind]
    if kind == "cuda":
        return profile_for_gpu(device_name)
    raise InputError(
        f"--device {kind}: pass --profile NAME (the device profile to calibrate, "
        "e.g. h100-sxm5-80gb); 'xpusim hw list' shows them"
    )


def measure_cases(
    cases: Sequence[Case],
    local: LocalDevice,
    config: HarnessConfig,
    progress: Callable[[Case], None] | None = None,
) -> list[Measured]:
    """Time every case on ``local``; a case whose kernel fails to run is reported and skipped."""
    from xpusim.calibrate.device import require_torch

    torch = require_torch(f"timing kernels on --device {local.kind}")

    timer = timer_for(local.kind, local.threads)
    faults = None
    if local.kind == "cpu":
        # The allocator state the page-fault term prices, whatever ran before (allocator.py),
        # and each case warmed up until it faults no more than priced (harness.settle).
        pin_glibc_malloc()
        faults = thread_minor_faults()
    out: list[Measured] = []
    for case in cases:
        if progress:
            progress(case)
        try:
            fn = case.runner(local.torch_device)
        except (ImportError, NotImplementedError) as exc:
            raise InputError(f"suite {case.suite}: cannot build the kernel ({exc})") from None
        # Record the MoE routing now (torch is here) so --from-measurements needs none.
        routed = case.with_routing(local.torch_device)
        expected = modelled_faults(routed) if faults is not None else 0.0
        out.append(Measured(routed, measure(fn, timer=timer, config=config, faults=faults,
                                            expected_faults=expected)))
        del fn
        if local.kind == "cuda":
            torch.cuda.empty_cache()
    return out


def modelled_faults(case: Case) -> float:
    """Minor page faults per call the model prices for ``case``: the pages of its fresh
    outputs of at least glibc's mmap ceiling (``sim/cost/page_faults.py``)."""
    return sum(fresh_page_bytes(op.fresh_bytes) for op in case.graph().ops()) / PAGE_BYTES


def write_measurements(
    path: str | Path, measured: Sequence[Measured], local: LocalDevice | None = None
) -> Path:
    from xpusim.sim.report import write_csv

    return write_csv(path, [m.row(local) for m in measured])


# Columns read_measurements needs (write_measurements writes these and more).
REQUIRED_COLUMNS = (
    "suite", "split", "shape", "dtype", "median_s", "q1_s", "q3_s", "min_s", "reps",
    "rel_iqr", "outlier_fraction", "noisy",
)  # fmt: skip


def read_measurements(path: str | Path, flag: str = "") -> list[Measured]:
    """Rows written by ``write_measurements``; a file the csv module cannot split (a
    field above its 128 KiB limit: not a measurements file) is an InputError too."""
    try:
        return _read_measurements(path, flag)
    except csv.Error as exc:
        raise InputError(
            f"{flag} {path}: not a measurements CSV ({exc}); pass one written by "
            "'xpusim calibrate'".strip()
        ) from None


def _read_measurements(path: str | Path, flag: str = "") -> list[Measured]:
    """Rows written by ``write_measurements`` back into (case, measurement) pairs.

    ``flag`` (e.g. ``--from-measurements``) prefixes every error message, so the user
    sees which option named the bad file.
    """
    path = Path(path)
    where = f"{flag} {path}" if flag else str(path)
    out = []
    # sim.inputs: missing, directory, permissions, size, UTF-8 -> InputError naming it.
    with open_text(path, f"{where}: measurements" if flag else "measurements") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise InputError(
                f"{where}: missing column(s) {', '.join(missing)}; pass a measurements CSV "
                "written by 'xpusim calibrate' (columns: " + ", ".join(REQUIRED_COLUMNS) + ")"
            )
        for line, row in enumerate(reader, start=2):
            if row["suite"] not in SUITES:
                raise InputError(
                    f"{where}:{line}: unknown suite '{row['suite']}'; known: {', '.join(SUITES)}"
                )
            try:
                shape = tuple((k, float(v)) for k, v in json.loads(row["shape"]).items())
                routing = _routing(row.get("routing"))
                case = Case(row["suite"], shape, row["split"], row["dtype"], routing)
                m = Measurement(
                    float(row["median_s"]),
                    float(row["q1_s"]),
                    float(row["q3_s"]),
                    float(row["min_s"]),
                    int(row["reps"]),
                    float(row["rel_iqr"]),
                    float(row["outlier_fraction"]),
                    row["noisy"] == "True",
                    float(row.get("wall_median_s") or row["median_s"]),
                    float(row.get("contention") or 1.0),
                )
                numbers = [v for _, v in shape] + [m.median_s, m.q1_s, m.q3_s, m.min_s]
                if not all(math.isfinite(v) for v in numbers) or not m.median_s > 0:
                    raise ValueError("times and shape values must be finite, median_s > 0")
            except (KeyError, ValueError, TypeError, AttributeError, RecursionError) as exc:
                # json.JSONDecodeError is a ValueError; a None cell (short row) a TypeError.
                raise InputError(
                    f"{where}:{line}: bad measurement row ({exc}); "
                    "regenerate it with 'xpusim calibrate'"
                ) from None
            out.append(Measured(case, m))
    return out


def _routing(cell: str | None) -> tuple[int, ...] | None:
    """The 'routing' cell: a JSON list of rows per expert, or empty (not recorded)."""
    if not cell:
        return None
    return tuple(int(v) for v in json.loads(cell))


def fit_measured(measured: Sequence[Measured], base: Device) -> FitResult:
    """Fit the roofline parameters of ``base`` to the fit-split measurements."""
    rows = [m for m in measured if m.case.split == "fit"]
    if len(rows) < 8:
        raise InputError(f"only {len(rows)} fit cases measured; the fit needs at least 8")
    graphs = [m.case.graph() for m in rows]
    table = build_table(graphs, base)
    held = held_parameters(base)
    start = replace(FitParams.from_device(base), **held)
    fitted = table.fitted_kinds(start)
    merge = {
        flag: False for flag, kind in PATH_KINDS.items() if kind in table.kinds and kind not in fitted
    }
    if merge:
        # Too few cases of one of torch's CPU paths (slow-path convolutions, channels-last
        # upsamplings) to fit it apart: fit it under its op's own kind (`conv2d`,
        # `upsample`), as an overlay without the path's kind prices it.
        table = build_table(graphs, base, **merge)
    result = fit(
        table,
        [m.m.median_s for m in rows],
        start,
        groups=[m.case.suite for m in rows],
        fixed=tuple(held),
    )
    return replace(result, model_gap=model_gap(graphs, table, result.params, base))


def model_gap(graphs: Sequence, table, params: FitParams, base: Device) -> float:
    """Largest relative gap between the fit's vectorised case times and RooflineModel's
    (what predict / validate use) at ``params``: the fit is only a fit of the priced model
    where this is ~0. It is 0 on the CPU and on the GPU grids' GEMMs (fit.py restates the
    operand feed, the finite load/MMA pipeline and the epilogue store); what is left is
    where ``FitParams.to_device`` cannot carry a fitted max above 1 (an fp32 GEMM on a GPU
    is priced at the fp32 vector peak, which a raised matrix peak does not raise: 10-23%
    at matrix_max 1.3 on H100, 2026-12-07)."""
    from xpusim.calibrate.fit import case_times
    from xpusim.sim.cost import RooflineModel

    model = RooflineModel(params.to_device(base))
    priced = np.array([sum(model.time(op).time_s for op in g.ops()) for g in graphs])
    return float(np.max(np.abs(case_times(table, params) / priced - 1.0)))


def predict_case(case: Case, device: Device) -> float:
    """Predicted time of one case: sum of its ops' roofline times (one stream)."""
    from xpusim.sim.cost import RooflineModel

    model = RooflineModel(device)
    return sum(model.time(op).time_s for op in case.graph().ops())


def provenance(
    local: LocalDevice, base_name: str, quick: bool, seed: int, measured: Sequence[Measured]
) -> dict:
    from xpusim.sim import __version__

    noise = noise_score([m.m for m in measured])
    out: dict = {
        "device_name": local.name,
        "device_kind": local.kind,
        "base_profile": base_name,
        "torch_version": local.torch_version,
        "threads": local.threads,
        "host_cpu": local.host_cpu,
        "date": local.date,
        "xpusim_version": __version__,
        "mode": "quick" if quick else "full",
        "seed": seed,
        "suites": sorted({m.case.suite for m in measured}),
        "fit_cases": sum(m.case.split == "fit" for m in measured),
        "heldout_cases": sum(m.case.split == "heldout" for m in measured),
        "noise_median_rel_iqr": noise["median_rel_iqr"],
        "noise_p90_rel_iqr": noise["p90_rel_iqr"],
        "noisy_fraction": noise["noisy_fraction"],
        "median_contention": noise["median_contention"],
        "max_contention": noise["max_contention"],
        "timer": (
            "device events"
            if local.kind != "cpu"
            else "thread CPU time"
            if local.threads == 1
            else "wall clock"
        ),
        # The cases' dtype: validate re-derives the held-out cases with it.
        "dtype": ",".join(sorted({m.case.dtype for m in measured})),
    }
    if local.accelerator:
        out["accelerator"] = local.accelerator
    return out


def load_base(name: str, local: LocalDevice | None = None) -> Device:
    """The profile to calibrate. On a CPU timed with fewer threads than it has cores,
    the device *is* those threads: cores and peaks scale to ``threads / cores`` (so GEMM
    wave quantisation and the fitted efficiencies describe what was measured); the
    overlay records the scaled figures and provenance says why."""
    base = load_device(name)
    if local is None or local.kind != "cpu":
        return base
    if local.threads > 0:  # torch picks a convolution's path by it (sim/cost/conv_path.py)
        base = replace(base, threads=local.threads)
    if not 0 < local.threads < base.cores:
        return base
    f = local.threads / base.cores
    return replace(
        base,
        cores=local.threads,
        matrix_cores=min(base.matrix_cores, local.threads),
        vector_cores=min(base.vector_cores, local.threads),
        matrix_peak={k: v * f for k, v in base.matrix_peak.items()},
        vector_peak={k: v * f for k, v in base.vector_peak.items()},
    )


def recorded_device(path: str | Path, kind: str) -> LocalDevice:
    """The device a measurements CSV was taken on (from its first row)."""
    with open_text(path, "measurements") as fh:
        try:
            row = next(csv.DictReader(fh), None)
        except csv.Error as exc:
            raise InputError(f"{path}: not a measurements CSV ({exc})") from None
    if row is None:
        raise InputError(f"{path}: no measurements")
    return LocalDevice(
        kind=kind,
        torch_device=kind,
        name=row.get("device", "?"),
        accelerator=row.get("accelerator", ""),
        torch_version=row.get("torch", "?"),
        threads=int(row.get("threads", 0) or 0),
        host_cpu=row.get("host_cpu", "?"),
        date=row.get("date", "?"),
    )
