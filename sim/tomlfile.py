"""Reading a user's TOML input file with errors that name the file and what it is for."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from sim.errors import InputError


def read_toml(path: str | Path, what: str) -> dict[str, Any]:
    """The parsed file; a missing file or bad TOML is an ``InputError`` naming ``what``
    (e.g. "study file") and the path, with the parser's line and column."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{what} {path} not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{what} {path}: not valid TOML: {exc}") from None
