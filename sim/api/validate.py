"""``validate``: the simulator's prediction error, in one of two modes.

- **published** (``published=True``): every row of the validation corpus
  (``sim/data/validation``, docs/validation.md) through the study its command names,
  scored against the published measurement; a per-category table of errors beside the
  naive baseline's.
- **local** (``calibration=``): the held-out shapes of a local calibration, measured on
  this machine (torch) or read from a measurements CSV, predicted with the calibrated and
  the uncalibrated profile; writes ``validation.json``, ``validation.csv`` and
  ``validation.png`` under ``out``.

Both write the files the command writes (``csv``/``plot``; the local mode's ``out``
folder), and the result's ``as_dict()`` is ``xpusim validate ... --json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from xpusim.hwprofiles import load_device
from xpusim.sim.api.base import as_json_dict, request_from_kwargs
from xpusim.sim.errors import InputError
from xpusim.sim.report import (
    check_output_file,
    check_plot_path,
    emit_json,
    make_output_folder,
    write_csv,
)
from xpusim.sim.units import split_list
from xpusim.sim.validation.runner import RowResult

DEVICES = ("cpu", "cuda", "npu")


@dataclass(frozen=True)
class ValidateRequest:
    """``xpusim validate``'s flags as data."""

    # Published mode: the corpus of published measurements.
    published: bool = False
    category: str | tuple[str, ...] | None = None  # comma list or tuple; default: all
    rows: str | tuple[str, ...] | None = None  # row ids, comma list or tuple; default: all
    jobs: int = 1  # worker processes (results identical for any number)
    csv: str | None = None  # write one line per row to this CSV file
    plot: str | None = None  # write the predicted-vs-measured scatter (PNG/SVG)
    # Local mode: the held-out shapes of a calibration overlay (xpusim calibrate).
    calibration: str | None = None
    device: str = "cpu"  # cpu | cuda | npu: where to measure
    measurements: str | None = None  # read held-out rows of this CSV instead of timing
    threads: int | None = None  # torch threads; default: the calibration's
    suites: str | None = None  # comma list; default: the calibration's
    out: str = "out/validate"  # folder for validation.{json,csv,png}
    compare: str | None = None  # a second overlay: how far its predictions are
    check: bool = False  # the command exits 1 when a checked suite misses a threshold
    check_suites: str = "fastattention,moe,cdc"
    max_median_error: float = 0.10
    max_p90_error: float = 0.25
    progress: bool = False  # progress bar on stderr


@dataclass(frozen=True)
class ValidateResult:
    """The errors; ``as_dict()`` is ``xpusim validate --json``."""

    mode: str  # "published" or "local"
    # Published: per category (n, median/p90/max |error|, bias, the naive baseline's);
    # local: per suite (calibrated and uncalibrated median/p90 |error|).
    summary: dict[str, dict[str, Any]]
    rows: list[RowResult]  # published: one per selected corpus row, in corpus order
    passed: bool  # local: every checked suite within the thresholds; published: True
    failures: list[str]  # local: one message per suite that missed a threshold
    files: list[str] | dict[str, str]  # what was written (the command's "files")
    payload: dict[str, Any] = field(repr=False)

    def as_dict(self) -> dict[str, Any]:
        return as_json_dict(self.payload)


def validate(request: ValidateRequest | None = None, /, **kwargs: Any) -> ValidateResult:
    """Score the published corpus (``published=True``) or a local calibration's held-out
    shapes (``calibration=``)."""
    req = request_from_kwargs(ValidateRequest, request, kwargs, "xpusim.validate")
    _refuse_other_mode(req)
    if req.published:
        return _published(req)
    if not req.calibration:
        raise InputError(
            "validate needs --calibration FILE (held-out shapes of a local calibration) "
            "or --published (the corpus of published measurements)"
        )
    return _local(req)


# Options of one mode the other ignored (validate --published --calibration X scored the
# corpus without a word about X).
# A field counts as given when it differs from its default (--check, --max-median-error,
# --out and --device with --published were dropped as well).
LOCAL_ONLY = ("calibration", "measurements", "threads", "suites", "compare", "check",
              "check_suites", "max_median_error", "max_p90_error", "out", "device")
PUBLISHED_ONLY = ("category", "rows", "csv", "plot", "jobs")


def _refuse_other_mode(req: ValidateRequest) -> None:
    other = LOCAL_ONLY if req.published else PUBLISHED_ONLY
    defaults = {f.name: f.default for f in fields(ValidateRequest)}
    given = ["--" + f.replace("_", "-") for f in other if getattr(req, f) != defaults[f]]
    if given and req.published:
        raise InputError(f"{', '.join(given)}: options of a local calibration's validation, "
                         "not of --published: drop them, or drop --published")
    if given:
        raise InputError(f"{', '.join(given)}: options of --published (the corpus): add "
                         "--published, or drop them")


def _names(value: str | tuple[str, ...] | None, flag: str) -> list[str] | None:
    if isinstance(value, str):
        value = tuple(split_list(value, flag))
    names = [t.strip() for t in value or () if t.strip()]
    return names or None


