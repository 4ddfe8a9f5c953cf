"""CPU activation offloading (``--cpu-offload-layers``, sim/training/offload.py): TE's
offload handler's layer windows, the copies' waits and the bytes that leave the GPU,
hand-computed; Megatron-Core's refusals; the step adds exactly the modelled waits."""

from __future__ import annotations

from dataclasses import replace

import pytest
from xpusim.hwprofiles import load_system
from xpusim.hwprofiles.spec import Link
from xpusim.sim.cli.main import main
from xpusim.sim.errors import InputError
from xpusim.sim.models.spec import ModelSpec
from xpusim.sim.parallel import ParallelPlan
from xpusim.sim.training import estimate_memory
from xpusim.sim.training.memory import GIB, analytical_memory
from xpusim.sim.training.offload import exposed_s, offloaded_bytes, window_map
from xpusim.sim.training.result import OFFLOAD_KEY

import xpusim

DENSE6 = ModelSpec(
    name="hand-dense6", family="llama", hidden=1024, layers=6, heads=8, kv_heads=4,
    head_dim=128, ffn=4096, vocab=32000,
)  # fmt: skip


def test_window_map_is_te_layer_window_map():
    # L // N = 2, no remainder: group k's copy is waited for after layer 2k + 1.
    assert window_map(80, 40) == [2 * k + 1 for k in range(40)]
    # 10 layers, 4 groups: 10 // 4 = 2, remainder 2 spread over the first two groups:
    # w0 = 1 + 1, w1 = 3 + 2, w2 = 5 + 2, w3 = 7 + 2.
    assert window_map(10, 4) == [2, 5, 7, 9]
    # Llama 3.1 405B, 92 of 126 layers: 34 two-layer windows, then one-layer windows.
    w = window_map(126, 92)
    assert w[:34] == [2 * k + 1 for k in range(34)] and w[34] == 68 and w[-1] == 125


def test_offloaded_bytes_leave_the_last_group_resident():
    assert offloaded_bytes([1.0, 2.0, 3.0, 4.0, 5.0], 3) == 3.0  # layers 0 and 1
    assert offloaded_bytes([1.0, 2.0], 0) == 0.0


def test_exposed_waits_by_hand():
    # 4 layers, 2 offloaded (windows [1, 3]); forward 1 s, backward 2 s per layer;
    # group 0 copies in 3 s, group 1 in 0.5 s.
    # Forward: group 0's copy runs 1..4; after layer 1 (t = 2) the compute waits 2 s,
    # then starts group 1 (4..4.5), done before layer 3 ends (t = 6): 2 s.
    # Backward: group 1 reloads before layer 3 (0..0.5); before layer 1 (t = 4) group 0
    # reloads (4..7); before layer 0 (t = 6) the compute waits 1 s.
    assert exposed_s([1.0] * 4, [2.0] * 4, [3.0, 0.5]) == (2.0, 1.0)
    # Copies shorter than a layer hide entirely.
    assert exposed_s([1.0] * 4, [2.0] * 4, [0.5, 0.5]) == (0.0, 0.0)


def test_memory_drops_by_the_offloaded_layers():
    node = load_system("dgx-a100", nodes=1)
    plan = ParallelPlan(tp=1, pp=1, dp=8, mbs=1, seq=2048)
    base = estimate_memory(DENSE6, node, plan)[0]
    off = estimate_memory(DENSE6, node, replace(plan, cpu_offload_layers=4))[0]
    # Layers 0..2 (N - 1 = 3 identical layers) live in host memory at the peak.
    assert off.offloaded == pytest.approx(3 * base.per_layer_activations, rel=1e-12)
    assert base.activations - off.activations == pytest.approx(off.offloaded, rel=1e-12)
    assert off.as_dict()["activations_offloaded_bytes"] == off.offloaded
    assert "activations_offloaded_bytes" not in base.as_dict()
    on = replace(plan, cpu_offload_layers=4)
    assert analytical_memory(DENSE6, node, on) == estimate_memory(DENSE6, node, on)


@pytest.mark.parametrize("change, needle", [
    (dict(pp=2, dp=4), "Pipeline parallelism"),
    (dict(recompute="full"), "recomputation"),
    (dict(cpu_offload_layers=6), "less than num_layers"),
])  # fmt: skip
def test_megatron_refusals(change, needle):
    node = load_system("dgx-a100", nodes=1)
    plan = replace(ParallelPlan(tp=1, pp=1, dp=8, mbs=1, seq=2048, cpu_offload_layers=2),
                   **change)
    with pytest.raises(InputError, match=needle):
        estimate_memory(DENSE6, node, plan)


def test_pricing_needs_a_host_link(capsys):
    argv = ["train", "--model", "llama-2-7b", "--system", "dgx-a100", "--nodes", "1",
            "--tp", "1", "--dp", "8", "--gbs", "8", "--seq", "2048", "--recompute", "none",
            "--cpu-offload-layers", "8"]  # fmt: skip
    assert main(argv) == 2
    assert "host_link" in capsys.readouterr().err


def test_step_adds_the_modelled_waits():
    rack = load_system("gb200-nvl72")
    slow = replace(rack, host_link=Link(2e9, 0.0))  # copies far slower than a layer
    kw = dict(model=DENSE6, devices=8, tp=1, pp=1, dp=8, mbs=2, gbs=32, seq=4096,
              recompute="none")
    plain = xpusim.train(system=slow, **kw)
    off = xpusim.train(system=slow, cpu_offload_layers=4, **kw)
    wait = off.simulation.compute_by_kind_s[OFFLOAD_KEY]  # per step: 2 micro-batches
    assert wait > 0
    assert off.step_time_s - plain.step_time_s == pytest.approx(wait, rel=1e-9)
    # At 2 GB/s each of the 4 groups' copies (per_layer bytes) dwarfs the layers'
    # compute, so nearly all of the four D2H and four H2D copies are exposed.
    mem = off.simulation.peak_memory
    per_layer = mem.per_layer_activations
    copies = 2 * 4 * per_layer / 2e9 * 2  # D2H + H2D, 4 groups, 2 micro-batches
    assert 0.9 * copies < wait < copies
    assert per_layer / GIB > 0.1
    fast = xpusim.train(system=rack, cpu_offload_layers=4, **kw)  # 225 GB/s: hidden
    assert fast.simulation.compute_by_kind_s.get(OFFLOAD_KEY, 0.0) < 0.1 * wait


def test_out_of_memory_with_offload_suggests_offload_not_recompute(capsys):
    # Llama-3-70B at MBS 2, 8k tokens, ZeRO-3 on 64 H100s: 208.5 GiB of 80 even with 40
    # layers offloaded; Megatron-Core refuses recompute with offload, so the hint must not
    # offer it.
    argv = ["train", "--model", "llama-3-70b", "--system", "dgx-h100", "--nodes", "8",
            "--tp", "1", "--pp", "1", "--mbs", "2", "--gbs", "256", "--seq", "8192",
            "--zero", "3", "--cpu-offload-layers", "40"]  # fmt: skip
    assert main(argv) != 0
    err = capsys.readouterr().err
    assert "out of memory" in err and "more --cpu-offload-layers" in err
    assert "--recompute full" not in err
