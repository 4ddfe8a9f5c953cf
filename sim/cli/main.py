"""Entry point of the ``xpusim`` console script.

Exit codes: 0 success, 2 bad input (message names the file/field and the fix),
3 a verdict the user asked about is negative (e.g. out of memory).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from sim import __version__
from sim.errors import InputError, NegativeVerdict, ProfileError

# One module per command under sim/cli/, each exposing register(subparsers).
COMMAND_MODULES = (
    "hw",
    "model",
    "op",
    "collective",
    "ep",
    "attention",
    "train",
    "infer",
    "sd",
    "explore",
    "whatif",
    "calibrate",
    "predict",
    "validate",
    "bench",
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2 too; keep its usage line
        self.print_usage(sys.stderr)
        sys.stderr.write(f"xpusim: error: {message}\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="xpusim", description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--version", action="version", version=f"xpusim {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"sim.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"sim.cli.{name}":
                continue  # command not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (InputError, ProfileError) as exc:
        sys.stderr.write(f"xpusim: error: {exc}\n")
        return 2
    except NegativeVerdict as exc:
        sys.stderr.write(f"xpusim: {exc}\n")
        return 3
    except BrokenPipeError:  # output piped into `head` and closed early
        return 0
    except KeyboardInterrupt:
        sys.stderr.write("xpusim: interrupted\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
