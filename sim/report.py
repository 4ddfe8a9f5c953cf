"""Output helpers: JSON with a schema version, aligned text tables, CSV, plot paths."""

from __future__ import annotations

import csv
import json
import math
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

from sim import SCHEMA_VERSION
from sim.errors import InputError

# Figure formats every command writes (matplotlib's Agg backend renders all three).
PLOT_SUFFIXES = (".png", ".svg", ".pdf")


def _clean(obj: Any) -> Any:
    if isinstance(obj, float) and (math.isinf(obj) or math.isnan(obj)):
        return None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def emit_json(payload: dict[str, Any], stream: TextIO | None = None) -> None:
    """Print ``payload`` as JSON with ``schema_version`` first (SI units throughout)."""
    out = {"schema_version": SCHEMA_VERSION, **payload}
    json.dump(_clean(out), stream or sys.stdout, indent=2, sort_keys=False)
    (stream or sys.stdout).write("\n")


def fmt_si(value: float, unit: str) -> str:
    """1.5e-3, 's' -> '1.50 ms'; 2.4e11, 'B/s' -> '240 GB/s'."""
    if value is None:
        return "-"
    if unit == "s":
        for scale, suffix in ((1, "s"), (1e-3, "ms"), (1e-6, "us"), (1e-9, "ns")):
            if abs(value) >= scale or scale == 1e-9:
                return f"{value / scale:.3g} {suffix}"
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def fmt_bytes(value: float) -> str:
    for scale, suffix in ((1024**4, "TiB"), (1024**3, "GiB"), (1024**2, "MiB"), (1024, "KiB")):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {suffix}"
    return f"{value:.0f} B"


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    cells = [[str(h) for h in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def check_plot_path(path: str | Path, flag: str = "--plot") -> Path:
    """The plot path as a Path, or an InputError naming ``flag`` when matplotlib could not
    write it: an unknown suffix (it picks the format from the suffix) or a directory."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{flag} {path}: is a directory; give a file name such as {path}/plot.png")
    if path.suffix.lower() not in PLOT_SUFFIXES:
        shown = path.suffix or "no suffix"
        raise InputError(
            f"{flag} {path}: unknown figure format ({shown}); end the file name in "
            f"{', '.join(PLOT_SUFFIXES)}"
        )
    return path


def check_output_args(args) -> None:
    """Check a command's ``--plot`` and ``--csv`` paths (when given) before any work runs."""
    if getattr(args, "plot", None):
        check_plot_path(args.plot)
    if getattr(args, "csv", None):
        check_output_file(args.csv, "--csv")


def check_output_file(path: str | Path, flag: str) -> Path:
    """A file the command will write (CSV, JSON, trace): an InputError if it is a directory."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{flag} {path}: is a directory; give a file name inside it")
    return path


def write_csv(path: str | Path, rows: Iterable[dict[str, Any]], flag: str = "--csv") -> Path:
    rows = list(rows)
    path = check_output_file(path, flag)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields: list[str] = []
    for row in rows:
        for key in row:
            if key not in fields:
                fields.append(key)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path
