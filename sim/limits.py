"""Limits on what a user can ask for, and the validators that enforce them at the boundary.

One set of rules for command-line flags, input files and ``--vary`` values: numbers are
finite; counts are integers (``1e30`` is not a count); sizes are strictly positive; and
everything is within the limits below. docs/limits.md explains each limit. The limits
exist so that no input a user can type makes a command run for more than about a
minute or grow past ~2 GB: each is far above any real study (the largest clusters
built are ~100K devices, the longest contexts ~10M tokens) and each message says what
to do instead.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from xpusim.sim.errors import InputError

# Ranks in one simulated job or collective group: 2^17, above the largest clusters
# built (~100K GPUs). The collective pricing lists a flow per rank and the training
# lowering a graph per stage, so the cost grows with ranks (sim.network.api.MAX_RANKS
# is the same number: the network layer checks it again for Python API users).
MAX_RANKS = 131_072
# Sequence / context length in tokens: 2^24 (16M), above the longest context windows
# of released models (10M). Attention FLOPs grow with its square.
MAX_SEQ = 2**24
# Requests in one batch (a step, an SD batch sweep, a micro-batch): 2^20.
MAX_BATCH = 2**20
# Global batch in sequences: 2^24. The training step lists one micro-batch per
# (gbs / dp / mbs) per stage; with pp stages that is the number of simulated tasks.
MAX_GBS = 2**24
# Simulated layer passes of a training step (micro-batches x layers x forward/backward,
# on one rank per stage): measured ~46 us and ~3.4 KB each (llama-3-8b, 20,000
# micro-batches = 1.28M passes: 59 s, 4.4 GB), so 2^18 is ~12 s and ~1 GB. Pangu
# Ultra MoE's published plan needs 11,712.
MAX_TRAIN_LAYER_PASSES = 2**18
# Requests in a serving run (--requests or trace rows): 10^5 (~20 s at 256 output tokens).
MAX_REQUESTS = 100_000
# Expected output + prompt tokens of a serving run: each step is simulated, so the run's
# time grows with the steps the tokens take. Measured after the serving loop kept its
# batch sums and re-priced steps from a per-batch skeleton (docs/performance.md): 50M
# tokens took 1.8-2.3 s (100,000 x 250/250 on one H200, batch ~3,800; 100,000 x 100/400
# on one A100 under vLLM with 9,459 preemptions; 2,200 x 20,000/2,000 of a 70B on two
# A100s, batch ~2), under 140 MB.
MAX_SERVE_TOKENS = 50_000_000
# Bytes of one buffer (a collective's per-rank buffer, a tensor): 2^50 = 1 PiB, 5,000x
# an H200's memory.
MAX_BYTES = 2**50
# A tensor dimension (GEMM m/n/k, channels, image side, elements): 2^31 - 1, the
# largest a 32-bit index addresses; the ops' FLOPs stay finite in float64.
MAX_DIM = 2**31 - 1
# Transformer layers of a model (config.json num_hidden_layers, MTP layers): 2^16, far
# above any model built (GPT-3 96, Llama-3-405B 126). Models are walked layer by layer:
# `infer` on a 65,536-layer config took 4 s and 350 MB, `model show` on 10^6 layers 3 s,
# and a config with 10^9 layers ran past a minute.
MAX_LAYERS = 2**16
# Elements of an elementwise op: 2^48, the element count of 1 PiB of bf16 / 4.
MAX_ELEMENTS = 2**48
# Work items of the blockwise attention model (sim.attention_model.fast_attention_cost):
# batch x heads x query blocks, each scheduled onto a core longest-first from one sorted
# list (~0.3 us and ~16 B per item measured: 2^24 items ~5 s, ~270 MB). `xpusim attention
# --batch 1048576 --seq 16777216` asked for 2^35 and died in a MemoryError.
MAX_ATTENTION_ITEMS = 2**24
# Zipf exponent S of `zipf:S` expert routing (p_i ~ i^-S): at S = 100 the second expert
# already gets 2^-100 of the first's tokens, so a larger S routes the same way.
MAX_ZIPF_S = 100.0
# Any other integer option (seeds, top-k, ...): 2^31 - 1 (C int).
MAX_INT = 2**31 - 1
# Per-device hardware rates and capacities in profiles and --vary: 1e21 (FLOP/s, B/s
# or bytes), 1000x the largest device built; a rate must be finite and > 0.
MAX_RATE = 1e21

# Integer flags by argparse dest: (lowest, highest). Flags not listed get (None,
# MAX_INT): every integer flag is bounded, new ones included.
INT_FLAGS: dict[str, tuple[int | None, int]] = {
    "nodes": (1, MAX_RANKS),
    "ranks": (1, MAX_RANKS),
    "devices": (1, MAX_RANKS),
    "draft_devices": (1, MAX_RANKS),
    "per_node": (1, MAX_RANKS),  # train --per-node K: 0 was taken as unset
    "tp": (1, MAX_RANKS),
    "pp": (1, MAX_RANKS),
    "vpp": (1, 1024),
    "dp": (1, MAX_RANKS),
    "ep": (1, MAX_RANKS),
    "cp": (1, MAX_RANKS),
    "mbs": (1, MAX_BATCH),
    "gbs": (1, MAX_GBS),
    "seq": (1, MAX_SEQ),
    "kv_len": (1, MAX_SEQ),
    "context": (0, MAX_SEQ),
    "batch": (1, MAX_BATCH),
    "requests": (1, MAX_REQUESTS),
    "tokens_per_device": (1, MAX_SEQ),
    "gamma": (1, 64),
    "heads": (1, 65_536),
    "kv_heads": (1, 65_536),
    "head_dim": (1, 65_536),
    "hidden": (1, MAX_DIM),
    "experts": (1, 65_536),
    "top_k": (1, 65_536),
    "m": (1, MAX_DIM),
    "n": (1, MAX_DIM),
    "k": (1, MAX_DIM),
    "in_ch": (1, MAX_DIM),
    "out_ch": (1, MAX_DIM),
    "height": (1, MAX_DIM),
    "width": (1, MAX_DIM),
    "kernel": (1, 4096),
    "stride": (1, 4096),
    # op elementwise: arrays read and written; 0 of one is a write-only fill or a
    # read-only (reduction-like) kernel, op resolve refuses 0 of both.
    "inputs": (0, 64),
    "outputs": (0, 64),
    "outer_block": (1, MAX_SEQ),
    "jobs": (1, 1024),
    "threads": (1, 4096),
    "shortlist": (1, 1_000_000),
    "top": (1, MAX_INT),  # rows of a printed table (predict, explore): -1 dropped the last
    "seed": (0, MAX_INT),
    # Plan-file fields (sim.plan_file): no-op layer slots (-1: as many as the split needs),
    # at most a model's layer limit; pad_layers = 1e9 built a billion slots and hung.
    "pad_layers": (-1, MAX_LAYERS),
    # Chunks of a TP-overlapped GEMM (overlap_tp): TransformerEngine's userbuffers split
    # into a handful (num_splits 4, or tp for the ring exchange); 1e8 ran for minutes.
    "tp_overlap_chunks": (1, 1024),
}
# Float flags by dest: (lowest, highest, lowest excluded). Unlisted floats: finite.
FLOAT_FLAGS: dict[str, tuple[float | None, float | None, bool]] = {
    "numel": (0.0, float(MAX_ELEMENTS), True),
    "flops_per_element": (0.0, 1e6, False),
    "rate": (0.0, 1e9, True),
    "alpha": (0.0, 1.0, False),
    "dropout": (0.0, 1.0, False),
    "sigma": (0.0, None, False),
    "context": (0.0, float(MAX_SEQ), False),
    "sync_us": (0.0, 1e9, False),
    "slo_ttft": (0.0, None, True),  # serving goodput SLOs, seconds
    "slo_tpot": (0.0, None, True),
    "capacity_factor": (None, 1e6, False),  # sim.network.ep explains <= 0 (dropless)
    "max_median_error": (0.0, None, False),
    "max_p90_error": (0.0, None, False),
}


def flag_name(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _show(what: str, value: Any) -> str:
    """'--nodes 5' for a flag, 'hidden_size = 5' for a file field."""
    shown = f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else repr(value)
    return f"{what} {shown}" if what.startswith("--") else f"{what} = {shown}"


def check_int(
    value: Any, what: str, lo: int | None = 1, hi: int = MAX_INT, unit: str = ""
) -> int:
    """``value`` as an integer count in [lo, hi], or an InputError naming ``what``.

    Accepts an int, or a float / numeric string that is exactly an integer within the
    range (TOML and JSON write ``4096.0`` or ``1e3`` for counts); refuses booleans,
    fractions, non-finite values and magnitudes such as ``1e30``."""
    if isinstance(value, bool):
        raise InputError(f"{_show(what, value)}: expected an integer, not true/false")
    number = _parse_number(value, what) if isinstance(value, str) else value
    if isinstance(number, float):
        if not math.isfinite(number) or number != math.floor(number):
            raise InputError(f"{_show(what, value)}: expected a whole number")
        if abs(number) > 2**53:
            raise InputError(_above(what, value, hi, unit))
        number = int(number)
    if not isinstance(number, int):
        raise InputError(f"{_show(what, value)}: expected an integer, got {type(value).__name__}")
    if lo is not None and number < lo:
        raise InputError(f"{what} must be >= {lo:,}, got {value}")
    if number > hi:
        raise InputError(_above(what, value, hi, unit))
    return number


def _parse_number(text: str, what: str) -> int | float:
    """A numeric string as an int, else a float (``"4_096"``, ``"1e3"``)."""
    cleaned = text.strip().replace("_", "")
    try:
        return int(cleaned)
    except ValueError:
        pass
    try:
        return float(cleaned)
    except ValueError:
        raise InputError(f"{_show(what, text)}: expected an integer") from None


def _above(what: str, value: Any, hi: float, unit: str) -> str:
    limit = f"{hi:,}" if isinstance(hi, int) else f"{hi:g}"
    shown = f"{what} {value}" if what.startswith("--") else f"{what} = {value!r}"
    fix = f"pass fewer {what}" if what in _COUNTED else f"pass a smaller {what}"
    return f"{shown} is above the limit of {limit}{unit} (docs/limits.md says why); {fix}"


_COUNTED = ("--nodes", "--ranks", "--devices", "--draft-devices", "--requests", "--experts")


def check_float(
    value: Any,
    what: str,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
) -> float:
    """``value`` as a finite float within [lo, hi] (``lo`` excluded if ``lo_open``)."""
    if isinstance(value, bool):
        raise InputError(f"{_show(what, value)}: expected a number, not true/false")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"{_show(what, value)}: expected a number") from None
    if not math.isfinite(number):
        raise InputError(f"{_show(what, value)}: must be a finite number")
    if number != 0 and abs(number) < 1e-300:
        # Subnormal: 1/x overflows to inf (a rate of 1e-320 requests/s puts the first
        # arrival at t = inf); no quantity in the simulator is meaningfully this small.
        raise InputError(f"{_show(what, value)}: too small to be meaningful; use 0 or >= 1e-300")
    low = lo is not None and (number < lo or (lo_open and number == lo))
    if (low or (hi is not None and number > hi)) and lo is not None and hi is not None and hi <= 1:
        raise InputError(f"{what} must be in [{lo:g}, {hi:g}], got {value}")
    if low:
        raise InputError(f"{what} must be {'>' if lo_open else '>='} {lo:g}, got {value}")
    if hi is not None and number > hi:
        raise InputError(_above(what, value, hi, ""))
    return number


def check_size(value: Any, what: str, hi: float = MAX_BYTES) -> float:
    """A size (bytes, elements): finite, > 0 and at most ``hi``."""
    return check_float(value, what, 0.0, hi, lo_open=True)


def check_rate(value: Any, what: str) -> float:
    """A hardware rate or capacity (FLOP/s, B/s, bytes): finite, > 0, <= MAX_RATE."""
    return check_float(value, what, 0.0, MAX_RATE, lo_open=True)


def check_namespace(args: argparse.Namespace) -> None:
    """Every numeric option of a parsed command: the same rules for all commands.

    Integers must be within ``INT_FLAGS`` (or MAX_INT), floats finite and within
    ``FLOAT_FLAGS``, strings not empty. Runs before any command does work (sim.cli.main)."""
    for dest, value in vars(args).items():
        if value is None or isinstance(value, bool) or callable(value):
            continue
        what = flag_name(dest)
        if isinstance(value, str) and not value.strip():
            # '' was taken as "not given" (--system '' ran on the default system, --engine ''
            # as no engine) or read as the current folder (--device '').
            raise InputError(f"{what} '{value}': empty value; give one or leave the option out")
        if isinstance(value, int):
            int_lo, int_hi = INT_FLAGS.get(dest, (None, MAX_INT))
            check_int(value, what, int_lo, int_hi)
            if int_lo is None and abs(value) > MAX_INT:
                raise InputError(_above(what, value, MAX_INT, ""))
        elif isinstance(value, float):
            lo, hi, lo_open = FLOAT_FLAGS.get(dest, (None, None, False))
            check_float(value, what, lo, hi, lo_open)


def check_zipf(text: str, what: str) -> float:
    """The S of ``zipf:S`` routing (train --moe-routing, ep/infer/sd --routing): a finite
    number in [0, MAX_ZIPF_S]; ``what`` names the option and its value."""
    try:
        s = float(text)
    except ValueError:
        s = math.nan
    if not (math.isfinite(s) and 0 <= s <= MAX_ZIPF_S):
        raise InputError(
            f"{what}: expected zipf:S with the Zipf exponent S a number in [0, "
            f"{MAX_ZIPF_S:g}], e.g. zipf:1.2"
        )
    return s


def check_ranks(ranks: int, where: str, fix: str) -> None:
    """A job or group of ``ranks`` devices: at most MAX_RANKS, checked before any work."""
    if ranks > MAX_RANKS:
        raise InputError(
            f"{where}: {ranks:,} ranks is above the limit of {MAX_RANKS:,} (2^17, more than "
            f"the largest clusters built; the work grows with every rank): {fix}"
        )


def check_attention_items(items: int) -> None:
    """Blockwise attention work items (batch x heads x query blocks): at most
    MAX_ATTENTION_ITEMS, before the model lists them."""
    if items > MAX_ATTENTION_ITEMS:
        raise InputError(
            f"attention: batch x heads x query blocks = {items:,} work items is above the "
            f"limit of {MAX_ATTENTION_ITEMS:,} (docs/limits.md: the model schedules each one "
            "onto a core); pass a smaller batch, fewer heads or a shorter sequence (the "
            "time grows linearly with batch x heads)"
        )


def check_train_work(
    devices: int,
    pp: int,
    microbatches: int,
    layers: int,
    full_ranks: bool = False,
    exact: bool = True,
    vpp: int = 1,
) -> None:
    """A training step's size from the plan alone (O(1)), before lowering: ranks, then
    simulated layer passes (forward and backward of every layer for every simulated
    micro-batch, on one rank per stage, or on every rank with --full-ranks).

    ``microbatches`` is what the engine will run: every micro-batch with ``exact``,
    else the two steady-state runs of sim.training.steady.simulated_microbatches (the
    cost is linear in what is simulated: llama-3-8b, pp=1, exact: 4,000 micro-batches
    -> 12.5 s / 0.7 GB). ``exact`` and ``vpp`` only shape the message."""
    check_ranks(devices, f"{devices:,} devices", "pass fewer --nodes")
    del vpp  # layer passes do not depend on it: virtual stages split the same layers
    ranks_per_stage = max(devices // max(pp, 1), 1) if full_ranks else 1
    work = 2 * microbatches * layers * ranks_per_stage
    if work > MAX_TRAIN_LAYER_PASSES:
        per = f" x {ranks_per_stage:,} ranks per stage (--full-ranks)" if full_ranks else ""
        raise InputError(
            f"the step simulates {microbatches:,} micro-batches per pipeline x {layers} layers "
            f"x 2 (forward, backward){per} = {work:,} layer passes, above the limit of "
            f"{MAX_TRAIN_LAYER_PASSES:,} (~15 s, ~1 GB): raise --mbs or --dp, lower --gbs"
            + (", or drop --full-ranks" if full_ranks else "")
            + (", or drop --exact/--trace/--timeline" if exact else "")
            + " (step time grows linearly with micro-batches once the pipeline is full)"
        )
