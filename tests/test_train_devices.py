"""``xpusim train --devices N [--per-node K]``: a job on part of a system.

Placement is one contiguous block (rank r on device r, ``sim.placement``), or the first K
devices of each node, so the hand checks are identities: N devices of a larger system see
the same links as a system of exactly those devices, and a group's path shows which links
it crosses."""

from __future__ import annotations

import json
import shlex
from dataclasses import replace
from math import ceil

import pytest
from xpusim.hwprofiles import load_system
from xpusim.sim.cli.main import main
from xpusim.sim.errors import InputError
from xpusim.sim.network.topology import Topology
from xpusim.sim.parallel import Layout, ParallelPlan
from xpusim.sim.placement import device_of, job_devices

import xpusim

KW = dict(model="llama-3-8b", mbs=1, gbs=16, seq=4096, recompute="selective",
          recompute_modules="norm,attn,act", dtype="bf16")


def _link_kinds(system, group: tuple[int, ...]) -> set[str]:
    """Link kinds a ring over ``group`` crosses (each member to the next)."""
    topo = Topology(system)
    nxt = list(group[1:]) + [group[0]]
    return {link[0] for a, b in zip(group, nxt, strict=True) for link in topo.path(a, b)}


def test_four_of_eight_dgx_gpus_is_a_four_gpu_node():
    # DGX H100's NVSwitch gives every GPU the same NVLink capacity whatever the node's
    # size (Topology.intra_capacity, "switch"), so devices 0-3 of a DGX see exactly the
    # links of a 4-GPU node: the step and the memory must be bit-identical.
    part = xpusim.train(system="dgx-h100", devices=4, **KW)
    four = replace(load_system("dgx-h100"), devices_per_node=4, nics_per_node=4)
    whole = xpusim.train(system=four, **KW)
    assert part.devices == 4 and part.plan.dp == 4  # dp = N / (tp*cp*pp)
    assert part.step_time_s == whole.step_time_s
    assert part.memory_per_device_bytes == whole.memory_per_device_bytes
    assert part.as_dict()["system_devices"] == 8 and whole.as_dict()["system_devices"] == 4
    # Per-device throughput divides by the job's 4 devices, not the system's 8.
    d = part.as_dict()
    assert d["tokens_per_s_per_device"] == pytest.approx(16 * 4096 / part.step_time_s / 4)


def test_dp_group_of_a_four_gpu_job_stays_on_nvlink():
    plan = ParallelPlan(dp=4)
    group = Layout(plan).group(0, ("dp",))
    assert group == (0, 1, 2, 3)
    assert _link_kinds(load_system("dgx-h100"), group) == {"up", "down"}  # NVSwitch only


def test_first_node_of_two_is_the_one_node_system():
    # 8 of 16 devices: the job sits in node 0 and never touches a NIC, so it is the
    # whole one-node DGX, bit for bit.
    part = xpusim.train(system="dgx-h100", nodes=2, devices=8, **KW)
    whole = xpusim.train(system="dgx-h100", **KW)
    assert part.step_time_s == whole.step_time_s
    assert part.memory_per_device_bytes == whole.memory_per_device_bytes


def test_a_job_past_one_node_crosses_the_nic():
    # 12 of 16 devices, tp=4 dp=3: DP group {0, 4, 8}; device 8 is node 1's first GPU.
    plan = ParallelPlan(tp=4, dp=3)
    group = Layout(plan).group(0, ("dp",))
    assert group == (0, 4, 8)
    kinds = _link_kinds(load_system("dgx-h100", nodes=2), group)
    assert {"nic_tx", "nic_rx"} <= kinds
    # The same job on one 12-GPU NVSwitch node keeps the group on NVLink: faster.
    kw = {**KW, "gbs": 12, "tp": 4}
    split = xpusim.train(system="dgx-h100", nodes=2, devices=12, **kw)
    twelve = replace(load_system("dgx-h100"), devices_per_node=12, nics_per_node=12)
    assert split.step_time_s > xpusim.train(system=twelve, **kw).step_time_s


