"""Plots of a study and of a what-if sweep (matplotlib, Agg backend, PNG files)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
from xpusim.sim.report import save_figure

METRIC_LABELS = {
    "tokens_per_s": "throughput (tokens/s)",
    "mfu": "MFU",
    "time_to_tokens": "throughput (tokens/s)",
}


def _ok(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("tokens_per_s") and not r.get("error")]


def throughput_vs_total(rows: list[dict[str, Any]], path: Path) -> Path:
    """Simulated tokens/s against total parameters; analytical bounds of all points in grey."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter(
        [r["total_params"] / 1e9 for r in rows],
        [r["analytical_tokens_per_s"] for r in rows],
        s=6,
        c="0.8",
        label="analytical bound (all candidates)",
    )
    sim = _ok(rows)
    colors = ["tab:blue" if r["attention"] == "mla" else "tab:orange" for r in sim]
    ax.scatter(
        [r["total_params"] / 1e9 for r in sim],
        [r["tokens_per_s"] for r in sim],
        s=24,
        c=colors,
        edgecolors="k",
        linewidths=0.4,
        label="simulated (blue MLA, orange GQA)",
    )
    ax.set_xlabel("total parameters (B)")
    ax.set_ylabel("training throughput (tokens/s, log scale)")
    ax.set_title("Simulated throughput of each candidate vs its size")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points no other point beats on both coordinates (both maximised)."""
    order = sorted(range(len(points)), key=lambda i: (-points[i][0], -points[i][1]))
    front, best_y = [], -math.inf
    for i in order:
        if points[i][1] > best_y:
            front.append(i)
            best_y = points[i][1]
    return sorted(front, key=lambda i: points[i][0])


def pareto_throughput_activated(rows: list[dict[str, Any]], path: Path) -> Path:
    """Throughput vs activated parameters; the front maximises both (capacity per token and speed)."""
    sim = _ok(rows)
    pts = [(r["activated_params"] / 1e9, r["tokens_per_s"] / 1e6) for r in sim]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=20, c="tab:gray", label="simulated")
    front = pareto_front(pts)
    ax.plot(
        [pts[i][0] for i in front],
        [pts[i][1] for i in front],
        "o-",
        c="tab:red",
        label="Pareto front",
    )
    for i in front:
        ax.annotate(sim[i]["name"], pts[i], fontsize=5, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("activated parameters per token (B)")
    ax.set_ylabel("training throughput (million tokens/s)")
    ax.set_title("Pareto front: throughput vs activated parameters")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def heatmap(rows: list[dict[str, Any]], x: str, y: str, metric: str, path: Path) -> Path:
    """Best simulated ``metric`` per (x, y) cell; cells with only analytical points show the
    analytical figure hatched."""
    xs = sorted({r[x] for r in rows}, key=str)
    ys = sorted({r[y] for r in rows}, key=str)
    key = "mfu" if metric == "mfu" else "tokens_per_s"
    grid = [[math.nan] * len(xs) for _ in ys]
    for r in _ok(rows):
        i, j = ys.index(r[y]), xs.index(r[x])
        if math.isnan(grid[i][j]) or r[key] > grid[i][j]:
            grid[i][j] = r[key]
    fig, ax = plt.subplots(figsize=(1.2 + 0.8 * len(xs), 1.2 + 0.6 * len(ys)))
    im = ax.imshow(grid, origin="lower", cmap="viridis", aspect="auto")
    for i in range(len(ys)):
        for j in range(len(xs)):
            if not math.isnan(grid[i][j]):
                text = f"{grid[i][j]:.2f}" if key == "mfu" else f"{grid[i][j] / 1e3:.0f}k"
                ax.text(j, i, text, ha="center", va="center", fontsize=7, color="w")
    ax.set_xticks(range(len(xs)), [str(v) for v in xs])
    ax.set_yticks(range(len(ys)), [str(v) for v in ys])
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    fig.colorbar(im, ax=ax, label=f"best simulated {METRIC_LABELS.get(key, key)}")
    ax.set_title(f"Best simulated {METRIC_LABELS.get(key, key)} by {x} and {y}\n"
                 "(blank: no simulated candidate in the cell)", fontsize=9)
    return _save(fig, path)


def tornado(rows: list[dict[str, Any]], metric: str, base: float, path: Path) -> Path:
    """One bar per varied field: metric at its lowest and highest varied value vs the base."""
    fig, ax = plt.subplots(figsize=(8, 1.4 + 0.5 * len(rows)))
    rows = sorted(rows, key=lambda r: abs(r["high_metric"] - r["low_metric"]))
    ends = [v / base - 1 for r in rows for v in (r["low_metric"], r["high_metric"])] + [0.0]
    span = max(ends) - min(ends) or 1.0
    ax.set_xlim(min(ends) - 0.05 * span, max(ends) + 0.3 * span)  # room for the labels
    for i, r in enumerate(rows):
        lo, hi = r["low_metric"] / base - 1, r["high_metric"] / base - 1
        ax.barh(i, lo, color="tab:blue")
        ax.barh(i, hi, color="tab:red")
        ax.text(
            max(lo, hi, 0) + 0.03 * span, i, f"e={r['elasticity']:+.2f}", va="center", fontsize=8
        )
    ax.set_yticks(
        range(len(rows)),
        [f"{r['field']} ({r['low_label']} .. {r['high_label']})" for r in rows],
        fontsize=8,
    )
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel(f"relative change of {metric} (blue: lowest, red: highest value)")
    ax.set_title(f"What-if sensitivity of {metric} (base {base:,.4g})")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    save_figure(fig, path, dpi=130)  # atomic: temp file, then rename
    plt.close(fig)
    return path
