"""``xpusim train --devices N``: a job on the first N devices of a system.

Placement is one contiguous block (rank r on device r, ``sim.parallel.job_devices``), so
the hand checks are identities: N devices of a larger system see the same links as a
system of exactly those devices, and a group's path shows which links it crosses."""

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
from xpusim.sim.parallel import Layout, ParallelPlan, job_devices

import xpusim

KW = dict(model="llama-3-8b", mbs=1, gbs=16, seq=4096, recompute="selective", dtype="bf16")


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
    assert job_devices(plan, system.num_devices) == n
    dp_group = Layout(plan).group(0, ("dp",))
    assert dp_group[-1] == 126 and {"nic_tx", "nic_rx"} <= _link_kinds(system, dp_group)
    assert _link_kinds(system, Layout(plan).group(70, ("tp",))) == {"up", "down"}


def test_job_devices():
    assert job_devices(ParallelPlan(), 16) == 16  # dp unset: the whole system
    assert job_devices(ParallelPlan(tp=2, dp=2), 16) == 4
    with pytest.raises(InputError, match="needs tp\\*cp\\*dp\\*pp = 2\\*1\\*16\\*1 = 32"):
        job_devices(ParallelPlan(tp=2, dp=16), 16)
    with pytest.raises(InputError, match="starts at device 0"):
        job_devices(ParallelPlan(dp=2, first_device=4), 16)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (dict(devices=0), "devices must be an integer >= 1"),
        (dict(devices="4"), "devices must be an integer >= 1"),
        (dict(devices=9), "--devices 9 exceeds the 8 devices .* pass --nodes 2"),
        (dict(devices=4, dp=8), "--devices 4 != tp\\*cp\\*dp\\*pp = 1\\*1\\*8\\*1 = 8"),
        (dict(devices=6, tp=4), "--devices 6 is not a multiple of tp\\*cp\\*pp = 4"),
        (dict(devices=72, nodes=1), "--devices 72 exceeds .* pass --nodes 9"),
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
    from_file = xpusim.train(plan=str(path), recompute="selective")
    assert from_file.devices == 4
    assert from_file.step_time_s == xpusim.train(system="dgx-h100", devices=4, **KW).step_time_s
    path.write_text('devices = "four"\n[plan]\nmbs = 1\n')
    with pytest.raises(InputError, match="plan.toml: devices must be an integer"):
        xpusim.train(plan=str(path), model="llama-3-8b")


def test_cli(capsys):
    cmd = ("train --model llama-3-8b --system dgx-h100 --devices 4 --mbs 1 --gbs 16 "
           "--seq 4096 --recompute selective --quiet")
    assert main(shlex.split(cmd + " --json")) == 0
    doc = json.loads(capsys.readouterr().out)
    want = xpusim.train(system="dgx-h100", devices=4, **KW).as_dict()
    assert {k: v for k, v in doc.items() if k != "wall_s"} == {
        k: v for k, v in json.loads(json.dumps(want)).items() if k != "wall_s"
    }
    assert doc["devices"] == 4 and doc["system_devices"] == 8
    assert main(shlex.split(cmd)) == 0
    assert "llama-3-8b on 4 of the 8 devices of dgx-h100 (0-3)" in capsys.readouterr().out
