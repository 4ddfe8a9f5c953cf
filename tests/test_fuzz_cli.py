"""Fuzz the CLI at its boundary: generated arguments and files over every command.

Each case runs ``xpusim.sim.cli.main.main(argv)`` in-process (a few run as real processes)
in a temporary working folder holding hostile files (binary, non-UTF-8, deeply nested,
a directory, a FIFO, an oversized file) and "victim" files of other kinds where an
output is asked for. Every case must:

- exit 0, 2, 3 or 130 (argparse's own errors are SystemExit(2));
- raise nothing else and print no traceback;
- finish within ``CASE_LIMIT_S`` (a hang is a failure, not a stuck suite);
- touch no file except the output paths the case declared (and out/, the commands'
  documented default output folder).

The cases are seeded (``FUZZ_SEED``), so a failure names its argv and replays.
Issue 13's concrete inputs are kept as regression tests at the bottom.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from xpusim.sim.cli.main import main

ROOT = Path(__file__).resolve().parent.parent
FUZZ_SEED = int(os.environ.get("FUZZ_SEED", "13"))
FUZZ_CASES = int(os.environ.get("FUZZ_CASES", "1200"))
CASE_LIMIT_S = 30  # far above any case's time; a guard against hangs only
OK_CODES = {0, 2, 3, 130}

# --------------------------------------------------------------------------- values

INT_BAD = ["0", "-1", "1e30", "1e400", "nan", "inf", "99999999999999999999", "2147483648",
           "abc", "", "1.5", "10000000", "-2147483649", "0x10", "1_000"]
INT_GOOD = ["1", "2", "8"]
FLOAT_BAD = ["nan", "inf", "-inf", "1e400", "-1", "0", "1e30", "abc", "", "1e-320"]
FLOAT_GOOD = ["0.5", "1", "2.5"]
SIZE_BAD = ["1e400", "1e30", "0", "-5", "abc", "1e-30", "2PiB", "1ZB", "nan", "inf"]
SIZE_GOOD = ["1KiB", "1MiB", "4096"]
STR_BAD = ["", "nope", "../../etc/passwd", "a" * 300, "-", "--", "uniform:-1:5", "zipf:nan",
           "1,2,...,1e40", "exp:1e400", "hist:missing.txt"]
# Files created in the working folder by make_files(); "missing" is never created.
IN_FILES = ["bin.dat", "latin1.toml", "deep.json", "deep.toml", "adir", "missing.toml",
            "empty.toml", "big.toml", "fifo", "text.txt", "nul.json", "inf.toml"]
# Output paths: good ones per kind, and hostile ones (victims must stay untouched).
OUT_BAD = ["victim.md", "victim.toml", "/proc/x.csv", "/proc/x.png", "adir", "x.xyz",
           "victim.json", "/nonexistent-root/x.csv", ""]
OUT_GOOD = {
    "csv": ["o/out.csv", "out2.csv"],
    "plot": ["o/plot.png", "plot.svg"],
    "json": ["o/trace.json"],
    "toml": ["o/overlay.toml"],
}
VICTIMS = ["victim.md", "victim.toml", "victim.json"]


def _int(rng): return rng.choice(INT_BAD if rng.random() < 0.7 else INT_GOOD)  # noqa: E704
def _float(rng): return rng.choice(FLOAT_BAD if rng.random() < 0.7 else FLOAT_GOOD)  # noqa: E704
def _size(rng): return rng.choice(SIZE_BAD if rng.random() < 0.7 else SIZE_GOOD)  # noqa: E704
def _str(rng): return rng.choice(STR_BAD)  # noqa: E704
def _infile(rng): return rng.choice(IN_FILES)  # noqa: E704


def _out(kind):
    def pick(rng):
        return rng.choice(OUT_BAD if rng.random() < 0.6 else OUT_GOOD[kind])

    return pick


def _seqlist(rng):
    return rng.choice(["1024", "0", "-5", "1e3", "10000000000", "1,2,...,4", "8,4,...,2",
                       "1024,2048,...,99999999999", "abc", "", "1,,2", "16777217"])


def _shape(rng):
    return rng.choice(["batch=1,heads=2,seq=256,head_dim=64", "heads=8,seq=100000000,head_dim=64",
                       "heads=8,seq=1e400,head_dim=64", "heads=nan", "seq", "=,=",
                       "heads=8,seq=256,head_dim=64,block=0", "heads=2,seq=99999999999999,head_dim=8"])


# (base argv, {flag: value generator}); positional values are given as "@0", "@1".
COMMANDS = [
    (["op", "gemm", "--m", "64", "--n", "64", "--k", "64"],
     {"--m": _int, "--n": _int, "--k": _int, "--batch": _int, "--device": _infile,
      "--dtype": _str, "--calibration": _infile}),
    (["op", "elementwise", "--numel", "1e6"],
     {"--numel": _float, "--flops-per-element": _float, "--inputs": _int}),
    (["op", "attention", "--seq", "128"],
     {"--seq": _int, "--heads": _int, "--kv-heads": _int, "--head-dim": _int, "--kv-len": _int}),
    (["op", "conv2d", "--in-ch", "3", "--out-ch", "8", "--height", "8", "--width", "8"],
     {"--in-ch": _int, "--out-ch": _int, "--kernel": _int, "--stride": _int, "--height": _int}),
    (["collective", "all-reduce"],
     {"--bytes": _size, "--ranks": _int, "--nodes": _int, "--system": _infile,
      "--csv": _out("csv"), "--plot": _out("plot")}),
    (["ep", "--model", "pangu-ultra-moe", "--tokens-per-device", "128"],
     {"--ep": _int, "--tokens-per-device": _int, "--nodes": _int, "--hidden": _int,
      "--top-k": _int, "--experts": _int, "--routing": _str, "--capacity-factor": _float,
      "--csv": _out("csv"), "--model": _infile}),
    (["attention", "--seq", "1024"],
     {"--seq": _seqlist, "--batch": _int, "--heads": _int, "--head-dim": _int,
      "--sync-us": _float, "--tp": _int, "--csv": _out("csv"), "--plot": _out("plot"),
      "--device": _infile, "--outer-block": _int}),
    (["train", "--model", "llama-3-8b", "--system", "atlas-800t-a2", "--nodes", "1", "--tp", "8",
      "--gbs", "8", "--seq", "128", "--quiet"],
     {"--nodes": _int, "--tp": _int, "--pp": _int, "--gbs": _int, "--mbs": _int, "--seq": _int,
      "--vpp": _int, "--zero": _int, "--plan": _infile, "--model": _infile,
      "--system": _infile, "--trace": _out("json"), "--timeline": _out("plot")}),
    (["infer", "--model", "llama-3-8b", "--system", "hgx-a800", "--devices", "1"],
     {"--batch": _int, "--context": _int, "--devices": _int, "--tp": _int, "--ep": _int,
      "--nodes": _int, "--model": _infile, "--engine": _infile, "--routing": _infile}),
    (["infer", "--model", "llama-3-8b", "--system", "hgx-a800", "--devices", "1", "--serve",
      "--requests", "5"],
     {"--requests": _int, "--rate": _float, "--prompt-len": _str, "--output-len": _str,
      "--trace": _infile, "--draft": _infile, "--gamma": _int, "--alpha": _float}),
    (["sd", "--target", "qwen3-8b", "--draft", "qwen2-0.5b", "--system", "hgx-a800",
      "--devices", "1", "--batch", "1,2"],
     {"--batch": _str, "--gamma": _int, "--alpha": _str, "--context": _float,
      "--draft-devices": _int, "--draft": _infile, "--csv": _out("csv"), "--plot": _out("plot")}),
    (["predict", "kernel", "fastattention", "--shape", "batch=1,heads=2,seq=256,head_dim=64"],
     {"--shape": _shape, "--device": _infile, "--calibration": _infile, "--top": _int}),
    (["hw", "show", "@0"], {"@0": _infile}),
    (["hw", "diff", "@0", "h100-sxm5-80gb"], {"@0": _infile}),
    (["model", "show", "@0"], {"@0": _infile, "--seq": _int}),
    (["whatif", "@0", "--vary", "device.hbm_bandwidth=2x"],
     {"@0": _infile, "--vary": _str, "--csv": _out("csv"), "--plot": _out("plot")}),
    (["explore", "@0", "--no-plots"], {"@0": _infile, "--top": _int, "--jobs": _int}),
    (["calibrate", "--from-measurements", "@0", "--out", "o/overlay.toml", "--quick"],
     {"@0": _infile, "--out": _out("toml")}),
]


def make_files(where: Path) -> None:
    """The hostile inputs, plus victims that must survive every case."""
    rng = random.Random(0)
    (where / "bin.dat").write_bytes(bytes(rng.randrange(256) for _ in range(4096)))
    (where / "latin1.toml").write_bytes("name = 'caf\xe9'\n".encode("latin-1"))
    (where / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (where / "deep.toml").write_text("a = " + "[" * 5000 + "]" * 5000 + "\n")
    (where / "adir").mkdir()
    (where / "empty.toml").write_text("")
    with (where / "big.toml").open("w") as fh:  # above sim.inputs.MAX_INPUT_BYTES
        fh.write("# " + "x" * (17 * 2**20) + "\n")
    os.mkfifo(where / "fifo")
    (where / "text.txt").write_text("just some words, 1 2 3\n")
    (where / "nul.json").write_bytes(b'{"a": 1}\x00\x00')
    device = (ROOT / "hwprofiles" / "devices" / "h100-sxm5-80gb.toml").read_text()
    (where / "inf.toml").write_text(device.replace("bandwidth_gbps = 3350", "bandwidth_gbps = inf"))
    for name in VICTIMS:
        (where / name).write_text(f"victim {name}: must never change\n")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(where: Path) -> dict[str, tuple[int, float]]:
    out = {}
    for dirpath, _dirs, files in os.walk(where):
        for f in files:
            p = Path(dirpath) / f
            try:
                st = p.lstat()
            except FileNotFoundError:
                continue
            out[str(p.relative_to(where))] = (st.st_size, st.st_mtime_ns)
    return out


def generate(rng: random.Random) -> tuple[list[str], list[str]]:
    """(argv, declared output paths) of one case."""
    base, flags = rng.choice(COMMANDS)
    argv = list(base)
    names = list(flags)
    chosen = rng.sample(names, k=min(len(names), rng.choice((1, 1, 2, 3))))
    outputs = []
    for name in chosen:
        value = flags[name](rng)
        if name.startswith("@"):
            argv[argv.index(name)] = value
            continue
        if name in ("--csv", "--plot", "--trace", "--timeline", "--out") and value:
            outputs.append(value)
        if name in argv:
            argv[argv.index(name) + 1] = value
        else:
            argv += [name, value]
    # Unfilled positionals get a valid value.
    defaults = {"hw": "h100-sxm5-80gb", "model": "llama-3-8b", "whatif": "saved.toml",
                "explore": "study.toml", "calibrate": "measurements.csv"}
    argv = [defaults[argv[0]] if a.startswith("@") else a for a in argv]
    for i, a in enumerate(argv):
        if a == "--out" and i + 1 < len(argv):
            outputs.append(argv[i + 1])
    return argv, outputs


class _Hang(Exception):
    pass


def _alarm(signum, frame):  # noqa: ARG001
    raise _Hang()


def run_case(argv: list[str]) -> tuple[int, str, float]:
    out, err = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(CASE_LIMIT_S)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main(argv)
            except SystemExit as exc:
                rc = exc.code if isinstance(exc.code, int) else 2
    except _Hang:
        pytest.fail(f"hang (> {CASE_LIMIT_S} s): xpusim {' '.join(argv)}")
    finally:
        signal.alarm(0)
    return rc, err.getvalue(), time.perf_counter() - start


@pytest.fixture()
def fuzz_dir(tmp_path, monkeypatch):
    make_files(tmp_path)
    shutil.copy(ROOT / "examples" / "llama_decode_whatif.toml", tmp_path / "saved.toml")
    shutil.copy(ROOT / "examples" / "small_study.toml", tmp_path / "study.toml")
    shutil.copy(ROOT / "calibrate" / "data" / "cpu-host" / "measurements.csv",
                tmp_path / "measurements.csv")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    return tmp_path


def _allowed(rel: str, outputs: list[str]) -> bool:
    if rel.startswith(("out/", "o/")):  # the commands' default output folder; ours
        return True
    for o in outputs:
        o = o.strip()
        if not o:
            continue
        if rel == os.path.normpath(o) or rel.startswith(os.path.normpath(o) + "/"):
            return True
        if rel == str(Path(o).with_suffix(".measurements.csv")):  # calibrate's default
            return True
    return False


def test_fuzz_every_command(fuzz_dir):
    rng = random.Random(FUZZ_SEED)
    victims = {name: _digest(fuzz_dir / name) for name in VICTIMS}
    codes: dict[int, int] = {}
    started = time.perf_counter()
    slowest = (0.0, "")
    for _ in range(FUZZ_CASES):
        argv, outputs = generate(rng)
        before = snapshot(fuzz_dir)
        rc, err, took = run_case(argv)
        shown = "xpusim " + " ".join(repr(a) if not a or " " in a else a for a in argv)
        assert rc in OK_CODES, f"{shown}: exit {rc}\n{err}"
        assert "Traceback" not in err, f"{shown}: traceback\n{err}"
        if rc == 2:
            assert err.strip(), f"{shown}: exit 2 without a message"
        for name, digest in victims.items():
            assert _digest(fuzz_dir / name) == digest, f"{shown}: changed {name}"
        after = snapshot(fuzz_dir)
        touched = [p for p, meta in after.items() if before.get(p) != meta]
        stray = [p for p in touched if not _allowed(p, outputs)]
        assert not stray, f"{shown}: wrote {stray} (declared {outputs})"
        codes[rc] = codes.get(rc, 0) + 1
        slowest = max(slowest, (took, shown))
    elapsed = time.perf_counter() - started
    print(f"\nfuzz: {FUZZ_CASES} cases in {elapsed:.1f} s, exit codes {codes}, "
          f"slowest {slowest[0]:.2f} s: {slowest[1]}")
    # Every exit path is exercised: successes, input errors, negative verdicts.
    assert codes.get(0) and codes.get(2)


SUBPROCESS_CASES = [
    ["train", "--model", "llama-3-8b", "--system", "atlas-800t-a2", "--nodes", "10000000",
     "--tp", "8"],
    ["attention", "--device", "ascend-910b2", "--seq", "1024", "--csv", "victim.md"],
    ["model", "show", "bin.dat"],
    ["hw", "show", "fifo"],
    ["op", "elementwise", "--numel", "1e400"],
]


@pytest.mark.parametrize("argv", SUBPROCESS_CASES, ids=lambda a: " ".join(a)[:60])
def test_fuzz_real_process(fuzz_dir, argv):
    """As a user runs it: a real process, exit 2, a message, no traceback, quickly."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "xpusim.sim.cli.main", *argv],
        capture_output=True, text=True, timeout=60, cwd=fuzz_dir,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    took = time.perf_counter() - start
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.strip()
    assert took < 30
    assert (fuzz_dir / "victim.md").read_text().startswith("victim")