def test_eight_gpus_of_an_nvl72_rack():
    # The NVLink domain's per-GPU capacity does not depend on its size either: 8 of the
    # 72 GPUs are an 8-GPU NVLink 5 domain.
    kw = {**KW, "dtype": "fp8"}
    part = xpusim.train(system="gb200-nvl72", devices=8, **kw)
    eight = replace(load_system("gb200-nvl72"), devices_per_node=8, nics_per_node=8)
    assert part.step_time_s == xpusim.train(system=eight, **kw).step_time_s


def test_128_gpus_fill_one_rack_then_the_next():
    # ceil(128 / 72) = 2 racks: devices 0-71 in rack 0, 72-127 in rack 1.
    n = 128
    system = load_system("gb200-nvl72", nodes=ceil(n / 72))
    plan = ParallelPlan(tp=2, dp=64)
    assert job_devices(plan, system) == n
    dp_group = Layout(plan).group(0, ("dp",))
    assert dp_group[-1] == 126 and {"nic_tx", "nic_rx"} <= _link_kinds(system, dp_group)
    assert _link_kinds(system, Layout(plan).group(70, ("tp",))) == {"up", "down"}


def test_job_devices():
    two = load_system("dgx-h100", nodes=2)
    assert job_devices(ParallelPlan(), two) == 16  # dp unset: the whole system
    assert job_devices(ParallelPlan(tp=2, dp=2), two) == 4
    assert job_devices(ParallelPlan(dp=8, per_node=4), two) == 8
    with pytest.raises(InputError, match="needs tp\\*cp\\*dp\\*pp = 2\\*1\\*16\\*1 = 32"):
        job_devices(ParallelPlan(tp=2, dp=16), two)
    with pytest.raises(InputError, match="3 node\\(s\\)"):  # 12 devices, 4 per node
        job_devices(ParallelPlan(dp=12, per_node=4), two)
    with pytest.raises(InputError, match="starts at device 0"):
        job_devices(ParallelPlan(dp=2, first_device=4), two)
    with pytest.raises(InputError, match="cannot fill the system"):
        job_devices(ParallelPlan(per_node=4), two)


def test_device_of():
    # 4 per node on 8-GPU nodes: ranks 0-3 on devices 0-3, ranks 4-7 on devices 8-11.
    plan = ParallelPlan(dp=8, per_node=4)
    assert [device_of(plan, r, 8) for r in range(8)] == [0, 1, 2, 3, 8, 9, 10, 11]
    assert [device_of(ParallelPlan(dp=8), r, 8) for r in range(8)] == list(range(8))


def test_first_k_of_each_node_is_a_k_device_node():
    # 4 GPUs of each of two DGX nodes see the links of two 4-GPU nodes: NVSwitch per-GPU
    # capacity, one NIC per GPU, the same two nodes on the rail switches.
    part = xpusim.train(system="dgx-h100", nodes=2, devices=8, per_node=4, **KW)
    fours = replace(load_system("dgx-h100"), devices_per_node=4, nics_per_node=4, nodes=2)
    whole = xpusim.train(system=fours, **KW)
    assert part.step_time_s == whole.step_time_s
    assert part.memory_per_device_bytes == whole.memory_per_device_bytes
    # ... and the DP group now crosses the NICs, so it is slower than 8 GPUs of one node.
    assert part.step_time_s > xpusim.train(system="dgx-h100", nodes=2, devices=8, **KW).step_time_s
    # per_node = the node's devices is the contiguous block.
    same = xpusim.train(system="dgx-h100", nodes=2, devices=16, per_node=8, **KW)
    assert same.step_time_s == xpusim.train(system="dgx-h100", nodes=2, **KW).step_time_s


