"""Entry point of the ``xpusim`` console script.

Exit codes: 0 success, 2 bad input (message names the file/field and the fix),
3 a verdict the user asked about is negative (e.g. out of memory).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn

from xpusim.sim import __version__
from xpusim.sim.errors import InputError, NegativeVerdict, ProfileError
from xpusim.sim.limits import check_namespace
from xpusim.sim.report import emit_json

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
    "compare",
    "calibrate",
    "predict",
    "validate",
    "bench",
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse exits 2 too; keep its usage line
        self.print_usage(sys.stderr)
        sys.stderr.write(f"xpusim: error: {message}\n")
        raise SystemExit(2)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser with every command, or just ``only`` (start-up stays fast: a command's
    module pulls in what it needs, e.g. matplotlib or scipy, only when it runs)."""
    parser = _Parser(prog="xpusim", description="Performance simulator for large models "
                     "on Ascend NPUs and NVIDIA GPUs.")
    parser.add_argument("--version", action="version", version=f"xpusim {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMAND_MODULES if only is None else (only,):
        try:
            module = importlib.import_module(f"xpusim.sim.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"xpusim.sim.cli.{name}":
                continue  # command not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    command = args_in[0] if args_in and args_in[0] in COMMAND_MODULES else None
    parser = build_parser(command)
    args = parser.parse_args(args_in)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        # One set of rules for every numeric option (finite, in range), before any work.
        check_namespace(args)
        return int(args.func(args) or 0)
    except (InputError, ProfileError) as exc:
        sys.stderr.write(f"xpusim: error: {exc}\n")
        return 2
    except NegativeVerdict as exc:
        # The verdict's document (e.g. the memory breakdown) is the command's JSON output.
        if getattr(args, "json", False) and exc.payload:
            emit_json(exc.payload)
        sys.stderr.write(f"xpusim: {exc}\n")
        return 3
    except BrokenPipeError:  # output piped into `head` and closed early
        return 0
    except KeyboardInterrupt:
        sys.stderr.write("xpusim: interrupted\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
