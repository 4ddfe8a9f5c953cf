"""What every study of the Python API shares: building a request, and a result's JSON.

A *request* is a frozen dataclass whose fields are named like the command's flags
(``--moe-routing`` -> ``moe_routing``) and whose defaults are the command's defaults: the
CLI, the Python API and saved commands (``whatif``) all build the same request, so a
default lives in one place. ``None`` means "the command derives it" (e.g. ``nodes``: as
many as the plan's devices need) and the study function resolves it.

A *result* is a frozen dataclass with typed headline fields plus ``as_dict()``, exactly
the document the command prints with ``--json``. A negative verdict (the plan does not
fit in memory, the KV cache does not hold the batch) is never a result: the study raises
``NegativeVerdict`` (``xpusim.sim.errors``), whose ``payload`` is the JSON the command
prints before exiting with status 3.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import fields
from typing import Any, TypeVar

from xpusim.sim.errors import InputError
from xpusim.sim.report import json_document

R = TypeVar("R")


def field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


def request_from_kwargs(cls: type[R], request: R | None, kwargs: dict[str, Any], where: str) -> R:
    """The request a study function was called with: a ready request or keyword arguments
    named like the command's flags (not both)."""
    if request is not None:
        if kwargs:
            raise InputError(
                f"{where}: pass either a {cls.__name__} or keyword arguments, not both "
                f"(got {', '.join(sorted(kwargs))} beside the request)"
            )
        if not isinstance(request, cls):
            raise InputError(
                f"{where}: expected a {cls.__name__}, got {type(request).__name__}"
            )
        return request
    return request_from_mapping(cls, kwargs, where)


def request_from_mapping(cls: type[R], values: Mapping[str, Any], where: str) -> R:
    """A request from a mapping (keyword arguments, a saved command's ``[args]`` table);
    dashes in keys read as underscores, like the flags. Unknown keys are refused by name."""
    known = field_names(cls)
    normalised = {str(k).replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(k for k in normalised if k not in known)
    if unknown:
        raise InputError(
            f"{where}: unknown option{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(repr(u) for u in unknown)}; known: {', '.join(known)}"
        )
    return cls(**normalised)


def request_from_args(cls: type[R], args: argparse.Namespace) -> R:
    """A request from parsed flags: every flag the user gave; the rest keep the request's
    defaults (the parser's own defaults are ``None`` for that reason)."""
    given = {
        name: getattr(args, name)
        for name in field_names(cls)
        if getattr(args, name, None) is not None
    }
    return cls(**given)


def as_json_dict(payload: dict[str, Any]) -> dict[str, Any]:
    """What the command prints with ``--json`` for ``payload``."""
    return json_document(payload)
