"""The validation corpus: published measurements, one TOML file per category.

Each row carries the published figure, its unit and source, and the ``xpusim``
command (name + flags) that predicts it. A row whose figure set or fitted any
parameter of the simulator is ``role = "fit"`` and names what it set (``fit_sets``);
every other row is a ``check`` row, and only check rows count as evidence.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from xpusim.sim.errors import InputError

CATEGORIES = (
    "gemm",
    "memory",
    "collective",
    "ep",
    "attention",
    "decode",
    "prefill",
    "serving",
    "sd",
    "training",
)
ROLES = ("fit", "check")
# [P] primary text/table, [P-fig] primary figure read from bar labels, [S] secondary
# notes of a primary table, [U] a user's measurement in a public repository.
RELIABILITY = ("P", "P-fig", "S", "U")
COMMANDS = ("op", "collective", "ep", "attention", "infer", "sd", "train")

_REQUIRED = ("id", "role", "hardware", "software", "source", "reliability", "measured",
             "unit", "metric", "command", "args")


@dataclass(frozen=True)
class Row:
    """One published measurement and the command that predicts it."""

    id: str
    category: str
    role: str
    hardware: str
    software: str
    source: str
    reliability: str
    measured: float
    unit: str
    metric: str
    command: str
    args: dict[str, Any]
    fit_sets: str = ""
    note: str = ""
    unsupported: str = ""  # set when the simulator cannot express the row yet: why
    file: str = field(default="", compare=False)


def corpus_dir() -> Path:
    return Path(str(resources.files("xpusim.sim") / "data" / "validation"))


def load_corpus(directory: Path | None = None) -> list[Row]:
    """Every row of every category file, in file then row order; ids are unique."""
    directory = directory or corpus_dir()
    rows: list[Row] = []
    seen: dict[str, str] = {}
    for path in sorted(directory.glob("*.toml")):
        for row in _load_file(path):
            if row.id in seen:
                raise InputError(f"{path}: row id {row.id!r} already used in {seen[row.id]}")
            seen[row.id] = str(path)
            rows.append(row)
    return rows


def _load_file(path: Path) -> list[Row]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"validation corpus {path}: not valid TOML: {exc}") from None
    category = data.get("category")
    if category not in CATEGORIES:
        raise InputError(f"{path}: category {category!r} is not one of {', '.join(CATEGORIES)}")
    return [_row(path, category, i, raw) for i, raw in enumerate(data.get("row", []))]


def _row(path: Path, category: str, index: int, raw: dict[str, Any]) -> Row:
    where = f"{path} row {index} ({raw.get('id', '?')})"
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise InputError(f"{where}: missing {', '.join(missing)}")
    if raw["role"] not in ROLES:
        raise InputError(f"{where}: role must be fit or check, got {raw['role']!r}")
    if raw["role"] == "fit" and not raw.get("fit_sets"):
        raise InputError(f"{where}: a fit row must name what it set in fit_sets")
    if raw["reliability"] not in RELIABILITY:
        raise InputError(f"{where}: reliability must be one of {', '.join(RELIABILITY)}")
    if raw["command"] not in COMMANDS:
        raise InputError(f"{where}: command must be one of {', '.join(COMMANDS)}")
    measured = raw["measured"]
    if not isinstance(measured, int | float) or not measured > 0:
        raise InputError(f"{where}: measured must be a positive number, got {measured!r}")
    known = set(_REQUIRED) | {"fit_sets", "note", "unsupported"}
    extra = sorted(set(raw) - known)
    if extra:
        raise InputError(f"{where}: unknown keys {', '.join(extra)}")
    return Row(
        id=str(raw["id"]),
        category=category,
        role=raw["role"],
        hardware=str(raw["hardware"]),
        software=str(raw["software"]),
        source=str(raw["source"]),
        reliability=raw["reliability"],
        measured=float(measured),
        unit=str(raw["unit"]),
        metric=str(raw["metric"]),
        command=raw["command"],
        args=dict(raw["args"]),
        fit_sets=str(raw.get("fit_sets", "")),
        note=str(raw.get("note", "")),
        unsupported=str(raw.get("unsupported", "")),
        file=path.name,
    )
