"""The PyTorch MoE layer (kernels/moe.py), its EP forward over gloo, and describe_moe."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402
from xpusim.kernels.distributed import run_distributed  # noqa: E402
from xpusim.kernels.moe import MoELayer, ep_forward, expert_capacity  # noqa: E402
from xpusim.sim.errors import InputError  # noqa: E402
from xpusim.sim.ir import Collective, OpKind  # noqa: E402
from xpusim.sim.workloads.moe import describe_moe  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """One intra-op thread: on a shared 2-core box, OpenMP spin-waiting under contention
    slows small convolutions by 10x or more; results do not depend on the thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


F64 = torch.float64


def _tokens(n: int, hidden: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, hidden, dtype=F64, generator=torch.Generator().manual_seed(seed))


def _reference(layer: MoELayer, x: torch.Tensor) -> torch.Tensor:
    """Token-by-token loop: the definition the vectorised layer must equal (dropless or not)."""
    routing = layer.route(x)
    capacity = None
    if layer.capacity_factor is not None:
        capacity = expert_capacity(
            layer.capacity_factor, x.shape[0], layer.top_k, layer.num_experts
        )
    seen = [0] * layer.num_experts
    kept = torch.zeros(x.shape[0], layer.top_k, dtype=torch.bool)
    # Keep-order = expert-sorted, token order inside an expert, slot order inside a token.
    for e in range(layer.num_experts):
        for t in range(x.shape[0]):
            for s in range(layer.top_k):
                if int(routing.experts[t, s]) == e:
                    kept[t, s] = capacity is None or seen[e] < capacity
                    seen[e] += 1
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for s in range(layer.top_k):
            if not kept[t, s]:
                continue
            e = int(routing.experts[t, s])
            h = F.silu(x[t] @ layer.w_gate[e].t()) * (x[t] @ layer.w_up[e].t())
            out[t] += routing.weights[t, s] * (h @ layer.w_down[e].t())
    if layer.shared_experts:
        out += layer.shared_ffn_rows(x)
    return out


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_experts=8, top_k=2),
        dict(num_experts=8, top_k=2, shared_experts=2, shared_ffn=8),
        dict(num_experts=8, top_k=3, scoring="sigmoid", n_group=4, topk_group=2),
        dict(num_experts=6, top_k=2, capacity_factor=0.75, shared_experts=1),
        dict(num_experts=4, top_k=1, norm_topk_prob=False, capacity_factor=1.0),
    ],
)
def test_layer_equals_token_loop_reference(kwargs):
    layer = MoELayer(hidden=16, expert_ffn=12, dtype=F64, seed=3, **kwargs)
    x = _tokens(40, 16)
    with torch.no_grad():
        out, stats = layer(x, return_stats=True)
        ref = _reference(layer, x)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    assert sum(stats.tokens_per_expert) == 40 * layer.top_k
    assert sum(stats.kept_per_expert) == 40 * layer.top_k - stats.dropped


def test_input_shape_is_kept_and_stats_dropless():
    layer = MoELayer(16, 8, 4, 2, seed=0)
    x = torch.randn(3, 5, 16)
    out, stats = layer(x, return_stats=True)
    assert out.shape == x.shape
    assert stats.capacity is None and stats.dropped == 0
    assert stats.kept_per_expert == stats.tokens_per_expert


def test_normalised_weights_sum_to_one_and_group_limit_holds():
    layer = MoELayer(16, 8, 16, 4, scoring="sigmoid", n_group=8, topk_group=2, dtype=F64, seed=5)
    routing = layer.route(_tokens(64, 16))
    torch.testing.assert_close(routing.weights.sum(-1), torch.ones(64, dtype=F64))
    groups = routing.experts // 2  # 16 experts in 8 groups of 2
    for row in groups:
        assert len(set(row.tolist())) <= 2
    assert all(len(set(r.tolist())) == 4 for r in routing.experts)  # distinct experts


