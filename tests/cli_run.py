"""Run the real command in-process, as the CLI audit and robustness tests do."""

from __future__ import annotations

import shlex

from xpusim.sim.cli.main import main

# A saved ``train`` command (``whatif`` / ``train --plan`` input), small enough to run in
# seconds: the CLI contract, audit and robustness tests write it to a file.
SAVED_TRAIN = """command = "train"
[args]
model = "llama-3-8b"
system = "atlas-800t-a2"
nodes = 1
tp = 2
pp = 2
mbs = 1
gbs = 16
seq = 2048
"""


def run_cli(capsys, command: str) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of ``xpusim COMMAND``; never a traceback on stderr."""
    try:
        rc = main(shlex.split(command))
    except SystemExit as exc:  # argparse usage errors
        rc = exc.code
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return rc, captured.out, captured.err
