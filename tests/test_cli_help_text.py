"""Every option of every command says what it does in ``--help`` (a user reads the help,
not the source)."""

from __future__ import annotations

import argparse

from xpusim.sim.cli.main import build_parser


def _options_without_help(parser: argparse.ArgumentParser, prefix: str) -> list[str]:
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                missing += _options_without_help(sub, f"{prefix} {name}".strip())
        elif action.option_strings and action.help is None:
            missing.append(f"{prefix} {action.option_strings[-1]}")
    return missing


def test_every_option_has_help():
    assert _options_without_help(build_parser(), "") == []
