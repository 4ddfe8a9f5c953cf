"""Predicted vs measured, log-log, one colour per category, with the ±10% / ±25% bands."""

from __future__ import annotations

import math
from pathlib import Path

from xpusim.sim.validation.runner import RowResult


def scatter(results: list[RowResult], path: str | Path, title: str) -> Path:
    import matplotlib  # imported here so the CLI starts fast when no plot is asked for

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    # (row, measured, predicted) of the rows the simulator predicted.
    points = [(r, r.measured, r.predicted) for r in results if r.predicted is not None]
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    for i, category in enumerate(sorted({r.category for r, _, _ in points})):
        rows = [(r.role, m, p) for r, m, p in points if r.category == category]
        check = [(m, p) for role, m, p in rows if role == "check"]
        fit = [(m, p) for role, m, p in rows if role == "fit"]
        colour = f"C{i}"  # the colour cycle, one colour per category
        ax.scatter([m for m, _ in check], [p for _, p in check], s=18, color=colour,
                   label=f"{category} ({len(check)})")
        if fit:
            ax.scatter([m for m, _ in fit], [p for _, p in fit], s=40,
                       facecolors="none", edgecolors=colour, marker="s")
    if points:
        lo = min(min(m, p) for _, m, p in points) / 1.5
        hi = max(max(m, p) for _, m, p in points) * 1.5
        xs = [lo, hi]
        ax.plot(xs, xs, color="black", lw=1, label="predicted = measured")
        for band, style in ((0.10, "--"), (0.25, ":")):
            ax.plot(xs, [x * (1 + band) for x in xs], color="grey", lw=0.8, ls=style,
                    label=f"±{band:.0%}")
            ax.plot(xs, [x * (1 - band) for x in xs], color="grey", lw=0.8, ls=style)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
    ax.set_xscale("log")
    ax.set_yscale("log")
    from matplotlib.ticker import FuncFormatter

    # Plain numbers at 1, 2, 5 x 10^k: a narrow range gets readable labels, not 3x10^1.
    def label(v: float, _pos: int) -> str:
        lead = round(v / 10 ** math.floor(math.log10(v))) if v > 0 else 0
        return f"{v:g}" if lead in (1, 2, 5) else ""

    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(FuncFormatter(label))
        axis.set_minor_formatter(FuncFormatter(label))
    ax.set_xlabel("measured (row's unit: TFLOP/s, GB/s, tokens/s, ms, x)")
    ax.set_ylabel("predicted (same unit)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7, loc="upper left", title="check rows; squares = fit rows",
              title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
