"""Chrome-trace JSON (opens in Perfetto / chrome://tracing) and a PNG timeline of a SimResult.

One process per simulated rank, one thread per stream (compute, comm, copy);
every task is a complete ("X") event in microseconds. ``render_timeline`` draws
the same records with matplotlib, for places without a browser (docs figures).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from xpusim.sim.engine import Record, SimResult
from xpusim.sim.report import save_figure, write_text_atomic

_STREAM_TID = {"compute": 0, "comm": 1, "copy": 2, "dp_comm": 3}
_COLOURS = {
    "fwd": "#4c72b0",
    "bwd": "#55a868",
    "recompute": "#8172b2",
    "optimizer": "#c44e52",
    "tp": "#dd8452",
    "ep": "#da8bc3",
    "cp": "#937860",
    "dp": "#8c8c8c",
    "pp": "#ccb974",
}


def chrome_trace(
    result: SimResult, ranks: Iterable[int] | None = None, names: dict[int, str] | None = None
) -> dict[str, Any]:
    """The trace as a dict: ``{"traceEvents": [...], "displayTimeUnit": "ms"}``."""
    keep = set(ranks) if ranks is not None else set(result.ranks)
    names = names or {}
    events: list[dict[str, Any]] = []
    for rank in sorted(keep):
        events.append(
            {
                "name": "process_name",
                "ph": "M",
                "pid": rank,
                "args": {"name": names.get(rank, f"rank {rank}")},
            }
        )
        for stream, tid in _STREAM_TID.items():
            events.append(
                {
                    "name": "thread_name",
                    "ph": "M",
                    "pid": rank,
                    "tid": tid,
                    "args": {"name": stream},
                }
            )
    for r in result.records:
        if r.rank not in keep:
            continue
        events.append(
            {
                "name": r.name,
                "cat": r.label or r.kind,
                "ph": "X",
                "ts": r.start * 1e6,
                "dur": (r.end - r.start) * 1e6,
                "pid": r.rank,
                "tid": _STREAM_TID.get(r.stream, 4),
                "args": {"kind": r.kind, "label": r.label},
            }
        )
    return {"traceEvents": events, "displayTimeUnit": "ms"}


def write_chrome_trace(
    result: SimResult,
    path: str | Path,
    ranks: Iterable[int] | None = None,
    names: dict[int, str] | None = None,
) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(chrome_trace(result, ranks, names)))
    return path


def render_timeline(
    result: SimResult,
    path: str | Path,
    ranks: list[int],
    names: dict[int, str] | None = None,
    window: tuple[float, float] | None = None,
    title: str = "",
) -> Path:
    """Draw compute and comm streams of ``ranks`` as horizontal bars (PNG/SVG by suffix)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    names = names or {}
    lo, hi = window or (0.0, result.makespan_s)
    rows: list[tuple[int, str]] = [(r, s) for r in ranks for s in ("compute", "comm", "dp_comm", "copy")]
    index = {row: i for i, row in enumerate(rows)}
    fig, ax = plt.subplots(figsize=(12, 0.22 * len(rows) + 1.2))
    bars: dict[tuple[int, str], list[Record]] = {}
    for rec in result.records:
        key = (rec.rank, rec.stream)
        if key in index and rec.end > lo and rec.start < hi:
            bars.setdefault(key, []).append(rec)
    for key, recs in bars.items():
        by_colour: dict[str, list[tuple[float, float]]] = {}
        for rec in recs:
            colour = _COLOURS.get(rec.label, "#999999")
            by_colour.setdefault(colour, []).append((rec.start * 1e3, (rec.end - rec.start) * 1e3))
        for colour, spans in by_colour.items():
            ax.broken_barh(spans, (index[key] - 0.4, 0.8), facecolors=colour, linewidth=0)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"{names.get(r, f'rank {r}')} {s}" for r, s in rows], fontsize=6)
    ax.invert_yaxis()
    ax.set_xlim(lo * 1e3, hi * 1e3)
    ax.set_xlabel("time (ms)")
    ax.set_title(title, fontsize=9)
    ax.legend(
        handles=[Patch(color=c, label=k) for k, c in _COLOURS.items()],
        ncol=9,
        fontsize=6,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.12 - 1.0 / len(rows)),
    )
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path, dpi=130)  # atomic: temp file, then rename
    plt.close(fig)
    return path
