"""Reading a user's TOML input file with errors that name the file and what it is for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from xpusim.sim import inputs


def read_toml(path: str | Path, what: str) -> dict[str, Any]:
    """The parsed file; a missing file or bad TOML is an ``InputError`` naming ``what``
    (e.g. "study file") and the path, with the parser's line and column."""
    # sim.inputs checks size, encoding, nesting and file type (one reader for all inputs).
    return inputs.read_toml(Path(path), what)
