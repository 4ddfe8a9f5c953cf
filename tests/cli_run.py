"""Run the real command in-process, as the CLI audit and robustness tests do."""

from __future__ import annotations

import shlex

from xpusim.sim.cli.main import main


def run_cli(capsys, command: str) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of ``xpusim COMMAND``; never a traceback on stderr."""
    try:
        rc = main(shlex.split(command))
    except SystemExit as exc:  # argparse usage errors
        rc = exc.code
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return rc, captured.out, captured.err