def test_capacity_keeps_first_tokens_in_order():
    # Route every token to expert 0 by making its gate row dominate.
    layer = MoELayer(8, 4, 4, 1, capacity_factor=1.0, dtype=F64, seed=0)
    with torch.no_grad():
        layer.gate.weight.zero_()
        layer.gate.weight[0] = 1.0
    x = _tokens(10, 8).abs()  # positive, so expert 0 scores highest for every token
    out, stats = layer(x, return_stats=True)
    cap = math.ceil(1.0 * 10 * 1 / 4)
    assert stats.capacity == cap == 3
    assert stats.tokens_per_expert == (10, 0, 0, 0)
    assert stats.kept_per_expert == (3, 0, 0, 0) and stats.dropped == 7
    assert torch.count_nonzero(out[:3].abs().sum(-1)) == 3
    assert torch.all(out[3:] == 0)


@settings(max_examples=25, deadline=None)
@given(
    tokens=st.integers(1, 30),
    experts=st.sampled_from([2, 4, 6, 8]),
    top_k=st.integers(1, 3),
    cf=st.one_of(st.none(), st.floats(0.25, 2.0)),
    seed=st.integers(0, 1000),
)
def test_routing_invariants(tokens, experts, top_k, cf, seed):
    top_k = min(top_k, experts)
    layer = MoELayer(8, 4, experts, top_k, capacity_factor=cf, seed=seed)
    out, stats = layer(
        torch.randn(tokens, 8, generator=torch.Generator().manual_seed(seed)), return_stats=True
    )
    assert torch.isfinite(out).all()
    assert sum(stats.tokens_per_expert) == tokens * top_k
    assert stats.dropped == sum(stats.tokens_per_expert) - sum(stats.kept_per_expert)
    if cf is None:
        assert stats.dropped == 0
    else:
        assert all(k <= stats.capacity for k in stats.kept_per_expert)
        assert all(
            k == min(n, stats.capacity)
            for k, n in zip(stats.kept_per_expert, stats.tokens_per_expert, strict=True)
        )


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="top_k"):
        MoELayer(8, 4, 4, 5)
    with pytest.raises(ValueError, match="n_group"):
        MoELayer(8, 4, 6, 2, n_group=4)
    with pytest.raises(ValueError, match="scoring"):
        MoELayer(8, 4, 4, 2, scoring="relu")
    with pytest.raises(ValueError, match="hidden"):
        MoELayer(8, 4, 4, 2)(torch.randn(3, 7))


# --- describe_moe ---------------------------------------------------------------------


def _counted_flops(layer: MoELayer, x: torch.Tensor) -> tuple[int, tuple[int, ...]]:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        _, stats = layer(x, return_stats=True)
    return counter.get_total_flops(), stats.kept_per_expert


@pytest.mark.parametrize(
    "tokens,hidden,ffn,experts,top_k,shared,shared_ffn,cf",
    [
        (64, 256, 128, 8, 2, 0, 0, None),
        (100, 512, 256, 16, 4, 2, 128, 1.0),
        (7, 384, 192, 32, 8, 1, 384, None),  # decode-like: most experts idle
    ],
)
def test_describe_matches_flop_counter(tokens, hidden, ffn, experts, top_k, shared, shared_ffn, cf):
    layer = MoELayer(
        hidden, ffn, experts, top_k, shared, shared_ffn or None, capacity_factor=cf, seed=0
    )
    counted, kept = _counted_flops(layer, torch.randn(tokens, hidden))
    graph = describe_moe(
        tokens, hidden, ffn, experts, top_k, shared, shared_ffn, tokens_per_expert=kept
    )
    matrix = sum(op.flops for op in graph.ops() if op.kind == OpKind.GEMM)
    assert matrix == counted  # the GEMMs are exactly what torch runs
    # Vector ops add ~(SILU_FLOPS + 1) / (6 * hidden) per routed row: a few percent at most.
    assert graph.total_flops() == pytest.approx(counted, rel=0.03)
    active = sum(1 for n in kept if n > 0)
    assert (
        sum(
            1
            for op in graph.ops()
            if op.name.endswith(".down") and op.name.startswith("moe.expert")
        )
        == active
    )


