"""The track record: how far this kind of prediction has landed from published measurements.

A prediction is worth what its error is. ``xpusim validate --published`` scores the
simulator against the public record (``sim/data/validation``); this module keeps the
result of its ``check`` rows (the rows no parameter was set on) per category, per device
profile and, where the rows name one, per serving engine, in ``sim/data/track_record.json``,
so that ``train``, ``infer``, ``sd``, ``collective``, ``ep``, ``op`` and ``attention`` can
print beside a number how far numbers of that kind have been off: the median |error|, the
90th percentile and the bias (mean signed error; positive = the simulator was optimistic,
i.e. faster than measured). The table describes the past; nothing corrects a prediction
with it.

The file is derived, never edited: it is rewritten with the golden record whenever a
change moves the validation numbers, and a test (tests/test_validation_published.py)
fails when it no longer matches a fresh ``validate --published`` run. The golden
record's regeneration (``python -m xpusim.sim.validation.golden``) rewrites it too; on its
own::

    python -m xpusim.sim.validation.track_record
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import asdict, dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the study results import this module: keep the runner out of their path
    from xpusim.sim.validation.corpus import Row
    from xpusim.sim.validation.runner import RowResult

# Fewer check rows than this on one device or engine are reported as too few to read;
# the category-wide line is always printed.
MIN_ROWS = 5
# How far a committed figure may sit from a fresh run before the test asks for a rewrite.
TOLERANCE = 0.005


@dataclass(frozen=True)
class ErrorStats:
    """Signed errors of a set of check rows, summarised (fractions: 0.1 = 10%)."""

    n: int
    median_abs_error: float
    p90_abs_error: float
    bias: float


@dataclass(frozen=True)
class TrackRecord:
    """What the record says for one prediction: the whole category, and the rows on the
    same device profile and engine where there are at least ``MIN_ROWS`` of them."""

    category: str
    overall: ErrorStats
    device: str = ""
    on_device: ErrorStats | None = None
    engine: str = ""
    with_engine: ErrorStats | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def record_dict(record: TrackRecord | None) -> dict[str, Any] | None:
    """A result document's ``"track_record"``: the record, or None without one."""
    return record.as_dict() if record else None


def error_stats(errors: list[float]) -> ErrorStats:
    """Median and 90th percentile (nearest rank below, as the validation summary) of
    |error|, and the mean signed error."""
    absolute = sorted(abs(e) for e in errors)
    return ErrorStats(
        n=len(errors),
        median_abs_error=statistics.median(absolute),
        p90_abs_error=absolute[int(0.9 * (len(absolute) - 1))],
        bias=statistics.fmean(errors),
    )


@lru_cache(maxsize=64)  # a bounded memo of profile loads: names -> names
def system_device(system: str) -> str:
    """The name of the device a system profile is built of."""
    from xpusim.hwprofiles.loader import load_system

    return load_system(system).device.name


def row_device(row: Row) -> str:
    """The device a row runs on: its ``device`` argument's profile, else its system's."""
    if "device" in row.args:
        return device_name(str(row.args["device"]))
    return system_device(str(row.args["system"])) if "system" in row.args else ""


@lru_cache(maxsize=64)  # a bounded memo of profile loads: names -> names
def device_name(device: str) -> str:
    from xpusim.hwprofiles.loader import load_device

    return load_device(device).name


