"""The one reader of every user input file: config.json, profile TOML, plan, study,
what-if, calibration overlay, measurements CSV, serving trace, routing counts.

Every failure is an error naming the file, what it was read as, and what to do, so
the CLI exits 2 with a message instead of a traceback:

- not there, a directory, unreadable (permissions), or not a regular file (a FIFO or
  ``/dev/zero`` would block or never end);
- larger than the size cap (the biggest real input, a measurements CSV, is ~100 KB);
- not UTF-8 text (a binary file passed by mistake);
- JSON/TOML nested deeper than ``MAX_DEPTH`` (the parsers recurse; real configs are
  3-4 levels deep).

This module uses only the standard library so that ``hwprofiles`` (below ``sim`` in
the layering) can read profiles through it with its own error class.
"""

from __future__ import annotations

import io
import json
import os
import stat
import tomllib
from pathlib import Path
from typing import Any

from xpusim.sim.errors import InputError

# 16 MiB: a HF config.json is ~2 KB, a profile ~5 KB, a full calibration run's
# measurements CSV ~100 KB, a 100,000-request serving trace ~2.5 MB. Bigger is
# almost surely the wrong file (a checkpoint shard, a log).
MAX_INPUT_BYTES = 16 * 2**20
# Nesting of JSON/TOML values: real files are 3-4 deep. The parsers (and the code
# that walks their results) recurse, so thousands of levels are a crash, not data.
MAX_DEPTH = 64


def _fail(error: type[Exception], path: Path, what: str, problem: str) -> Exception:
    return error(f"{what} {path}: {problem}")


def read_bytes(
    path: str | Path,
    what: str,
    *,
    error: type[Exception] = InputError,
    max_bytes: int = MAX_INPUT_BYTES,
) -> bytes:
    """The file's bytes, or ``error`` naming ``what`` (e.g. "plan file") and the path."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise _fail(error, path, what, "file not found; check the path") from None
    except OSError as exc:
        raise _fail(error, path, what, f"cannot read it ({exc.strerror or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        raise _fail(error, path, what, "is a directory; pass the file inside it") from None
    if not stat.S_ISREG(st.st_mode):
        raise _fail(
            error, path, what, "is not a regular file (a device, pipe or socket); pass a file"
        )
    if st.st_size > max_bytes:
        raise _fail(
            error,
            path,
            what,
            f"{st.st_size:,} bytes is above the {max_bytes:,}-byte limit for input files "
            "(docs/limits.md); is it the right file?",
        )
    try:
        with open(path, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except PermissionError:
        raise _fail(
            error, path, what, "permission denied; make it readable (chmod +r) or copy it"
        ) from None
    except OSError as exc:
        raise _fail(error, path, what, f"cannot read it ({exc.strerror or exc})") from None
    if len(data) > max_bytes:  # grew while we read it
        raise _fail(error, path, what, f"above the {max_bytes:,}-byte limit for input files")
    return data


def read_text(
    path: str | Path,
    what: str,
    *,
    error: type[Exception] = InputError,
    max_bytes: int = MAX_INPUT_BYTES,
) -> str:
    """The file as UTF-8 text (a leading BOM dropped), refusing binary files."""
    data = read_bytes(path, what, error=error, max_bytes=max_bytes)
    if b"\x00" in data:
        raise _fail(
            error, Path(path), what, "is a binary file (it holds NUL bytes); pass a text file"
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _fail(
            error,
            Path(path),
            what,
            f"is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "save it as UTF-8 or pass the right file",
        ) from None


def depth(value: Any) -> int:
    """Nesting depth of parsed JSON/TOML (1 for a scalar), iteratively (no recursion)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if level > MAX_DEPTH:
            break
        if isinstance(item, dict):
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list | tuple):
            stack.extend((v, level + 1) for v in item)
    return deepest


def _check_depth(value: Any, path: Path, what: str, error: type[Exception]) -> Any:
    if depth(value) > MAX_DEPTH:
        raise _fail(
            error, path, what, f"nested deeper than {MAX_DEPTH} levels; is it the right file?"
        )
    return value


def read_json(path: str | Path, what: str, *, error: type[Exception] = InputError) -> Any:
    """The parsed JSON document (size, encoding and depth checked)."""
    path = Path(path)
    text = read_text(path, what, error=error)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _fail(
            error, path, what, f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None
    except RecursionError:
        raise _fail(error, path, what, f"nested deeper than {MAX_DEPTH} levels") from None
    return _check_depth(data, path, what, error)


# Parsed TOML documents by their text, the last TOML_PARSED_KEPT kept. A process reads
# the same few files again and again (``xpusim validate --published``: the device,
# system, engine and host profiles of every row and of its baseline, ~6,000 reads of
# ~30 files at ~1 ms of parsing each; docs/performance.md). Keyed on the whole text, so
# an edited file is parsed afresh; every caller gets its own copy (``_fresh``), so a
# caller that changes its document changes no other's.
TOML_PARSED_KEPT = 64
_TOML_PARSED: dict[str, dict[str, Any]] = {}


def _fresh(value: Any) -> Any:
    """A copy of parsed TOML: new dicts and lists, the (immutable) scalars shared."""
    if type(value) is dict:
        return {k: _fresh(v) for k, v in value.items()}
    if type(value) is list:
        return [_fresh(v) for v in value]
    return value


def read_toml(
    path: str | Path, what: str, *, error: type[Exception] = InputError
) -> dict[str, Any]:
    """The parsed TOML document (size, encoding and depth checked)."""
    path = Path(path)
    text = read_text(path, what, error=error)
    parsed = _TOML_PARSED.get(text)
    if parsed is not None:
        fresh: dict[str, Any] = _fresh(parsed)
        return fresh
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _fail(error, path, what, f"not valid TOML: {exc}") from None
    except RecursionError:
        raise _fail(error, path, what, f"nested deeper than {MAX_DEPTH} levels") from None
    _check_depth(data, path, what, error)
    if len(_TOML_PARSED) >= TOML_PARSED_KEPT:
        del _TOML_PARSED[next(iter(_TOML_PARSED))]
    _TOML_PARSED[text] = _fresh(data)
    return data


def open_text(path: str | Path, what: str, *, error: type[Exception] = InputError) -> io.StringIO:
    """The checked text as a file object, for ``csv.reader`` and friends."""
    return io.StringIO(read_text(path, what, error=error), newline="")
