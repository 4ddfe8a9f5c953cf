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
import functools
import keyword
import types
import typing
from collections.abc import Mapping
from dataclasses import fields
from typing import Any, TypeVar

from xpusim.hwprofiles import load_device
from xpusim.hwprofiles.spec import Device
from xpusim.sim.errors import InputError
from xpusim.sim.ir import is_low_precision
from xpusim.sim.limits import check_namespace
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
    normalised = {field_name(k): v for k, v in values.items()}
    unknown = sorted(k for k in normalised if k not in known)
    if unknown:
        raise InputError(
            f"{where}: unknown option{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(repr(u) for u in unknown)}; known: {', '.join(known)}"
        )
    return cls(**normalised)


def field_name(key: object) -> str:
    """A flag or key as a request field: dashes read as underscores, and a Python keyword
    takes a trailing underscore as its field must (``pass`` -> ``pass_``)."""
    name = str(key).replace("-", "_")
    return name + "_" if keyword.iskeyword(name) else name


def request_from_flags(cls: type[R], values: Mapping[str, Any], where: str) -> R:
    """A request from a table of the command's flags, as a saved command's ``[args]`` or a
    validation row's ``[row.args]`` writes them, read the way the command line reads them:

    - keys are flag names, dashes or underscores (``tokens-per-device``);
    - ``no-X = true`` is ``--no-X`` (``X = False``); ``X = false`` on an on/off field sets
      it off, and on any other field leaves the flag out, as does ``X = nothing``;
    - a value takes the field's type as the flag's parser would give it: a list becomes
      the comma list a text field expects (``batch = [1, 8]`` -> ``"1,8"``) or a tuple, a
      number for a text field its text (``alpha = 0.8`` -> ``"0.8"``), an integer for a
      float field a float, a text for a numeric field its number;
    - the flags' limits (``xpusim.sim.limits.check_namespace``) hold as on the command line.

    Unknown keys are refused by name; every message starts with ``where``."""
    request_class: type = cls
    hints = _type_hints(request_class)
    given: dict[str, Any] = {}
    for key, value in values.items():
        name = field_name(key)
        negated = name.removeprefix("no_")
        if name not in hints and negated != name and bool in _accepted(hints.get(negated)):
            if value is True:
                given[negated] = False
            continue  # `no-X = false`: the flag is not given
        if value is None or (value is False and bool not in _accepted(hints.get(name))):
            continue
        given[name] = _flag_value(value, hints.get(name), f"{where}.{key}")
    request = request_from_mapping(cls, given, where)
    try:
        check_namespace(argparse.Namespace(**given))
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None
    return request


@functools.lru_cache(maxsize=64)
def _type_hints(cls: type) -> Mapping[str, Any]:
    """``typing.get_type_hints(cls)``, read-only and kept per request class: resolving a
    request's ~30 string annotations costs 0.2-0.4 ms, and ``validate --published`` reads a
    request from flags for every row and its baseline (a class's annotations are fixed)."""
    return types.MappingProxyType(typing.get_type_hints(cls))


def _accepted(hint: Any) -> set[type]:
    """The plain types a field's annotation accepts (``str | tuple[int, ...] | None`` ->
    str, tuple, NoneType); empty for an unknown field."""
    if hint is None:
        return set()
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return {t for arg in typing.get_args(hint) for t in _accepted(arg)}
    origin = typing.get_origin(hint)
    if isinstance(origin, type):
        return {origin}
    return {hint} if isinstance(hint, type) else set()


def _flag_value(value: Any, hint: Any, where: str) -> Any:
    """``value`` as the command line would hand it to the field annotated ``hint``."""
    kinds = _accepted(hint)
    if kinds and isinstance(value, bool) and bool not in kinds:
        # `devices = true` read as 1 (bool is an int); `X = false` never gets here
        raise InputError(f"{where} = true: expected {_kind_words(kinds)}, not true/false "
                         "(true/false are for on/off flags)")
    if not kinds or isinstance(value, bool):
        return value  # an unknown key (refused by name later), or an on/off value
    if isinstance(value, list | tuple | dict) and not kinds & {str, tuple, list, dict}:
        # `devices = [1]` reached the plan as a list: "TypeError: '<' not supported"
        shown = "a table" if isinstance(value, dict) else "a list"
        raise InputError(f"{where} = {value!r}: expected {_kind_words(kinds)}, not {shown}")
    if isinstance(value, list | tuple):
        if str in kinds:
            return ",".join(str(v) for v in value)
        return tuple(value) if tuple in kinds else value
    if isinstance(value, int | float) and not any(isinstance(value, k) for k in kinds):
        if float in kinds:
            return float(value)
        if str in kinds:
            return str(value)
    if isinstance(value, str) and str not in kinds:
        return _number_from_text(value, kinds, where)
    return value


