"""Errors for user mistakes: the CLI turns them into a message and an exit code, never a traceback."""

from typing import Any

from xpusim.hwprofiles.errors import ProfileError


class InputError(ValueError):
    """Bad user input (impossible plan, negative size, unknown model). Exit code 2."""


class NegativeVerdict(RuntimeError):
    """A verdict the user asked about is negative (e.g. does not fit in memory). Exit code 3."""

    def __init__(self, message: str, payload: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.payload = payload or {}


__all__ = ["InputError", "NegativeVerdict", "ProfileError"]
