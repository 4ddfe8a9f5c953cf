"""Parse human sizes on the command line: '1GiB', '512MB', '4k', '1e9'."""

from __future__ import annotations

import re

from xpusim.sim.errors import InputError
from xpusim.sim.limits import MAX_BYTES, check_size

_SUFFIX = {
    "": 1, "b": 1,
    "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "p": 1e15, "pb": 1e15, "pib": 2**50,
}


def parse_size(text: str, what: str = "size") -> float:
    match = re.fullmatch(r"\s*([0-9.eE+-]+)\s*([a-zA-Z]*)\s*", str(text))
    if not match or match.group(2).lower() not in _SUFFIX:
        raise InputError(f"cannot read {what} '{text}': use a number with an optional unit "
                         "(B, KB, MB, GB, KiB, MiB, GiB), e.g. 1GiB")
    try:
        value = float(match.group(1)) * _SUFFIX[match.group(2).lower()]
    except ValueError:
        raise InputError(f"cannot read {what} '{text}'") from None
    # sim.limits: a size is finite, > 0 and at most 1 PiB (1e400 is inf, 1e30 B is
    # no buffer anyone allocates); and whole bytes (0.5 was priced as a buffer and shown
    # as "0 B").
    size = check_size(value, what, MAX_BYTES)
    if size != int(size):
        raise InputError(f"{what} '{text}' is {size:g} bytes: a buffer holds whole bytes")
    return size


def split_list(text: str, what: str) -> list[str]:
    """'a, b,c' -> ['a', 'b', 'c']: the one reader of comma-separated options. An empty
    item ('1,,2', '1,2,', '') is an error naming ``what``, not silently dropped."""
    items = [item.strip() for item in str(text).split(",")]
    if not any(items):
        raise InputError(f"{what}: empty list; give comma-separated values")
    if not all(items):
        raise InputError(
            f"{what} '{text}': an empty item between commas (',,' or a comma at an end); "
            "remove it"
        )
    return items


def parse_int_list(text: str, what: str) -> list[int]:
    """'1,2,4' -> [1, 2, 4]."""
    items = split_list(text, what)
    try:
        return [int(x) for x in items]
    except ValueError:
        raise InputError(f"{what}: expected comma-separated integers, got '{text}'") from None
