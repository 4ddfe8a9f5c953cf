"""A resumable cache of evaluated study points, keyed by a hash of their inputs.

Each point's result is one JSON file ``<out>/cache/<key>.json``. The key hashes
everything the result depends on — the candidate's hyperparameters, the fixed
quantities, the plan space and search settings, the full hardware description
(``repr`` of the frozen ``System``, so a calibrated or what-if profile gets its
own entries), the simulator version and a fingerprint of the simulator's source
files — so a rerun of an interrupted study re-evaluates only what is missing, and
any change of input or of the models misses the cache.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from xpusim.sim import __version__

_SOURCE_ROOTS = ("sim", "hwprofiles")


def code_fingerprint() -> str:
    """SHA-256 over the Python sources and profiles of the simulator (sorted paths)."""
    root = Path(__file__).resolve().parents[2]
    digest = hashlib.sha256()
    for top in _SOURCE_ROOTS:
        for path in sorted((root / top).rglob("*")):
            if path.suffix in (".py", ".toml", ".json") and path.is_file():
                digest.update(str(path.relative_to(root)).encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()


def point_key(payload: dict[str, Any], fingerprint: str = "") -> str:
    """SHA-256 of the canonical JSON of ``payload``, the version and the code fingerprint."""
    text = json.dumps(
        {"version": __version__, "code": fingerprint, **payload}, sort_keys=True, default=str
    )
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class PointCache:
    """Directory of ``<key>.json`` results; writes are atomic (temp file + rename)."""

    def __init__(self, directory: str | Path | None) -> None:
        self.directory = Path(directory) if directory else None
        if self.directory:
            self.directory.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path | None:
        return self.directory / f"{key}.json" if self.directory else None

    def get(self, key: str) -> dict[str, Any] | None:
        path = self._path(key)
        if path is None or not path.exists():
            return None
        try:
            doc: dict[str, Any] = json.loads(path.read_text())
            return doc
        except (json.JSONDecodeError, OSError):
            return None  # a torn write from a killed run: evaluate again

    def put(self, key: str, row: dict[str, Any]) -> None:
        path = self._path(key)
        if path is None:
            return
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(row, sort_keys=True))
        tmp.replace(path)