def test_describe_uniform_default_hand_count():
    t, h, f, e, k = 128, 64, 32, 8, 2
    graph = describe_moe(t, h, f, e, k, shared_experts=1, shared_ffn=48)
    gemms = {op.name: op for op in graph.ops() if op.kind == OpKind.GEMM}
    assert gemms["moe.router"].flops == 2 * t * h * e
    assert gemms["moe.expert3.up"].shape.m == t * k / e  # 32 rows per expert
    expected = 2 * t * h * e + 3 * 2 * (t * k) * h * f + 3 * 2 * t * h * 48
    assert sum(op.flops for op in gemms.values()) == expected


def test_describe_ep_collectives_and_local_experts():
    t, h, f, e, k, ep = 64, 128, 64, 16, 4, 4
    graph = describe_moe(t, h, f, e, k, ep=ep, rank=2, dtype="bf16")
    colls = {c.work.name: c.work for c in graph.tasks if isinstance(c.work, Collective)}
    assert set(colls) == {
        "moe.dispatch.counts",
        "moe.dispatch.rows",
        "moe.dispatch.expert_ids",
        "moe.combine.rows",
    }
    assert colls["moe.dispatch.rows"].bytes == t * k * h * 2
    assert colls["moe.dispatch.rows"].group == (0, 1, 2, 3)
    # Balanced routing: the rank receives as many rows as it sends.
    assert colls["moe.combine.rows"].bytes == colls["moe.dispatch.rows"].bytes
    experts = {op.name.split(".")[1] for op in graph.ops() if op.name.startswith("moe.expert")}
    assert experts == {f"expert{i}" for i in range(8, 12)}


def test_describe_ep_graphs_run_in_the_engine():
    from xpusim.hwprofiles.loader import load_device, load_system
    from xpusim.sim.cost.roofline import RooflineModel
    from xpusim.sim.engine import Engine
    from xpusim.sim.network import comm_time_fn

    model = RooflineModel(load_device("ascend-910b2"))
    graphs = [describe_moe(512, 1024, 512, 16, 4, 1, 512, "bf16", ep=8, rank=r) for r in range(8)]
    result = Engine(
        graphs, lambda op: model.time(op).time_s, comm_time_fn(load_system("atlas-800t-a2"))
    ).run()
    assert result.makespan_s > 0
    assert 0 <= result.exposed_comm_s(0) <= result.makespan_s


@settings(max_examples=30, deadline=None)
@given(
    ep=st.sampled_from([1, 2, 4, 8]),
    per_rank=st.integers(1, 4),
    top_k=st.integers(1, 4),
    tokens=st.integers(1, 64),
    skew=st.lists(st.integers(0, 9), min_size=32, max_size=32),
)
def test_describe_ep_conserves_flops_and_rows(ep, per_rank, top_k, tokens, skew):
    """Splitting experts over ranks moves work, never creates or loses it."""
    experts = ep * per_rank
    top_k = min(top_k, experts)
    weights = [w + 1 for w in skew[:experts]]
    total = tokens * top_k * ep
    loads = [total * w / sum(weights) for w in weights]  # a skewed histogram, all rows kept
    graphs = [
        describe_moe(tokens, 64, 32, experts, top_k, tokens_per_expert=loads, ep=ep, rank=r)
        for r in range(ep)
    ]
    whole = describe_moe(tokens * ep, 64, 32, experts, top_k, tokens_per_expert=loads)

    def expert_flops(g):
        return sum(op.flops for op in g.ops() if op.name.startswith("moe.expert"))

    assert sum(expert_flops(g) for g in graphs) == pytest.approx(expert_flops(whole))
    if ep > 1:
        sent = sum(
            t.work.bytes
            for g in graphs
            for t in g.tasks
            if isinstance(t.work, Collective) and t.work.name == "moe.dispatch.rows"
        )
        back = sum(
            t.work.bytes
            for g in graphs
            for t in g.tasks
            if isinstance(t.work, Collective) and t.work.name == "moe.combine.rows"
        )
        assert back == pytest.approx(sent)


