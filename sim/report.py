"""Output helpers: JSON with a schema version, aligned text tables, CSV, plot paths."""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from xpusim.sim import SCHEMA_VERSION
from xpusim.sim.errors import InputError

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


def json_document(payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` as every ``--json`` prints it: ``schema_version`` first, non-finite
    numbers as null, tuples as lists (the Python API's ``as_dict()`` returns this too)."""
    doc: dict[str, Any] = _clean({"schema_version": SCHEMA_VERSION, **payload})
    return doc


def emit_json(payload: dict[str, Any], stream: TextIO | None = None) -> None:
    """Print ``payload`` as JSON with ``schema_version`` first (SI units throughout)."""
    json.dump(json_document(payload), stream or sys.stdout, indent=2, sort_keys=False)
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


# What each output flag writes, by suffix: an output path must end in one of these,
# and an existing file is replaced only if it does (so `--csv README.md` is refused).
CSV_SUFFIXES = (".csv",)
JSON_SUFFIXES = (".json",)
TOML_SUFFIXES = (".toml",)
SUFFIXES_BY_FLAG = {
    "--csv": CSV_SUFFIXES,
    "--trace": JSON_SUFFIXES,
    "--measurements": CSV_SUFFIXES,
    "--plot": PLOT_SUFFIXES,
    "--timeline": PLOT_SUFFIXES,
}


def _check_writable_dir(path: Path, flag: str) -> None:
    """The folder ``path`` will be written in exists (or can be made) and takes a file:
    tried with a temporary file, the only check that holds for root, /proc, read-only
    mounts and full disks alike."""
    parent = path.parent if str(path.parent) else Path(".")
    ancestor = parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError(f"{flag} {path}: {ancestor} is not a folder; give a path in a folder")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".xpusim-probe-"):
            pass
    except OSError as exc:
        raise InputError(
            f"{flag} {path}: cannot write in {parent} ({exc.strerror or exc}); "
            "give a path in a folder you can write"
        ) from None


def check_output_file(
    path: str | Path, flag: str, suffixes: tuple[str, ...] | None = None
) -> Path:
    """A file the command will write, checked before any work: not a directory, in a
    writable folder, named with the suffix of what is written, and, if it exists,
    already such a file (an existing README.md is never replaced by a CSV)."""
    if not str(path).strip():
        raise InputError(f"{flag}: empty path; give a file name")
    path = Path(path)
    suffixes = suffixes or SUFFIXES_BY_FLAG.get(flag, ())
    if path.is_dir():
        raise InputError(f"{flag} {path}: is a directory; give a file name inside it")
    if suffixes and path.suffix.lower() not in suffixes:
        shown = path.suffix or "no suffix"
        refuse = " (refusing to replace an existing file of another kind)" if path.exists() else ""
        raise InputError(
            f"{flag} {path}: {shown} is not what it writes{refuse}; end the file name in "
            f"{', '.join(suffixes)}"
        )
    if path.exists() and not path.is_file():
        raise InputError(f"{flag} {path}: not a regular file; give a file name")
    _check_writable_dir(path, flag)
    return path


def make_output_folder(out: str | Path, flag: str, holds: str) -> Path:
    """The folder a command writes ``holds`` in, made before any work: not a file, and
    creatable (a parent that is a file, /proc or no permission fail here, not in a
    traceback after the work)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(
            f"{flag} {out}: is a file; {flag} names a folder for {holds} "
            "(give a new or existing folder)"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a parent is a file, or no permission
        raise InputError(f"{flag} {out}: cannot create the folder ({exc.strerror or exc})") from None
    return out


def check_plot_path(path: str | Path, flag: str = "--plot") -> Path:
    """The plot path, checked like any output (matplotlib picks the format from the
    suffix: .png, .svg or .pdf)."""
    if not str(path).strip():
        raise InputError(f"{flag}: empty path; give a file name such as plot.png")
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{flag} {path}: is a directory; give a file name such as {path}/plot.png")
    if path.suffix.lower() not in PLOT_SUFFIXES:
        shown = path.suffix or "no suffix"
        raise InputError(
            f"{flag} {path}: unknown figure format ({shown}); end the file name in "
            f"{', '.join(PLOT_SUFFIXES)}"
        )
    return check_output_file(path, flag, PLOT_SUFFIXES)


def check_output_args(args: argparse.Namespace) -> None:
    """Check a command's ``--plot`` and ``--csv`` paths (when given) before any work runs."""
    if getattr(args, "plot", None):
        check_plot_path(args.plot)
    if getattr(args, "csv", None):
        check_output_file(args.csv, "--csv")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` (same suffix) to write; renamed over ``path``
    only when the block succeeds, so an interrupted run leaves the old file whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    # mkstemp makes the file private (0600); give it the mode a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def save_figure(fig: Any, path: str | Path, dpi: int = 120) -> Path:
    """``fig.savefig`` through a temporary file (format from the suffix), then rename."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".").lower() or None)
    return path


def write_csv(path: str | Path, rows: Iterable[dict[str, Any]], flag: str = "--csv") -> Path:
    rows = list(rows)
    path = check_output_file(path, flag, CSV_SUFFIXES)
    fields: list[str] = []
    for row in rows:
        for key in row:
            if key not in fields:
                fields.append(key)
    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path