def test_64_gpus_of_each_nvl72_rack():
    # Megatron-Bridge's GB200 launcher: 256 GPUs as 4 segments of 16 four-GPU trays, one
    # per rack. EP 32 inside a rack, as on a 64-GPU NVLink domain.
    kw = dict(model="deepseek-v3", tp=1, pp=8, vpp=4, ep=32, dp=32, mbs=1, gbs=512,
              seq=4096, dtype="mxfp8")
    part = xpusim.train(system=load_system("gb200-nvl72", nodes=4), devices=256, per_node=64,
                        **kw)
    sixty_four = replace(load_system("gb200-nvl72"), devices_per_node=64, nics_per_node=64,
                         nodes=4)
    assert part.step_time_s == xpusim.train(system=sixty_four, **kw).step_time_s


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (dict(devices=0), "devices must be an integer >= 1"),
        (dict(devices="4"), "devices must be an integer >= 1"),
        (dict(devices=9), "--devices 9 exceeds the 8 devices .* pass --nodes 2"),
        (dict(devices=4, dp=8), "--devices 4 != tp\\*cp\\*dp\\*pp = 1\\*1\\*8\\*1 = 8"),
        (dict(devices=6, tp=4), "--devices 6 is not a multiple of tp\\*cp\\*pp = 4"),
        (dict(devices=72, nodes=1), "--devices 72 exceeds .* pass --nodes 9"),
        (dict(per_node=4), "--per-node 4 needs --devices N"),
        (dict(devices=8, per_node=9, nodes=2), "must be an integer from 1 to the 8 devices"),
        (dict(devices=8, per_node=3, nodes=3), "--per-node 3 does not divide"),
        (dict(devices=12, per_node=4, nodes=2), "exceeds the 8 devices .* pass --nodes 3"),
    ],
)
def test_bad_devices(extra, message):
    with pytest.raises(InputError, match=message):
        xpusim.train(system="dgx-h100", **{**KW, **extra})


def test_without_devices_the_old_rule_holds():
    # No --devices: the plan must still fill the system it names.
    with pytest.raises(InputError, match="devices \\(16\\) != tp\\*cp\\*dp\\*pp"):
        xpusim.train(system="dgx-h100", nodes=2, dp=8, **KW)


def test_plan_file_carries_the_system_size(tmp_path):
    path = tmp_path / "plan.toml"
    path.write_text('model = "llama-3-8b"\nsystem = "dgx-h100"\ndevices = 4\n'
                    "[plan]\nmbs = 1\ngbs = 16\nseq = 4096\n")
    from_file = xpusim.train(plan=str(path), recompute="selective", recompute_modules="norm,attn,act")
    assert from_file.devices == 4
    assert from_file.step_time_s == xpusim.train(system="dgx-h100", devices=4, **KW).step_time_s
    path.write_text('devices = "four"\n[plan]\nmbs = 1\n')
    with pytest.raises(InputError, match="plan.toml: devices must be an integer"):
        xpusim.train(plan=str(path), model="llama-3-8b")


def test_cli(capsys):
    cmd = ("train --model llama-3-8b --system dgx-h100 --devices 4 --mbs 1 --gbs 16 "
           "--seq 4096 --recompute selective --recompute-modules norm,attn,act --quiet")
    assert main(shlex.split(cmd + " --json")) == 0
    doc = json.loads(capsys.readouterr().out)
    want = xpusim.train(system="dgx-h100", devices=4, **KW).as_dict()
    assert {k: v for k, v in doc.items() if k != "wall_s"} == {
        k: v for k, v in json.loads(json.dumps(want)).items() if k != "wall_s"
    }
    assert doc["devices"] == 4 and doc["system_devices"] == 8
    assert main(shlex.split(cmd)) == 0
    assert "llama-3-8b on 4 of the 8 devices of dgx-h100 (0-3)" in capsys.readouterr().out
    assert main(shlex.split(cmd.replace("--devices 4", "--nodes 2 --devices 8 --per-node 4"))) == 0
    out = capsys.readouterr().out
    assert "on 8 of the 16 devices of dgx-h100 (the first 4 of each node)" in out
