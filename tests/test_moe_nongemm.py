"""The MoE layer's non-GEMM part as the CPU model prices it (docs/calibration_notes.md,
"2026-12-07, twenty-third session: the MoE layer's non-GEMM ops"): one graph op per
non-GEMM ATen call the kernel makes, each priced at about one fitted dispatch (the launch
overhead), which is what such a call costs measured warm on the Zen 4 host
(calibrate/data/zen4-host/probes/moe_nongemm_cold.csv: 31 calls in 120-122 us)."""

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1] / "calibrate/data"
SHAPE = dict(tokens=16, hidden=256, expert_ffn=512, experts=8, top_k=2, shared_experts=0)


def test_sixteen_token_layer_non_gemm_price_is_its_dispatches():
    from xpusim.calibrate.kernel_runners import moe_layer_and_input, moe_routing_histogram
    from xpusim.calibrate.opcount import count_ops
    from xpusim.calibrate.pipeline import (
        fit_measured,
        load_base,
        read_measurements,
        recorded_device,
    )
    from xpusim.sim.cost import RooflineModel
    from xpusim.sim.ir import OpKind
    from xpusim.sim.workloads.moe import describe_moe

    csv_path = ROOT / "zen4-host/quick-1424.measurements.csv"
    base = load_base("cpu-host", recorded_device(csv_path, "cpu"))
    fitted = fit_measured(read_measurements(csv_path), base).params.to_device(base)
    routing = moe_routing_histogram(tuple(sorted(SHAPE.items())), "fp32")
    graph = describe_moe(16, 256, 512, 8, 2, tokens_per_expert=list(routing))
    rest = [op for op in graph.ops() if op.kind != OpKind.GEMM]

    layer, x = moe_layer_and_input(SHAPE, "fp32", "cpu")
    executed = count_ops(lambda: layer(x))
    # Router softmax, top-k, gather, sum, divide; sort, 3 index, floor_divide, bincount;
    # 8 silu, 8 + 1 mul; zeros_like, index_add_: every one is in the graph.
    assert len(rest) == sum(executed.values()) - executed["mm"] == 30

    model = RooflineModel(fitted)
    priced = sum(model.time(op).time_s for op in rest)
    dispatch = len(rest) * fitted.efficiency.launch_overhead_s
    # The bodies (<= 2 x 2 KiB of routing ids, 8-32 KiB of rows) add about a tenth.
    assert dispatch <= priced <= 1.15 * dispatch