def _kind_words(kinds: set[type]) -> str:
    """What a field takes, in words: "an integer", "a number" or "a text"."""
    if int in kinds:
        return "an integer"
    return "a number" if float in kinds else "a text"


def _number_from_text(value: str, kinds: set[type], where: str) -> Any:
    # A numeric field given a text, as argparse's type=int / type=float reads it.
    for kind in (int, float):
        if kind in kinds:
            try:
                return kind(value)
            except ValueError:
                what = "an integer" if kind is int else "a number"
                raise InputError(f"{where} = {value!r}: expected {what}") from None
    return value


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


def resolve_device(device: str | Device, calibration: str | None) -> Device:
    """A ``device`` field as a Device: a name or profile path is loaded (with the
    ``calibration`` overlay, if any); a Device is used as it is."""
    if isinstance(device, Device):
        if calibration is not None:
            raise InputError(
                "calibration applies to a device given by name; pass the device's name "
                "with it, or a Device already calibrated"
            )
        return device
    return load_device(device, calibration=calibration)


# The two 16-bit float formats: a device whose matrix unit publishes one only (V100:
# Volta's tensor cores run fp16, no bf16; Ascend 910A and 310P: fp16 Cube, no bf16) has no
# kernel for the other at any rate this profile could give (``Device.peak_for`` would price
# it at its sibling's rate, an optimistic fiction), and the stacks refuse it: vLLM's
# ``_check_if_gpu_supports_dtype`` raises "Bfloat16 is only supported on GPUs with compute
# capability of at least 8.0 ... use float16 instead" (vllm-project/vllm
# vllm/worker/worker.py @ 6ae52299e0b5dc74b480709e4a08d93c8cb13916).
FLOAT16 = ("bf16", "fp16")


def float16_default(device: Device) -> str:
    """The default 16-bit format on ``device``: bf16, or fp16 where its matrix unit has no
    bf16 path (V100, Ascend 910A / 310P), as every stack then runs."""
    if "bf16" not in device.matrix_peak and "fp16" in device.matrix_peak:
        return "fp16"
    return "bf16"


def require_native_dtype(device: Device, dtype: str, flag: str, where: str = "") -> None:
    """A format the device's matrix unit does not run is refused, not priced at another
    format's rate (``Device.peak_for``'s fallback): FP8 GEMMs on a 910B or an A100, bf16 on a
    V100 (``FLOAT16``). ``where`` names the device in the message (default its name)."""
    if is_low_precision(dtype) and not device.runs_natively(dtype):
        native = sorted(d for d in device.matrix_peak if is_low_precision(d))
        raise InputError(
            f"{flag} {dtype}: {where or device.name} has no {dtype} matrix path (its "
            f"low-precision formats: {', '.join(native) or 'none'}); pass --dtype "
            f"{float16_default(device)} or a device that runs it"
        )
    require_float16(device, dtype, flag, where)


def require_float16(device: Device, dtype: str, flag: str, where: str = "") -> None:
    """bf16 on a device whose matrix unit runs fp16 only (V100, 910A, 310P) is refused
    (``FLOAT16``); ``infer`` checks this alone, keeping its weight-only fallback for FP8 / FP4
    weights (docs/cost_model.md, "dtype fallback")."""
    if dtype in FLOAT16 and dtype not in device.matrix_peak:
        other = FLOAT16[1 - FLOAT16.index(dtype)]
        if other in device.matrix_peak:
            raise InputError(
                f"{flag} {dtype}: {where or device.name} has no {dtype} matrix path (its "
                f"profile's [matrix] formats: {', '.join(sorted(device.matrix_peak))}), so no "
                f"{dtype} kernel to price; pass --dtype {other}"
            )
