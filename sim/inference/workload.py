"""The requests a serving run serves: Poisson arrivals with sampled lengths, or a trace.

``Workload`` says how requests are generated (``--requests``/``--rate``/``--prompt-len``/
``--output-len``/``--seed``, or ``--trace``, a CSV of arrival_s, prompt_tokens,
output_tokens); ``make_requests`` draws them, checking the run's size against the
serving limits (docs/limits.md) before any is simulated. With speculative decoding
each request draws its own acceptance rate around the mean.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass

import numpy as np
from xpusim.sim.errors import InputError
from xpusim.sim.inputs import open_text
from xpusim.sim.limits import MAX_REQUESTS, MAX_SEQ, MAX_SERVE_TOKENS, check_float, check_int

MIN_RATE = 1e-6  # requests/s (docs/limits.md)


@dataclass(slots=True)
class Request:
    id: int
    arrival_s: float
    prompt: int
    output: int
    alpha: float = 0.0  # per-request acceptance rate (speculative decoding)
    generated: int = 0
    first_token_s: float | None = None
    finish_s: float | None = None
    preemptions: int = 0
    prefill_left: int = 0  # prompt (+ recomputed) tokens still to prefill (mixed policy)

    @property
    def context(self) -> int:
        return self.prompt + self.generated


@dataclass(frozen=True)
class LengthDist:
    """A token-length distribution: "const:N" / "N", "uniform:A:B", "exp:MEAN" (geometric-like)."""

    kind: str
    a: float
    b: float = 0.0

    @staticmethod
    def parse(text: str, what: str) -> LengthDist:
        parts = str(text).split(":")
        try:
            if len(parts) == 1:
                parts = ["const", parts[0]]
            kind, args = parts[0], [float(x) for x in parts[1:]]
        except ValueError:
            raise InputError(
                f"{what}: cannot read '{text}'; use N, const:N, uniform:A:B or exp:MEAN"
            ) from None
        for x in args:  # sim.limits: a finite token count within the sequence limit; every
            # form below needs lengths >= 1 (the bound said >= 0, then 0 was refused)
            check_float(x, f"{what} '{text}': length", 1.0, float(MAX_SEQ))
        if kind == "const" and len(args) == 1 and args[0] >= 1:
            return LengthDist("const", args[0])
        if kind == "uniform" and len(args) == 2 and 1 <= args[0] <= args[1]:
            return LengthDist("uniform", args[0], args[1])
        if kind == "exp" and len(args) == 1 and args[0] >= 1:
            return LengthDist("exp", args[0])
        raise InputError(
            f"{what}: cannot read '{text}'; use N or const:N (N >= 1 tokens), uniform:A:B "
            "(1 <= A <= B) or exp:MEAN (MEAN >= 1)"
        )

    @property
    def mean(self) -> float:
        return (self.a + self.b) / 2 if self.kind == "uniform" else self.a

    def sample(self, rng: np.random.Generator) -> int:
        if self.kind == "const":
            return max(1, round(self.a))
        if self.kind == "uniform":
            return int(rng.integers(round(self.a), round(self.b) + 1))
        return max(1, round(rng.exponential(self.a)))


@dataclass(frozen=True)
class Workload:
    """How requests are generated: Poisson arrivals at ``rate`` per second, or a trace."""

    num_requests: int = 200
    rate: float = 1.0
    prompt: LengthDist = LengthDist("const", 512)
    output: LengthDist = LengthDist("const", 128)
    seed: int = 0
    trace: str | None = None  # CSV with arrival_s, prompt_tokens, output_tokens
    alpha: float = 0.0  # mean acceptance (speculative decoding)
    alpha_concentration: float = 20.0  # Beta(alpha*c, (1-alpha)*c) per request


def make_requests(w: Workload) -> list[Request]:
    rng = np.random.default_rng(w.seed)
    if w.trace:
        rows = read_trace(w.trace)
        check_serve_tokens(sum(p + o for _, p, o in rows), f"--trace {w.trace}")
    else:
        if w.rate <= 0:
            raise InputError(f"--rate must be > 0 requests/s, got {w.rate}")
        if w.rate < MIN_RATE:
            # Below this the arrivals span years of simulated time: a typo, not a load.
            raise InputError(
                f"--rate {w.rate:g}: below {MIN_RATE:g} requests/s (one request a ~12 days); "
                "pass a larger --rate"
            )
        if w.num_requests < 1:
            raise InputError(f"--requests must be >= 1, got {w.num_requests}")
        check_int(w.num_requests, "--requests", 1, MAX_REQUESTS)
        check_serve_tokens(
            w.num_requests * (w.prompt.mean + w.output.mean),
            f"--requests {w.num_requests} x (prompt {w.prompt.mean:g} + output "
            f"{w.output.mean:g} tokens on average)",
        )
        gaps = rng.exponential(1.0 / w.rate, w.num_requests)
        arrivals = np.cumsum(gaps) - gaps[0]
        if w.prompt.kind == "const" and w.output.kind == "const":
            # Constant lengths draw nothing from ``rng`` (``LengthDist.sample``): the same
            # rows without two calls per request (runs of up to 78,000 requests).
            p, o = w.prompt.sample(rng), w.output.sample(rng)
            rows = [(t, p, o) for t in arrivals.tolist()]
        else:
            rows = [(float(t), w.prompt.sample(rng), w.output.sample(rng)) for t in arrivals]
    if w.alpha <= 0:  # no acceptance draws
        return [Request(i, t, p, o, 0.0) for i, (t, p, o) in enumerate(rows)]
    out = []
    for i, (t, p, o) in enumerate(rows):
        if w.alpha >= 1:
            alpha = 1.0
        else:
            c = w.alpha_concentration
            alpha = float(rng.beta(w.alpha * c, (1 - w.alpha) * c))
        out.append(Request(i, t, p, o, alpha))
    return out


def check_serve_tokens(tokens: float, where: str) -> None:
    """The run's work from its inputs, before any request is simulated: every token is
    scheduled by the serving loop, so the time grows with the total."""
    if tokens > MAX_SERVE_TOKENS:
        raise InputError(
            f"{where}: {tokens:,.0f} tokens to serve, above the limit of "
            f"{MAX_SERVE_TOKENS:,} (docs/limits.md): pass fewer --requests or shorter "
            "--prompt-len/--output-len (throughput and latency settle after a few "
            "thousand requests)"
        )


def read_trace(path: str) -> list[tuple[float, int, int]]:
    """(arrival_s, prompt_tokens, output_tokens) rows, sorted; a file the csv module
    cannot split is an InputError like any other bad trace."""
    try:
        return _read_trace(path)
    except csv.Error as exc:
        raise InputError(f"--trace {path}: not a CSV trace ({exc})") from None


def _read_trace(path: str) -> list[tuple[float, int, int]]:
    rows = []
    with open_text(path, "--trace") as fh:  # sim.inputs: size, UTF-8, file type checked
        reader = csv.DictReader(fh)
        need = {"arrival_s", "prompt_tokens", "output_tokens"}
        if not reader.fieldnames or not need <= set(reader.fieldnames):
            raise InputError(f"--trace {path}: needs CSV columns {', '.join(sorted(need))}")
        for n, row in enumerate(reader, start=2):
            if n - 1 > MAX_REQUESTS:
                raise InputError(
                    f"--trace {path}: more than {MAX_REQUESTS:,} requests (the serving-run "
                    "limit, docs/limits.md); split the trace"
                )
            where = f"--trace {path}: line {reader.line_num}:"  # blank lines are skipped
            if any(row[k] is None for k in need):  # csv fills a short row's fields with None
                given = len(need) - sum(row[k] is None for k in need)
                raise InputError(f"{where} the row holds {given} of the 3 columns arrival_s, "
                                 "prompt_tokens, output_tokens; give all three")
            # sim.limits: finite numbers, whole token counts within the sequence limit.
            rows.append(
                (
                    check_float(row["arrival_s"], f"{where} arrival_s", 0.0, 1e9),
                    check_int(row["prompt_tokens"], f"{where} prompt_tokens", 1, MAX_SEQ),
                    check_int(row["output_tokens"], f"{where} output_tokens", 1, MAX_SEQ),
                )
            )
    if not rows:
        raise InputError(f"--trace {path}: no requests")
    return sorted(rows)
