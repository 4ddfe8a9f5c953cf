"""The shipped hardware profiles: they load, carry sources, agree with their own arithmetic,
and bad profiles fail with a message naming the field (CLI exit 2)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from xpusim.hwprofiles import list_devices, list_systems, load_device, load_system
from xpusim.hwprofiles.loader import DEVICE_DIR, SYSTEM_DIR, read_toml
from xpusim.sim.cli.main import main
from xpusim.sim.cost.roofline import RooflineModel
from xpusim.sim.errors import ProfileError
from xpusim.sim.ops import gemm

DATA = Path(__file__).parent / "data"
DOCS = Path(__file__).resolve().parent.parent / "docs" / "profiles.md"
DEVICES = list_devices()
SYSTEMS = list_systems()
ASCEND = [n for n in DEVICES if n.startswith("ascend-")]
# Ascend parts with the separated architecture (AIC + 2 AIV per AI core): Huawei's headline
# figure there is Cube + Vector, so it must exceed the Cube-only matrix peak.
SEPARATED = [n for n in ASCEND if n.startswith(("ascend-910b", "ascend-910c"))]


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(args)
    out, err = capsys.readouterr()
    return rc, out, err


# -- everything loads -------------------------------------------------------------------


def test_catalogue_sizes() -> None:
    assert len(DEVICES) >= 20
    assert len(SYSTEMS) >= 10
    for name in ("ascend-910b2", "ascend-910c-die", "h100-sxm5-80gb", "l40", "cpu-host"):
        assert name in DEVICES
    for name in ("atlas-800t-a2", "atlas-800t-a3", "cloudmatrix-384", "dgx-h100", "pcie-l40s"):
        assert name in SYSTEMS


@pytest.mark.parametrize("name", DEVICES)
def test_device_loads_and_is_consistent(name: str) -> None:
    dev = load_device(name)
    assert dev.name == name  # file stem = name, so `load_device(name)` finds it
    assert dev.matrix_peak and dev.vector_peak
    assert all(v > 0 for v in (*dev.matrix_peak.values(), *dev.vector_peak.values()))
    assert dev.hbm_capacity > 0 and dev.hbm_bandwidth > 0
    assert dev.memory[0].name == "hbm"
    assert len({lv.name for lv in dev.memory}) == len(dev.memory)
    assert all(x > 0 for x in dev.matrix_tile)
    assert dev.matrix_cores <= dev.cores <= dev.vector_cores or dev.arch == "nvidia"
    # The matrix unit is the fast path for half-precision work on every device.
    assert dev.peak_for("matrix", "bf16") >= dev.peak_for("vector", "bf16")
    eff = dev.efficiency
    assert 0 < eff.matrix_max <= 1 and 0 < eff.memory_max <= 1 and 0 < eff.vector_max <= 1


@pytest.mark.parametrize("name", SYSTEMS)
def test_system_loads_and_is_consistent(name: str) -> None:
    system = load_system(name)
    assert system.name == name
    assert system.devices_per_node % system.dies_per_package == 0
    assert (system.die_to_die is None) == (system.dies_per_package == 1)
    assert system.intra_link.bandwidth > 0 and system.nic.bandwidth > 0
    assert system.num_devices == system.nodes * system.devices_per_node


# -- every section says where its figures come from ----------------------------------------


def _sections(raw: dict) -> list[tuple[str, dict]]:
    out = []
    for key, value in raw.items():
        if isinstance(value, dict):
            out.append((key, value))
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            out.extend((f"{key}[{i}]", item) for i, item in enumerate(value))
    return out


@pytest.mark.parametrize(
    "path",
    sorted(DEVICE_DIR.glob("*.toml")) + sorted(SYSTEM_DIR.glob("*.toml")),
    ids=lambda p: p.stem,
)
def test_every_section_has_a_source(path: Path) -> None:
    raw = read_toml(path)
    sections = _sections(raw)
    assert sections
    for key, section in sections:
        source = section.get("source", "")
        assert isinstance(source, str) and len(source.strip()) >= 10, f"{path.name}: [{key}] source"


def test_cpu_host_is_marked_as_an_estimate() -> None:
    raw = read_toml(DEVICE_DIR / "cpu-host.toml")
    for key, section in _sections(raw):
        if key.startswith("levels"):
            continue  # cache sizes are read from lscpu, not estimated
        assert "estimate" in section["source"], key


# -- Ascend: Cube-only matrix peak vs Huawei's Cube + Vector headline ----------------------


@pytest.mark.parametrize("name", ASCEND)
def test_ascend_matrix_peak_not_above_marketing(name: str) -> None:
    dev = load_device(name)
    assert dev.marketing_peak, "Ascend profiles keep Huawei's headline figure"
    for dtype, marketing in dev.marketing_peak.items():
        if dtype in dev.matrix_peak:
            assert dev.matrix_peak[dtype] <= marketing
            if name in SEPARATED:
                assert dev.matrix_peak[dtype] < marketing


@pytest.mark.parametrize("name", ["ascend-910b2", "ascend-910b3", "ascend-910c-die", "ascend-910c"])
def test_ascend_marketing_is_cube_plus_vector(name: str) -> None:
    # hardware_specs.md section 0: 376 = 353.9 Cube + 22.1 Vector on 910B2. The published
    # headline is a check on our Cube and Vector figures, not an input to them.
    dev = load_device(name)
    cube_plus_vector = dev.matrix_peak["fp16"] + dev.vector_peak["fp16"]
    assert cube_plus_vector == pytest.approx(dev.marketing_peak["fp16"], rel=0.005)


@pytest.mark.parametrize("name", SEPARATED)
def test_ascend_cube_peak_is_cores_times_clock(name: str) -> None:
    # One Cube does a 16x16x16 fp16 MAC per cycle: 4096 MAC = 8192 FLOP.
    dev = load_device(name)
    expected = dev.matrix_cores * 16 * 16 * 16 * 2 * dev.clock_hz
    assert dev.matrix_peak["fp16"] == pytest.approx(expected, rel=1e-4)
    assert dev.matrix_peak["int8"] == pytest.approx(2 * expected, rel=1e-4)
    assert dev.matrix_tile == (16, 16, 16)
    assert "fp8" not in dev.matrix_peak  # no FP8 before Ascend 950


@pytest.mark.parametrize(
    ("name", "flop_per_clk_per_sm"),
    [
        ("v100-sxm2-32gb", 1024),
        ("a100-sxm4-80gb", 2048),
        ("h100-sxm5-80gb", 4096),
        ("h200-sxm-141gb", 4096),
        ("rtx-4090", 512),
    ],
)
def test_nvidia_tensor_peak_is_sms_times_clock(name: str, flop_per_clk_per_sm: int) -> None:
    # Dense fp16 tensor FLOP per clock per SM (llm.c mfu.h); the datasheet peak must match.
    dev = load_device(name)
    expected = dev.matrix_cores * flop_per_clk_per_sm * dev.clock_hz
    assert dev.matrix_peak["fp16"] == pytest.approx(expected, rel=0.005)


def test_910c_package_is_two_dies() -> None:
    pkg, die = load_device("ascend-910c"), load_device("ascend-910c-die")
    assert pkg.matrix_peak["bf16"] == pytest.approx(2 * die.matrix_peak["bf16"], rel=1e-5)
    assert pkg.hbm_capacity == 2 * die.hbm_capacity
    assert pkg.hbm_bandwidth == 2 * die.hbm_bandwidth
    assert pkg.matrix_cores == 2 * die.matrix_cores


# -- links: one-way figures against the vendor's (usually bidirectional) number ------------

_GBPS = re.compile(r"(\d+(?:\.\d+)?)\s*GB/s")


@pytest.mark.parametrize("name", SYSTEMS)
def test_link_one_way_below_vendor_figure(name: str) -> None:
    raw = read_toml(SYSTEM_DIR / f"{name}.toml")["intra_node"]
    text = raw["vendor_figure"].lower()
    assert "bidirectional" in text or "one way" in text or "unidirectional" in text
    vendor = float(_GBPS.search(raw["vendor_figure"]).group(1))
    system = load_system(name)
    per_device_one_way = system.intra_link.bandwidth
    if system.intra_topology == "full_mesh":
        per_device_one_way *= system.links_per_device
    assert per_device_one_way <= vendor * 1e9


@pytest.mark.parametrize(
    ("name", "bidirectional_gbps"),
    [
        ("atlas-800t-a2", 392),
        ("dgx-v100", 300),
        ("dgx-a100", 600),
        ("hgx-a800", 400),
        ("dgx-h100", 900),
        ("hgx-h800", 400),
        ("hgx-h200", 900),
        ("hgx-h20", 900),
    ],
)
def test_link_one_way_is_half_of_bidirectional(name: str, bidirectional_gbps: float) -> None:
    system = load_system(name)
    one_way = system.intra_link.bandwidth
    if system.intra_topology == "full_mesh":
        one_way *= system.links_per_device
    assert 2 * one_way == pytest.approx(bidirectional_gbps * 1e9)


def test_ascend_a3_systems_use_dies() -> None:
    for name in ("atlas-800t-a3", "cloudmatrix-384"):
        system = load_system(name)
        assert system.device.name == "ascend-910c-die"
        assert system.devices_per_node == 16 and system.dies_per_package == 2
        assert system.die_to_die is not None and system.die_to_die.bandwidth == 224e9
    cm = load_system("cloudmatrix-384")
    assert cm.inter_topology == "supernode"
    assert cm.num_devices == 768  # 384 packages x 2 dies
    # The supernode "NIC" is the die's UB port: the same 196 GB/s as inside a server.
    assert cm.nic.bandwidth == pytest.approx(cm.intra_link.bandwidth)


def test_nodes_override_builds_a_cluster() -> None:
    assert load_system("atlas-800t-a2", nodes=768).num_devices == 6144
    with pytest.raises(ProfileError, match="nodes"):
        load_system("dgx-h100", nodes=0)


# -- malformed profiles -------------------------------------------------------------------


def _b2_text() -> str:
    return (DEVICE_DIR / "ascend-910b2.toml").read_text()


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("bandwidth_gbps = 1600", 'bandwidth_gbps = "fast"', "hbm.bandwidth_gbps"),  # wrong type
        ("capacity_gib = 64\n", "", "hbm.capacity_gib"),  # missing field
        ("bandwidth_gbps = 1600", "bandwidth_gbps = -1600", "hbm.bandwidth_gbps"),  # negative
        ("clock_ghz = 1.8", "clock_ghz = 0", "cores.clock_ghz"),
        ('arch = "davinci"', 'arch = "tpu"', "arch"),
        ("fp16 = 22.118", "fp17 = 22.118", "vector.peak_tflops"),  # unknown dtype
        ("matrix_max = 0.93", "matrix_max = 1.5", "efficiency.matrix_max"),
        ('name = "l0c"', 'name = "l0c"\nsize = 3', "levels.4.size"),  # unknown key
    ],
)
def test_malformed_device_names_the_field(tmp_path: Path, old: str, new: str, field: str) -> None:
    text = _b2_text()
    assert old in text
    path = tmp_path / "bad.toml"
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(ProfileError) as info:
        load_device(str(path))
    message = str(info.value)
    assert f"'{field}" in message
    assert str(path) in message


def test_bad_toml_syntax(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(_b2_text().replace("[hbm]", "[hbm", 1))
    with pytest.raises(ProfileError, match="not valid TOML"):
        load_device(str(path))


def test_missing_file() -> None:
    with pytest.raises(ProfileError, match="not found"):
        load_device("/nonexistent/dir/device.toml")


def test_shipped_broken_profiles_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run_cli(["hw", "show", str(DATA / "broken_device.toml")], capsys)
    assert rc == 2
    assert "hbm.bandwidth_gbps" in err and "fast" in err
    assert "Traceback" not in err
    rc, out, err = run_cli(["hw", "show", str(DATA / "broken_system.toml")], capsys)
    assert rc == 2
    assert "intra_node.link_bandwidth_gbps" in err


def test_unknown_names_suggest_close_ones(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ProfileError, match="h100-sxm5-80gb"):
        load_device("h100-sxm-80gb")
    with pytest.raises(ProfileError, match="dgx-h100"):
        load_system("dgx-h10")
    rc, out, err = run_cli(["hw", "show", "ascend-910b"], capsys)
    assert rc == 2
    assert "ascend-910b2" in err and "Did you mean" in err


# -- calibration overlays -----------------------------------------------------------------


def test_calibration_overlay_replaces_fields(tmp_path: Path) -> None:
    overlay = tmp_path / "h100-cal.toml"
    overlay.write_text(
        'kind = "calibration"\ndevice = "h100-sxm5-80gb"\n'
        "[efficiency]\nmatrix_max = 0.71\nlaunch_overhead_us = 7.0\n"
    )
    base = load_device("h100-sxm5-80gb")
    cal = load_device("h100-sxm5-80gb", calibration=overlay)
    assert cal.efficiency.matrix_max == 0.71
    assert cal.efficiency.launch_overhead_s == pytest.approx(7e-6)
    assert cal.efficiency.memory_max == base.efficiency.memory_max  # untouched fields kept
    assert cal.matrix_peak == base.matrix_peak
    assert load_device(str(overlay)).efficiency.matrix_max == 0.71  # overlay alone names its base
    with pytest.raises(ProfileError, match="device"):
        load_device("a100-sxm4-80gb", calibration=overlay)


# -- CLI ----------------------------------------------------------------------------------


def test_hw_list_json(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run_cli(["hw", "list", "--json"], capsys)
    assert rc == 0
    payload = json.loads(out)
    assert "schema_version" in payload
    assert payload["devices"] == DEVICES and len(payload["devices"]) >= 20
    assert payload["systems"] == SYSTEMS and len(payload["systems"]) >= 10


def test_hw_list_table(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run_cli(["hw", "list"], capsys)
    assert rc == 0
    assert "ascend-910b2" in out and "cloudmatrix-384" in out and "354 TFLOP/s" in out


def test_hw_show_json(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run_cli(["hw", "show", "ascend-910b2", "--json"], capsys)
    assert rc == 0
    payload = json.loads(out)
    assert payload["kind"] == "device"
    profile = payload["profile"]
    # 24 AIC x 4096 MAC x 2 x 1.8 GHz, in SI FLOP/s.
    assert profile["matrix_peak"]["bf16"] == pytest.approx(353.894e12)
    assert profile["marketing_peak"]["fp16"] == pytest.approx(376e12)
    assert profile["hbm_bandwidth"] == pytest.approx(1.6e12)
    assert profile["sources"]["hbm"]


def test_hw_diff_h100_h800_devices(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run_cli(["hw", "diff", "h100-sxm5-80gb", "h800-sxm5-80gb", "--json"], capsys)
    assert rc == 0
    diffs = {d["field"]: d for d in json.loads(out)["differences"]}
    # The export SKU keeps H100's tensor throughput and memory but cuts FP64.
    assert "matrix_peak.fp64" in diffs and "vector_peak.fp64" in diffs
    assert diffs["matrix_peak.fp64"]["b"] < diffs["matrix_peak.fp64"]["a"] / 10
    assert not any(f.startswith(("matrix_peak.bf16", "matrix_peak.fp8", "hbm_")) for f in diffs)


def test_hw_diff_h100_h800_systems(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run_cli(["hw", "diff", "dgx-h100", "hgx-h800", "--json"], capsys)
    assert rc == 0
    diffs = {d["field"]: d for d in json.loads(out)["differences"]}
    # NVLink: 450 GB/s one way on H100, 200 on H800 (900 vs 400 bidirectional).
    assert diffs["intra_link.bandwidth"]["ratio_b_over_a"] == pytest.approx(200 / 450)
    assert "nic.bandwidth" not in diffs  # both 8 x 400G


# -- the profiles drive the cost model sensibly ----------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    name=st.sampled_from(DEVICES),
    m=st.integers(1, 8192),
    n=st.integers(1, 8192),
    k=st.integers(1, 8192),
)
def test_no_gemm_beats_the_roofline(name: str, m: int, n: int, k: int) -> None:
    dev = load_device(name)
    op = gemm("g", m, n, k, dtype="bf16")
    cost = RooflineModel(dev).time(op)
    floor = max(op.flops / dev.peak_for("matrix", "bf16"), op.main_bytes / dev.hbm_bandwidth)
    assert cost.time_s >= floor


# -- docs stay in step with the shipped files ------------------------------------------------


def test_docs_list_every_profile() -> None:
    text = DOCS.read_text()
    for name in DEVICES + SYSTEMS:
        assert f"`{name}`" in text, f"docs/profiles.md does not list {name}"


# -- user files: a cluster by file, a device by path ----------------------------------------


def test_user_cluster_file(tmp_path: Path) -> None:
    # docs/profiles.md "Clusters": a copy of a server file with nodes and oversubscription.
    text = (SYSTEM_DIR / "atlas-800t-a2.toml").read_text()
    text = text.replace('name = "atlas-800t-a2"', 'name = "my-a2-cluster"')
    text = text.replace("nodes = 1", "nodes = 768").replace(
        "oversubscription = 1.0", "oversubscription = 2.0"
    )
    path = tmp_path / "my-a2-cluster.toml"
    path.write_text(text)
    cluster = load_system(str(path))
    assert cluster.num_devices == 6144
    assert cluster.oversubscription == 2.0
    assert load_system(str(path), nodes=2).num_devices == 16  # --nodes still wins


def test_system_with_device_by_relative_path(tmp_path: Path) -> None:
    dev_text = (DEVICE_DIR / "h100-sxm5-80gb.toml").read_text()
    dev_text = dev_text.replace('name = "h100-sxm5-80gb"', 'name = "my-gpu"')
    dev_text = dev_text.replace("bandwidth_gbps = 3350", "bandwidth_gbps = 6700")
    (tmp_path / "my_gpu.toml").write_text(dev_text)
    sys_text = (SYSTEM_DIR / "dgx-h100.toml").read_text()
    sys_text = sys_text.replace('device = "h100-sxm5-80gb"', 'device = "my_gpu.toml"')
    (tmp_path / "my_sys.toml").write_text(sys_text)
    system = load_system(str(tmp_path / "my_sys.toml"))
    assert system.device.name == "my-gpu"
    assert system.device.hbm_bandwidth == 6.7e12


def test_shipped_calibrated_profile_loads_by_name():
    from xpusim.hwprofiles.loader import list_calibrated

    assert "cpu-host-calibrated" in list_calibrated()
    calibrated = load_device("cpu-host-calibrated")
    base = load_device("cpu-host")
    assert calibrated.name == base.name
    assert calibrated.calibration.endswith("cpu-host-calibrated.toml")
    assert base.calibration == ""
    assert calibrated.efficiency != base.efficiency