# --------------------------------------------------------------------------- issue 13

ISSUE_13 = [
    # tracebacks
    (["model", "show", "bin.dat"], 2, "binary file"),
    (["model", "show", "latin1.toml"], 2, "not UTF-8"),
    (["model", "show", "deep.json"], 2, "nested deeper"),
    (["hw", "show", "bin.dat"], 2, "profile"),
    (["train", "--plan", "bin.dat"], 2, "plan file"),
    (["train", "--plan", "adir"], 2, "directory"),
    (["explore", "adir"], 2, "directory"),
    (["explore", "bin.dat"], 2, "study file"),
    (["whatif", "adir", "--vary", "device.hbm_bandwidth=2x"], 2, "directory"),
    (["whatif", "bin.dat", "--vary", "device.hbm_bandwidth=2x"], 2, "saved command"),
    (["op", "gemm", "--m", "8", "--n", "8", "--k", "8", "--calibration", "bin.dat"], 2, "bin.dat"),
    (["calibrate", "--from-measurements", "bin.dat", "--out", "o.toml"], 2, "bin.dat"),
    (["infer", "--model", "llama-3-8b", "--system", "hgx-a800", "--devices", "1", "--serve",
      "--trace", "bin.dat"], 2, "--trace"),
    (["attention", "--seq", "1024", "--plot", "/proc/x.png"], 2, "cannot write"),
    (["attention", "--seq", "1024", "--csv", "/proc/x.csv"], 2, "cannot write"),
    (["train", "--model", "llama-3-8b", "--system", "atlas-800t-a2", "--nodes", "1", "--tp", "8",
      "--timeline", "/proc/t.png"], 2, "cannot write"),
    (["calibrate", "--from-measurements", "measurements.csv", "--out", "/proc/o.toml"], 2,
     "cannot write"),
    (["whatif", "hidden_pow.toml"], 2, "args.nodes"),
    # hangs
    (["train", "--model", "llama-3-8b", "--system", "atlas-800t-a2", "--nodes", "10000000",
      "--tp", "8"], 2, "limit"),
    (["train", "--model", "llama-3-8b", "--system", "atlas-800t-a2", "--nodes", "2147483648",
      "--tp", "8"], 2, "limit"),
    (["train", "--model", "llama-3-8b", "--system", "atlas-800t-a2", "--nodes", "1", "--tp", "8",
      "--gbs", "1000000000000"], 2, "limit"),
    (["infer", "--model", "llama-3-8b", "--system", "hgx-a800", "--devices", "1", "--serve",
      "--requests", "100000000"], 2, "limit"),
    (["attention", "--seq", "10000000000"], 2, "limit"),
    (["predict", "kernel", "fastattention", "--shape", "heads=8,seq=100000000,head_dim=64"], 2,
     "limit"),
    (["explore", "pow_study.toml"], 2, "1e+100"),
    (["explore", "strmul_study.toml"], 2, "numbers"),
    # nonsense accepted with exit 0
    (["collective", "all-reduce", "--bytes", "1e400"], 2, "finite"),
    (["collective", "all-reduce", "--bytes", "1e30"], 2, "limit"),
    (["collective", "all-reduce", "--bytes", "0"], 2, "> 0"),
    (["op", "gemm", "--m", "99999999999999999999", "--n", "8", "--k", "8"], 2, "limit"),
    (["op", "elementwise", "--numel", "1e400"], 2, "finite"),
    (["op", "gemm", "--m", "0", "--n", "8", "--k", "8"], 2, ">= 1"),
    (["op", "gemm", "--m", "8", "--n", "8", "--k", "8", "--batch", "0"], 2, ">= 1"),
    (["op", "conv2d", "--in-ch", "0", "--out-ch", "8", "--height", "8", "--width", "8"], 2,
     ">= 1"),
    (["model", "show", "huge_hidden.json"], 2, "hidden_size"),
    (["op", "gemm", "--m", "8", "--n", "8", "--k", "8", "--device", "inf.toml"], 2, "finite"),
    (["whatif", "saved.toml", "--vary", "device.hbm_bandwidth=1e400x"], 2, "finite"),
    (["sd", "--target", "qwen2-0.5b", "--draft", "qwen3-235b-a22b", "--system", "hgx-a800",
      "--devices", "1"], 3, "does not fit"),
    # silent overwrites
    (["attention", "--device", "ascend-910b2", "--seq", "1024", "--csv", "victim.md"], 2,
     "refusing"),
    (["sd", "--target", "qwen3-8b", "--draft", "qwen2-0.5b", "--system", "hgx-a800",
      "--devices", "1", "--csv", "victim.toml"], 2, "refusing"),
    (["calibrate", "--from-measurements", "measurements.csv", "--out", "victim.md"], 2,
     "refusing"),
    (["train", "--model", "llama-3-8b", "--system", "atlas-800t-a2", "--nodes", "1", "--tp", "8",
      "--trace", "victim.md"], 2, "refusing"),
    # found by the fuzz test: a .toml that is not an overlay (pyproject.toml), a subnormal rate
    (["calibrate", "--from-measurements", "measurements.csv", "--out", "victim.toml"], 2,
     "not a calibration overlay"),
    (["infer", "--model", "llama-3-8b", "--system", "hgx-a800", "--devices", "1", "--serve",
      "--requests", "5", "--rate", "1e-320"], 2, "too small"),
    (["infer", "--model", "llama-3-8b", "--system", "hgx-a800", "--devices", "1", "--serve",
      "--requests", "5", "--rate", "1e-299"], 2, "--rate"),
]