def build(rows: list[Row], results: list[RowResult]) -> dict[str, Any]:
    """The table: per category, its check rows' error statistics overall, by device profile
    and by engine."""
    from xpusim.sim.validation.ratios import summarize_pairs, what_if_pairs

    by_id = {r.id: r for r in rows}
    op_kinds: dict[str, str] = {}  # ``xpusim op KIND`` -> the category its rows score in
    errors: dict[str, dict[str, dict[str, list[float]]]] = {}
    for res in results:
        if res.role != "check" or res.error is None or res.unsupported:
            continue
        row = by_id[res.id]
        groups = errors.setdefault(res.category, {"all": {}, "device": {}, "engine": {}})
        groups["all"].setdefault("", []).append(res.error)
        groups["device"].setdefault(row_device(row), []).append(res.error)
        if "engine" in row.args:
            groups["engine"].setdefault(str(row.args["engine"]), []).append(res.error)
        if row.command == "op":
            op_kinds[str(row.args["kind"])] = res.category
    table: dict[str, Any] = {}
    for category, groups in sorted(errors.items()):
        table[category] = {
            "overall": asdict(error_stats(groups["all"][""])),
            "device": {k: asdict(error_stats(v)) for k, v in sorted(groups["device"].items())},
            "engine": {k: asdict(error_stats(v)) for k, v in sorted(groups["engine"].items())},
        }
    what_if = [{k: g[k] for k in ("axis", "category", "first", "second", "pairs",
                                  "median_abs_error", "bias", "same_order")}
               for g in summarize_pairs(what_if_pairs(rows, results))]
    return {"generated_by": "python -m xpusim.sim.validation.track_record",
            "min_rows": MIN_ROWS, "op_kinds": dict(sorted(op_kinds.items())),
            "categories": table, "what_if": what_if}


def table_path() -> Path:
    return Path(str(resources.files("xpusim.sim") / "data" / "track_record.json"))


def write_table(table: dict[str, Any], path: Path | None = None) -> Path:
    """Write ``table`` (``build``) to ``path``, by default the packaged file."""
    out = path or table_path()
    out.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    return out


@lru_cache(maxsize=1)
def _table() -> dict[str, Any]:
    path = table_path()
    if not path.exists():
        return {"categories": {}}
    with path.open() as f:
        data: dict[str, Any] = json.load(f)
    return data


def _stats(entry: dict[str, Any] | None) -> ErrorStats | None:
    if entry is None or entry["n"] < MIN_ROWS:
        return None
    return ErrorStats(**entry)


def lookup(category: str, device: str = "", engine: str = "") -> TrackRecord | None:
    """The record for a prediction of ``category`` on ``device`` with ``engine``; None
    when the corpus has no check row of that category."""
    entry = _table()["categories"].get(category)
    if entry is None:
        return None
    return TrackRecord(
        category=category,
        overall=ErrorStats(**entry["overall"]),
        device=device,
        on_device=_stats(entry["device"].get(device)),
        engine=engine,
        with_engine=_stats(entry["engine"].get(engine)),
    )


def op_category(kind: str) -> str:
    """The category the corpus scores ``xpusim op KIND`` rows in ("" when it has none)."""
    kinds: dict[str, str] = _table().get("op_kinds", {})
    return kinds.get(kind, "")


def what_if_record(axis: str, category: str, a: str, b: str) -> dict[str, Any] | None:
    """The corpus's what-if pairs (``ratios.py``) between settings ``a`` and ``b`` of one
    axis (e.g. two systems) in ``category``, in the order the table keeps them (the ratio
    is the second's speed over the first's); None under ``MIN_ROWS`` pairs."""
    for entry in _table().get("what_if", []):
        if (entry["axis"], entry["category"]) == (axis, category) and \
                {entry["first"], entry["second"]} == {a, b} and entry["pairs"] >= MIN_ROWS:
            return dict(entry)
    return None


def ranking_record(ranked: list[dict[str, Any]], rank_by: str) -> dict[str, Any] | None:
    """How far the published record trusts a ranking by predicted speed (``explore``): the
    corpus's pairs of one training job run under two plans (``ratios.py`` "plan" axis; the
    closest evidence for ranking candidates on one cluster), and the ranks whose predicted
    speed is within that median |ratio error| of the best."""
    entry = what_if_record("plan", "training", "slower plan", "faster plan")
    ok = [r for r in ranked if not r.get("error")]
    if entry is None or not ok:
        return None
    key = "mfu" if rank_by == "mfu" else "tokens_per_s"  # time_to_tokens ranks as 1/speed
    best = ok[0][key]
    within = [r["rank"] for r in ok if r[key] * (1.0 + entry["median_abs_error"]) >= best]
    return {"plan_pairs": entry, "within": within}