def test_describe_bad_input():
    with pytest.raises(InputError, match="ep=3"):
        describe_moe(8, 16, 16, 8, 2, ep=3)
    with pytest.raises(InputError, match="tokens_per_expert"):
        describe_moe(8, 16, 16, 4, 2, tokens_per_expert=[1, 2])
    with pytest.raises(InputError, match="tokens_per_expert"):
        describe_moe(8, 16, 16, 4, 2, tokens_per_expert=[10, 10, 10, 10])
    with pytest.raises(InputError, match="shared_ffn"):
        describe_moe(8, 16, 16, 4, 2, shared_experts=1)


# --- expert parallelism over gloo -----------------------------------------------------

EP_CONFIGS = [
    dict(hidden=16, expert_ffn=12, num_experts=8, top_k=2),
    dict(
        hidden=16,
        expert_ffn=12,
        num_experts=8,
        top_k=2,
        shared_experts=1,
        shared_ffn=8,
        scoring="sigmoid",
        n_group=4,
        topk_group=2,
    ),
    dict(hidden=16, expert_ffn=12, num_experts=8, top_k=3, capacity_factor=0.8),
]


def _ep_worker(rank: int, world: int, x: torch.Tensor) -> list:
    results = []
    for cfg in EP_CONFIGS:
        layer = MoELayer(dtype=F64, seed=7, **cfg)
        with torch.no_grad():
            out, stats = ep_forward(layer, x.chunk(world)[rank], return_stats=True)
        results.append((out, stats))
    return results


@pytest.mark.distributed
@pytest.mark.parametrize("world", [2, 4])
def test_ep_forward_equals_single_process(world):
    x = _tokens(48, 16, seed=11)
    per_rank = run_distributed(_ep_worker, world, x)
    for i, cfg in enumerate(EP_CONFIGS):
        layer = MoELayer(dtype=F64, seed=7, **cfg)
        with torch.no_grad():
            ref, stats = layer(x, return_stats=True)
        out = torch.cat([per_rank[r][i][0] for r in range(world)])
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
        # Each rank reports its own experts' loads; together they are the global ones.
        kept = sum((per_rank[r][i][1].kept_per_expert for r in range(world)), ())
        assert kept == stats.kept_per_expert
        assert sum(per_rank[r][i][1].dropped for r in range(world)) == stats.dropped


@pytest.mark.parametrize(
    ("tokens", "hidden", "ffn", "experts", "top_k", "shared"),
    [
        (64, 256, 512, 16, 4, 0),
        (64, 256, 512, 8, 2, 1),
        (100, 128, 256, 8, 1, 0),
        (7, 64, 128, 16, 2, 2),
    ],
)
def test_describe_lists_every_executed_op(tokens, hidden, ffn, experts, top_k, shared):
    """describe() with the measured routing lists as many ops as the layer launches."""
    from xpusim.calibrate.opcount import count_ops

    torch.manual_seed(0)
    layer = MoELayer(hidden, ffn, experts, top_k, shared).eval()
    x = torch.randn(tokens, hidden)
    executed = count_ops(lambda: layer(x))
    with torch.no_grad():
        _, stats = layer(x, return_stats=True)
    graph = layer.describe(tokens, tokens_per_expert=list(stats.kept_per_expert))
    assert len(graph.ops()) == sum(executed.values()), executed
    assert sum(op.kind == OpKind.GEMM for op in graph.ops()) == executed["mm"]


