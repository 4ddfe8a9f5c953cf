"""The README's Python API example runs as written, and its train call prints the same
figure as the README's main command with --json (issue 12's must-show)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_python() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert blocks, "README has no Python API example"
    return "\n".join(blocks)


def _main_command() -> list[str]:
    text = (ROOT / "README.md").read_text()
    line = next(ln for ln in text.splitlines() if "xpusim train --model pangu-ultra-moe" in ln)
    return shlex.split(line.split("&& xpusim train", 1)[1])


def test_readme_python_example_runs(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", _readme_python()], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.splitlines()[0].split()[0]
    cli = subprocess.run(
        [sys.executable, "-m", "xpusim.sim.cli.main", "train", *_main_command(), "--json",
         "--quiet"],
        cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    assert float(first) == json.loads(cli.stdout)["tokens_per_s"]