def _suite_names(value: str | tuple[str, ...] | None, flag: str) -> list[str] | None:
    """Suite names checked against the calibration's suites: an unknown one (a typo) was
    dropped silently, so '--check-suites fastatention' checked nothing and passed."""
    from xpusim.calibrate.suites import SUITES

    names = _names(value, flag)
    unknown = [s for s in names or () if s not in SUITES]
    if unknown:
        raise InputError(f"{flag}: unknown {', '.join(unknown)}; choose from {', '.join(SUITES)}")
    return names


def _published(req: ValidateRequest) -> ValidateResult:
    from xpusim.sim.validation import report

    if req.plot:
        check_plot_path(req.plot)
    if req.csv:
        check_output_file(req.csv, "--csv")
    if req.jobs < 1:
        raise InputError(f"--jobs must be >= 1, got {req.jobs}")
    selected = report.select_rows(_names(req.category, "--category"), _names(req.rows, "--rows"))
    payload = report.published_payload(selected, req.jobs, req.progress)
    results = payload.pop("_results")
    written = []
    if req.csv:
        written.append(str(write_csv(req.csv, [r.as_dict() for r in results])))
    if req.plot:
        from xpusim.sim.validation.plot import scatter

        shown = req.category if isinstance(req.category, str) else ",".join(req.category or ())
        title = "xpusim vs published measurements" + (f" ({shown})" if shown else "")
        written.append(str(scatter(results, req.plot, title)))
    payload = {**payload, "files": written}
    return ValidateResult(
        mode="published",
        summary=payload["summary"],
        rows=results,
        passed=True,
        failures=[],
        files=written,
        payload=payload,
    )


def _local(req: ValidateRequest) -> ValidateResult:
    from xpusim.calibrate import validate as v

    if req.device not in DEVICES:
        raise InputError(f"--device {req.device!r}: choose one of {', '.join(DEVICES)}")
    assert req.calibration is not None
    meta = v.read_overlay_meta(req.calibration)
    # Each overlay whole (every field, on its base device) before any timing: a bad
    # figure used to surface only after the minutes of measuring.
    for overlay in (req.calibration, req.compare):
        if overlay:
            base = v.read_overlay_meta(overlay)["base_profile"]
            load_device(str(base), calibration=overlay)
    suites = _suite_names(req.suites, "--suites")
    check_suites = _suite_names(req.check_suites, "--check-suites") or []
    make_output_folder(req.out, "--out", "validation.json, validation.csv and validation.png")
    measured, local = _measured(req, meta, suites)
    if not measured:
        raise InputError("no held-out cases to validate (check --suites / --measurements)")
    points = v.predict_points(measured, req.calibration)
    payload = v.report(points, meta, req.calibration, local)
    if req.compare:
        payload["repeatability"] = v.compare_calibrations(
            [p.case for p in points], req.calibration, req.compare
        )
    failures = v.check(payload["suites"], check_suites, req.max_median_error, req.max_p90_error)
    payload["check"] = {
        "suites": check_suites,
        "max_median_error": req.max_median_error,
        "max_p90_error": req.max_p90_error,
        "failures": failures,
        "passed": not failures,
    }
    payload["files"] = _write_local(req, points, meta, payload)
    return ValidateResult(
        mode="local",
        summary=payload["suites"],
        rows=[],
        passed=not failures,
        failures=list(failures),
        files=payload["files"],
        payload=payload,
    )


def _measured(
    req: ValidateRequest, meta: dict[str, Any], suites: list[str] | None
) -> tuple[list[Any], dict[str, Any] | None]:
    """The held-out measurements (read from the CSV, or timed here) and, when timed, the
    local device's description."""
    if req.measurements:
        from xpusim.calibrate.pipeline import read_measurements

        rows = read_measurements(req.measurements, "--measurements")
        measured = [m for m in rows if m.case.split == "heldout"]
        if suites:
            measured = [m for m in measured if m.case.suite in suites]
        return measured, None
    from xpusim.calibrate import validate as v
    from xpusim.calibrate.device import detect, require_torch

    require_torch("'xpusim validate' (timing held-out kernels; '--measurements CSV' needs no torch)")
    from tqdm import tqdm
    from xpusim.calibrate.harness import HarnessConfig
    from xpusim.calibrate.pipeline import measure_cases

    threads = req.threads or int(meta.get("threads") or 1)
    dev = detect(req.device, threads=threads)
    todo = v.heldout_cases(meta, suites)
    config = HarnessConfig.quick() if meta.get("mode") == "quick" else HarnessConfig()
    with tqdm(total=len(todo), desc="validate", unit="case", disable=not req.progress) as bar:
        measured = measure_cases(todo, dev, config, lambda c: bar.update(1))
    return measured, dev.as_dict()


def _write_local(
    req: ValidateRequest, points: list[Any], meta: dict[str, Any], payload: dict[str, Any]
) -> dict[str, str]:
    from xpusim.calibrate import validate as v

    out = Path(req.out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = write_csv(out / "validation.csv", [p.row() for p in points])
    png = v.scatter_plot(
        points,
        out / "validation.png",
        f"held-out: {meta.get('base_profile')} calibrated on "
        f"{meta.get('device_name', '?')} ({meta.get('mode')})",
    )
    files = {"csv": str(csv_path), "plot": str(png), "json": str(out / "validation.json")}
    with (out / "validation.json").open("w") as fh:
        emit_json({**payload, "files": files}, fh)
    return files