def test_weight_footprint_decides_the_cache_tier():
    """Expert weights count as cache-resident only if the whole layer's weights fit."""
    from xpusim.hwprofiles import load_device
    from xpusim.sim.cost import RooflineModel
    from xpusim.sim.cost.roofline import cold_bytes

    base = load_device("cpu-host")
    cache = 32 * 2**20
    small = describe_moe(16, 256, 512, 4, 1)  # 4 x 3 x 0.5 MB of weights: fits
    big = describe_moe(16, 512, 1024, 16, 1)  # 16 x 3 x 2 MB = 96 MB: does not
    gate_small = next(op for op in small.ops() if op.name == "moe.expert0.gate")
    gate_big = next(op for op in big.ops() if op.name == "moe.expert0.gate")
    assert cold_bytes(gate_small, cache) == 0
    assert cold_bytes(gate_big, cache) == 512 * 1024 * 4  # the whole weight matrix
    # With a cache tier, the big layer's weight GEMM is priced at DRAM speed.
    from dataclasses import replace

    eff = replace(base.efficiency, cache_bytes=cache, cache_speedup=4.0)
    dev = replace(base, efficiency=eff)
    cost = RooflineModel(dev).time(gate_big)
    nbytes = gate_big.main_bytes
    weight = 512 * 1024 * 4
    hot = nbytes - weight
    rate = dev.hbm_bandwidth * eff.memory_max
    # The weight is read in the GEMM's packing phase (it is not in the core's L2 either,
    # see test_weights_evicted_from_l2_are_read_in_the_packing_phase), at DRAM speed;
    # the activations stay in the overlapped memory term at the cache tier's speed.
    assert cost.memory_s == pytest.approx((hot + eff.memory_half_bytes) / (rate * 4.0))
    assert cost.details["pack_read_s"] == pytest.approx(weight / rate)


def test_weights_evicted_from_l2_are_read_in_the_packing_phase():
    """A CPU GEMM whose layer sweeps more weights than the core's L2 reads its weight
    before computing (BLAS packing), from the cache tier while the layer's weights fit it."""
    from dataclasses import replace

    from xpusim.hwprofiles import load_device
    from xpusim.sim import ops
    from xpusim.sim.cost import RooflineModel
    from xpusim.sim.cost.roofline import l2_missed_weight_bytes

    base = load_device("cpu-host")  # per-core L2 1 MiB, L3 32 MiB
    cache = 32 * 2**20
    eff = replace(base.efficiency, cache_bytes=cache, cache_speedup=2.0, overlap=0.5)
    dev = replace(base, efficiency=eff)
    layer = describe_moe(16, 256, 512, 8, 2)  # 8 x 3 x 0.5 MiB = 12 MiB: > L2, < L3
    gate = next(op for op in layer.ops() if op.name == "moe.expert0.gate")
    weight = 512 * 256 * 4
    assert l2_missed_weight_bytes(gate, dev, cache) == weight
    cost = RooflineModel(dev).time(gate)
    rate = dev.hbm_bandwidth * eff.memory_max
    # Hand-computed: rows = 16 x 2 / 8 = 4; the GEMM moves x (4 x 256), w, out (4 x 512).
    activations = (4 * 256 + 4 * 512) * 4
    assert gate.main_bytes == activations + weight
    assert cost.memory_s == pytest.approx((activations + eff.memory_half_bytes) / (rate * 2.0))
    pack = weight / (rate * 2.0)  # 512 KiB at the cache tier's rate
    assert cost.details["pack_read_s"] == pytest.approx(pack)
    c, m = cost.compute_s, cost.memory_s
    body = max(c, m) + 0.5 * min(c, m) + pack
    assert cost.time_s == pytest.approx(body + cost.overhead_s)
    # Not for a GEMM that states no weights (the calibration grid: its operand stays in L2
    # between back-to-back calls), nor without a calibrated cache tier, nor off a CPU.
    assert l2_missed_weight_bytes(ops.gemm("grid", 4, 512, 256, "fp32"), dev, cache) == 0
    assert l2_missed_weight_bytes(gate, base, base.efficiency.cache_bytes) == 0
    assert "pack_read_s" not in RooflineModel(base).time(gate).details
    gpu = load_device("h100-sxm5-80gb")
    assert l2_missed_weight_bytes(gate, gpu, 50 * 2**20) == 0
    # A layer whose weights fit the core's L2 keeps them there.
    tiny = describe_moe(16, 64, 64, 2, 1)  # 2 x 3 x 16 KiB
    tiny_gate = next(op for op in tiny.ops() if op.name == "moe.expert0.gate")
    assert l2_missed_weight_bytes(tiny_gate, dev, cache) == 0