@pytest.mark.parametrize(("argv", "code", "words"), ISSUE_13, ids=lambda v: str(v)[:70])
def test_issue_13_inputs(fuzz_dir, argv, code, words):
    study = (fuzz_dir / "study.toml").read_text()
    for name, constraint in (("pow_study.toml", "hidden ** 999999999 > 0"),
                             ("strmul_study.toml", "'a' * 4000000000 * hidden != 0")):
        (fuzz_dir / name).write_text(
            study.replace('constraints = [', f'constraints = ["{constraint}", ', 1)
        )
    (fuzz_dir / "hidden_pow.toml").write_text(
        'command = "train"\n[args]\nmodel = "llama-3-8b"\nnodes = "many"\n'
        '[whatif]\nvary = ["device.hbm_bandwidth=2x"]\n'
    )
    (fuzz_dir / "huge_hidden.json").write_text(
        '{"model_type": "llama", "hidden_size": 1e30, "num_hidden_layers": 2,'
        ' "num_attention_heads": 8, "vocab_size": 100, "intermediate_size": 64}'
    )
    before = {name: _digest(fuzz_dir / name) for name in VICTIMS}
    rc, err, took = run_case(argv)
    assert rc == code, err
    assert "Traceback" not in err
    assert words in err, err
    assert took < 5, f"{took:.1f} s"
    assert before == {name: _digest(fuzz_dir / name) for name in VICTIMS}
