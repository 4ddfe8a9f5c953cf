"""The cost of simulating one training step: CPU seconds vs micro-batches, vs devices
(data parallelism) and vs pipeline stages, fast (steady-state extension) and exact.

Writes docs/img/step_cost.png and benchmarks/step_cost.csv. CPU seconds of this process
(time.process_time), not wall: the development machine is shared, and the simulator is
single-threaded. Run: python benchmarks/step_cost_curve.py  (about a minute of CPU); --plot-only redraws.
"""

from __future__ import annotations

import csv
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xpusim.hwprofiles import load_system  # noqa: E402
from xpusim.sim.models.hf_config import load_model  # noqa: E402
from xpusim.sim.parallel import ParallelPlan  # noqa: E402
from xpusim.sim.training.simulate import TrainingOptions  # noqa: E402
from xpusim.sim.training.steady import simulate_training  # noqa: E402


def cpu_s(spec, system, plan, exact: bool) -> tuple[float, float, int]:
    """(CPU seconds, simulated step seconds, tasks) of one step; the best of two runs."""
    best = float("inf")
    for _ in range(2):
        t0 = time.process_time()
        r = simulate_training(spec, system, plan, TrainingOptions(exact=exact))
        best = min(best, time.process_time() - t0)
    return best, r.step_time_s, r.tasks


def main() -> None:
    spec = load_model("gpt3-175b")
    rows = []
    # 1. Micro-batches: GPT-3 175B, TP8 PP8 DP1 on 8 DGX A100 nodes, m = gbs.
    system = load_system("dgx-a100", nodes=8)
    for m in (8, 16, 32, 64, 128, 256, 512, 1024, 2048):
        plan = ParallelPlan(tp=8, pp=8, mbs=1, gbs=m, seq=2048)
        for exact in (False, True):
            if exact and m > 256:
                continue  # grows linearly; the trend is clear by 256
            c, step, tasks = cpu_s(spec, system, plan, exact)
            rows.append(("microbatches", m, "exact" if exact else "fast", c, step, tasks))
            print(rows[-1], flush=True)
    # 2. Devices through data parallelism: TP8 PP8, 64 micro-batches per pipeline.
    for dp in (1, 4, 16, 64, 96):
        sysm = load_system("dgx-a100", nodes=8 * dp)
        plan = ParallelPlan(tp=8, pp=8, mbs=1, gbs=64 * dp, seq=2048)
        c, step, tasks = cpu_s(spec, sysm, plan, False)
        rows.append(("devices", 64 * dp, "fast", c, step, tasks))
        print(rows[-1], flush=True)
    # 3. Pipeline stages: TP8, PP p, DP 1, 8p micro-batches (simulated ranks = p).
    for pp in (2, 4, 8, 16, 32, 48, 96):
        sysm = load_system("dgx-a100", nodes=pp)
        plan = ParallelPlan(tp=8, pp=pp, mbs=1, gbs=8 * pp, seq=2048)
        c, step, tasks = cpu_s(replace(spec, layers=96), sysm, plan, False)
        rows.append(("stages", pp, "fast", c, step, tasks))
        print(rows[-1], flush=True)
    out = ROOT / "benchmarks" / "step_cost.csv"
    with out.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["sweep", "x", "path", "cpu_s", "step_s", "tasks"])
        w.writerows(rows)
    plot(rows, ROOT / "docs" / "img" / "step_cost.png")


def plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharey=True)
    panels = [("microbatches", "micro-batches per step (TP8 PP8, 64 GPUs)"),
              ("devices", "devices (TP8 PP8, DP 1-96; 64 micro-batches per pipeline)"),
              ("stages", "pipeline stages (TP8, 8 micro-batches per stage)")]
    for ax, (sweep, label) in zip(axes, panels, strict=True):
        for path_name, style in (("fast", "o-"), ("exact", "s--")):
            pts = [(r[1], r[3]) for r in rows if r[0] == sweep and r[2] == path_name]
            if pts:
                ax.plot(*zip(*pts, strict=True), style, label=path_name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(label, fontsize=8)
        ax.set_ylabel("CPU s per simulated step")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Cost of simulating one GPT-3 175B training step (xpusim train)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    if sys.argv[1:] == ["--plot-only"]:  # redraw from the committed CSV
        with (ROOT / "benchmarks" / "step_cost.csv").open() as fh:
            rows = [(r["sweep"], int(r["x"]), r["path"], float(r["cpu_s"]))
                    for r in csv.DictReader(fh)]
        plot(rows, ROOT / "docs" / "img" / "step_cost.png")
    else:
        main()
