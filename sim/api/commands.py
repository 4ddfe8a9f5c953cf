"""Which request type and study function answer an ``xpusim`` command, by name.

Code that holds a command as data — a validation row (``command = "train"`` with an
``[row.args]`` table of flags), a saved command for ``whatif`` — reads the flags into
the command's request (``request_from_flags``) and calls the study function, without
going through the command line (nothing under ``sim/`` outside ``sim/cli/`` imports the
CLI). Modules load on first use, so looking up ``op`` does not import the serving stack.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from xpusim.sim.api.base import request_from_flags
from xpusim.sim.errors import InputError


@dataclass(frozen=True)
class ApiCommand:
    """Where a command's request class and study function live (``xpusim.sim.api.<module>``)."""

    module: str
    request: str  # the request class's name
    function: str  # the study function's name


COMMANDS: dict[str, ApiCommand] = {
    "train": ApiCommand("train", "TrainRequest", "train"),
    "infer": ApiCommand("infer", "InferRequest", "infer"),
    "serve": ApiCommand("serve", "ServeRequest", "serve"),
    "sd": ApiCommand("sd", "SdRequest", "sd"),
    "ep": ApiCommand("ep", "EpRequest", "ep"),
    "collective": ApiCommand("collective", "CollectiveRequest", "collective"),
    "attention": ApiCommand("attention", "AttentionRequest", "attention"),
    "op": ApiCommand("op", "OpRequest", "op"),
    "explore": ApiCommand("explore", "ExploreRequest", "explore"),
    "whatif": ApiCommand("whatif", "WhatIfRequest", "whatif"),
    "validate": ApiCommand("validate", "ValidateRequest", "validate"),
}


def api_command(name: str) -> tuple[type, Callable[..., Any]]:
    """(request class, study function) of command ``name``; ``InputError`` for a name
    that is not a command."""
    entry = COMMANDS.get(name)
    if entry is None:
        raise InputError(f"unknown command {name!r}; commands: {', '.join(COMMANDS)}")
    module = importlib.import_module(f"xpusim.sim.api.{entry.module}")
    return getattr(module, entry.request), getattr(module, entry.function)


def command_for_request(request: Any) -> str:
    """The command whose request ``request`` is (``TrainRequest`` -> "train")."""
    for name, entry in COMMANDS.items():
        cls = type(request)
        if cls.__name__ == entry.request and cls.__module__ == f"xpusim.sim.api.{entry.module}":
            return name
    raise InputError(f"{type(request).__name__} is not the request of an xpusim command")


def command_name(command: str, args: Mapping[str, Any]) -> str:
    """The study a command line runs: ``infer --serve`` is the ``serve`` study."""
    return "serve" if command == "infer" and args.get("serve") is True else command


def run_flags(command: str, args: Mapping[str, Any], where: str) -> Any:
    """Run ``xpusim <command>`` given as a table of its flags: the study's result.

    ``InputError`` for bad flags (``where`` starts the message), ``NegativeVerdict``
    when the answer is negative, as the study function raises them."""
    name = command_name(command, args)
    cls, function = api_command(name)
    flags = {k: v for k, v in args.items() if not (name == "serve" and k == "serve")}
    return function(request_from_flags(cls, flags, where))