def describe_what_if(entry: dict[str, Any]) -> str:
    return (f"{entry['second']} vs {entry['first']} ({entry['category']}): {entry['pairs']} "
            f"published pairs, median |ratio error| {entry['median_abs_error']:.1%}, bias "
            f"{entry['bias']:+.1%} (> 0: the model overstates {entry['second']}'s advantage), "
            f"measured order kept in {entry['same_order']:.0%}")


def _fmt(s: ErrorStats) -> str:
    return (f"{s.n} rows, median |error| {s.median_abs_error:.1%}, p90 {s.p90_abs_error:.1%}, "
            f"bias {s.bias:+.1%}")


def describe(record: TrackRecord | None) -> str:
    """Lines for a command's text output (empty without a record)."""
    if record is None:
        return ""
    lines = [f"track record: how far `xpusim validate --published` was off on published "
             f"{record.category} measurements (check rows; bias > 0: the simulator was "
             "optimistic)",
             f"  all devices: {_fmt(record.overall)}"]
    if record.device:
        lines.append(f"  {record.device}: " + (_fmt(record.on_device) if record.on_device
                                               else f"fewer than {MIN_ROWS} rows"))
    if record.engine:
        lines.append(f"  engine {record.engine}: " + (_fmt(record.with_engine)
                                                      if record.with_engine
                                                      else f"fewer than {MIN_ROWS} rows"))
    return "\n".join(lines)


def _differ(label: str, a: dict[str, Any] | None, b: dict[str, Any] | None, count: str,
            stats: tuple[str, ...]) -> list[str]:
    """How one entry moved: another count, or a statistic by more than ``TOLERANCE``."""
    if a is None or b is None or a[count] != b[count]:
        return [f"{label}: {count} {a and a[count]} committed, {b and b[count]} now"]
    return [f"{label} {k}: {a[k]:.4f} committed, {b[k]:.4f} now"
            for k in stats if abs(a[k] - b[k]) > TOLERANCE]


def _entries(table: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every entry of a table by a label: category stats, then what-if pairs."""
    out: dict[str, dict[str, Any]] = {}
    for category, entry in table.get("categories", {}).items():
        out[category] = entry["overall"]
        for group in ("device", "engine"):
            for key, stats in entry[group].items():
                out[f"{category} {group} {key}"] = stats
    for g in table.get("what_if", []):
        out["what-if " + ":".join((g["axis"], g["category"], g["first"], g["second"]))] = g
    return out


def mismatches(committed: dict[str, Any], fresh: dict[str, Any]) -> list[str]:
    """Where the committed table and a fresh one differ: another row or pair count
    anywhere, or a statistic by more than ``TOLERANCE``."""
    old, new = _entries(committed), _entries(fresh)
    problems: list[str] = []
    for label in sorted(set(old) | set(new)):
        what_if = label.startswith("what-if ")
        problems += _differ(label, old.get(label), new.get(label),
                            "pairs" if what_if else "n",
                            ("median_abs_error", "bias", "same_order") if what_if
                            else ("median_abs_error", "p90_abs_error", "bias"))
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m xpusim.sim.validation.track_record",
        description="Rewrite the track-record table from a fresh validate --published run.")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write (default: the packaged sim/data/track_record.json)")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    from xpusim.sim.validation.corpus import load_corpus
    from xpusim.sim.validation.runner import run_rows

    rows = load_corpus()
    table = build(rows, run_rows(rows, jobs=args.jobs))
    out = write_table(table, args.out)
    print(f"wrote {out} ({sum(c['overall']['n'] for c in table['categories'].values())} "
          "check rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
