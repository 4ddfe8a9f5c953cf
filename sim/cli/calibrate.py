"""``xpusim calibrate --device cpu [--quick] --out FILE``: time the suites on this machine,
fit the cost model, and write a calibration overlay (plus the measurements CSV).

torch is imported only when timing (via ``calibrate``): the simulator runs without it, and
``--from-measurements`` refits a CSV without it (MoE rows carry their recorded routing).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from xpusim.sim.errors import InputError
from xpusim.sim.report import check_output_file, emit_json, fmt_si, table
from xpusim.sim.units import split_list


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="measure kernels here and fit a calibration overlay")
    p.add_argument(
        "--device",
        default="cpu",
        choices=("cpu", "cuda", "npu"),
        help="local device to time (default cpu)",
    )
    p.add_argument(
        "--profile",
        help="base device profile (default: cpu-host for --device cpu; on --device cuda the "
        "GPU's own, from its product name)",
    )
    p.add_argument("--quick", action="store_true", help="fewer shapes and repetitions (< 3 min)")
    p.add_argument("--out", required=True, help="overlay TOML to write")
    p.add_argument(
        "--measurements", help="CSV of every measured case (default: OUT with '.measurements.csv')"
    )
    p.add_argument(
        "--from-measurements",
        metavar="CSV",
        help="fit a measurements CSV from an earlier run instead of timing",
    )
    p.add_argument(
        "--threads",
        type=int,
        help="torch intra-op threads while timing (default 1: steadiest on a "
        "shared machine; see docs/calibration.md)",
    )
    p.add_argument("--suites", help="comma-separated suites (default: all)")
    p.add_argument(
        "--dtype",
        choices=("fp32", "bf16", "fp16"),
        help="dtype of every case (default fp32 on --device cpu, bf16 on a GPU or NPU: the "
        "precision their matrix peaks are for)",
    )
    p.add_argument("--seed", type=int, default=None, help="seed of the fit/held-out split")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from xpusim.calibrate.overlay import overlay_doc, write_overlay
    from xpusim.calibrate.pipeline import base_profile, fit_measured, load_base, provenance
    from xpusim.calibrate.suites import DEFAULT_SEED

    seed = DEFAULT_SEED if args.seed is None else args.seed
    _refuse_timing_flags(args)
    suites = _suites(args.suites)
    # Both outputs checked before minutes of timing: suffix, folder writable, no file of
    # another kind replaced (sim.report).
    out = check_output_file(args.out, "--out", (".toml",))
    _refuse_other_toml(out)
    csv_path = (
        Path(args.measurements) if args.measurements else out.with_suffix(".measurements.csv")
    )
    if not args.from_measurements:
        check_output_file(csv_path, "--measurements", (".csv",))
    started = time.perf_counter()
    measured, local = _measurements(args, suites, seed, csv_path)
    quick = bool(args.quick)
    base = load_base(base_profile(local.kind, args.profile, local.name), local)
    result = fit_measured(measured, base)
    prov = provenance(local, base.name, quick, seed, measured)
    write_overlay(out, overlay_doc(base, result, prov))
    elapsed = time.perf_counter() - started
    payload = {
        "overlay": str(out),
        "measurements": None if args.from_measurements else str(csv_path),
        "elapsed_s": elapsed,
        "provenance": prov,
        "fit": result.summary(),
    }
    if args.json:
        emit_json(payload)
        return 0
    print(
        f"calibrated {base.name} on {local.name} ({local.threads} threads, "
        f"{len(measured)} cases, {elapsed:.0f} s) -> {out}"
    )
    _print_fit(result, prov)
    return 0


# Options of a timing run: a refit (--from-measurements) read the CSV whole and dropped them.
TIMING_ONLY = ("measurements", "suites", "dtype", "threads")


def _refuse_timing_flags(args: argparse.Namespace) -> None:
    given = ["--" + f for f in TIMING_ONLY if getattr(args, f) is not None]
    if args.from_measurements and given:
        what, it = ("options", "them") if len(given) > 1 else ("an option", "it")
        raise InputError(
            f"{', '.join(given)}: {what} of a timing run; --from-measurements refits every "
            f"row of its CSV as it was measured: drop {it}, or drop --from-measurements"
        )


def _suites(text: str | None) -> list[str] | None:
    from xpusim.calibrate.suites import SUITES

    if not text:
        return None
    suites = split_list(text, "--suites")
    unknown = [s for s in suites if s not in SUITES]
    if unknown:
        raise InputError(f"--suites: unknown {', '.join(unknown)}; choose from {', '.join(SUITES)}")
    return suites


def _measurements(args: argparse.Namespace, suites, seed: int, csv_path: Path):
    """(measured cases, the device they ran on): read back, or timed now and written at once
    (a failure in the fit then loses nothing: refit with --from-measurements)."""
    from xpusim.calibrate.pipeline import read_measurements, recorded_device, write_measurements

    if args.from_measurements:
        measured = read_measurements(args.from_measurements, "--from-measurements")
        return measured, recorded_device(args.from_measurements, args.device)
    measured, local = _measure(args, suites, seed)
    write_measurements(csv_path, measured, local)
    return measured, local


def _print_fit(result, prov: dict) -> None:
    p = result.params
    print(
        f"  fit: median |error| {result.median_abs_error:.1%}, p90 {result.p90_abs_error:.1%} "
        f"over {result.n_cases} fit cases; noise: median rel. IQR "
        f"{prov['noise_median_rel_iqr']:.1%}, {prov['noisy_fraction']:.0%} of cases noisy"
    )
    rows = [
        ["matrix max / half", f"{p.matrix_max:.3g}", fmt_si(p.matrix_half_flops, "FLOP")],
        ["vector max / half", f"{p.vector_max:.3g}", fmt_si(p.vector_half_flops, "FLOP")],
        ["memory max / half", f"{p.memory_max:.3g}", fmt_si(p.memory_half_bytes, "B")],
        ["launch overhead", "", fmt_si(p.launch_overhead_s, "s")],
        ["cache speedup / compute-memory overlap", f"{p.cache_speedup:.3g}", f"{p.overlap:.3g}"],
    ]
    rows += [
        [
            f"kind {k}: speed / overhead",
            f"{p.kind_speed[k]:.3g}",
            fmt_si(p.kind_overhead_s.get(k, 0.0), "s"),
        ]
        for k in sorted(p.kind_speed)
    ]
    print(table(rows, ["parameter", "value", "size"]))
    if result.at_bound:
        print(f"  at a bound (check the data): {', '.join(result.at_bound)}")
    if result.held:
        print(f"  held, not fitted (not identifiable here): {', '.join(result.held)}")
    if result.model_gap > 0.01:
        print(
            f"  warning: the fit's vectorised model differs from the priced one by up to "
            f"{result.model_gap:.1%} on these cases (terms calibrate/fit.py does not restate; "
            "docs/calibration.md, 'model_gap')"
        )


def _refuse_other_toml(out: Path) -> None:
    """A .toml is also a profile, a plan or pyproject.toml: replace an existing one only
    if it is a calibration overlay (``kind = "calibration"``), as written here."""
    if not out.is_file():
        return
    try:
        head = out.read_bytes()[:4096].decode("utf-8", "replace")
    except OSError as exc:
        raise InputError(f"--out {out}: cannot read the existing file ({exc.strerror})") from None
    if 'kind = "calibration"' not in head:
        raise InputError(
            f"--out {out}: exists and is not a calibration overlay; refusing to replace it: "
            "give a new file name (or remove the old overlay)"
        )


def _measure(args: argparse.Namespace, suites, seed: int):
    from tqdm import tqdm
    from xpusim.calibrate.device import detect, require_torch

    require_torch(
        "'xpusim calibrate' (timing kernels; '--from-measurements CSV' refits without torch)"
    )
    from xpusim.calibrate.harness import HarnessConfig
    from xpusim.calibrate.pipeline import base_profile, load_base, measure_cases
    from xpusim.calibrate.suites import cases

    local = detect(args.device, threads=args.threads or 1)
    # The base profile before minutes of timing: an unknown GPU fails now, not after.
    load_base(base_profile(local.kind, args.profile, local.name), local)
    dtype = args.dtype or ("fp32" if local.kind == "cpu" else "bf16")
    todo = cases(suites, quick=args.quick, seed=seed, dtype=dtype, device=local.kind)
    config = HarnessConfig.quick() if args.quick else HarnessConfig()
    with tqdm(total=len(todo), desc="calibrate", unit="case", disable=args.json) as bar:

        def progress(case) -> None:
            bar.set_postfix_str(case.suite, refresh=False)
            bar.update(1)

        measured = measure_cases(todo, local, config, progress)
    return measured, local
