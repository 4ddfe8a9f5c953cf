"""Find, read, validate and convert hardware profiles.

A profile is named (``ascend-910b2`` → ``hwprofiles/devices/ascend-910b2.toml``) or
given by path. A calibration overlay (``kind = "calibration"``) names its base
device and replaces some of its fields; it can be passed wherever a device name is
accepted, or applied with ``calibration=PATH``.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Callable
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from xpusim.hwprofiles.errors import ProfileError
from xpusim.hwprofiles.schema import DeviceFile, SystemFile
from xpusim.hwprofiles.spec import Device, System

ROOT = Path(__file__).resolve().parent
DEVICE_DIR = ROOT / "devices"
SYSTEM_DIR = ROOT / "systems"
CALIBRATED_DIR = ROOT / "calibrated"
# Keys of an overlay that describe the calibration rather than replace profile fields.
_OVERLAY_META = {"kind", "device", "provenance", "fit", "schema_version"}
# Profiles kept loaded per process (``_plain_device``, ``_system_file``): the shipped
# profiles number ~80; a user's own files come on top.
PROFILES_KEPT = 256


def list_devices() -> list[str]:
    return sorted(p.stem for p in DEVICE_DIR.glob("*.toml"))


def list_calibrated() -> list[str]:
    """Shipped calibration overlays, loadable by name like a device (``cpu-host-calibrated``)."""
    return sorted(p.stem for p in CALIBRATED_DIR.glob("*.toml"))


def list_systems() -> list[str]:
    return sorted(p.stem for p in SYSTEM_DIR.glob("*.toml"))


def read_toml(path: Path, label: str = "profile") -> dict[str, Any]:
    # The one input reader (sim/inputs.py, standard library only): size cap, UTF-8,
    # nesting depth, directories and permissions, each a ProfileError naming the file.
    from xpusim.sim.inputs import read_toml as read_checked

    if Path(path).is_dir():
        raise ProfileError(
            f"{path}: is a directory, not a profile; pass a .toml file or a profile name "
            "(run 'xpusim hw list')"
        )
    raw = read_checked(path, label, error=ProfileError)
    _require_finite(raw, path)
    return raw


def _require_finite(raw: dict[str, Any], path: Path) -> None:
    """TOML allows inf and nan; no rate, capacity or latency of real hardware is either
    (an inf bandwidth prices every transfer at 0 s, a nan poisons every sum)."""
    stack: list[tuple[str, Any]] = [("", raw)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, dict):
            stack.extend((f"{where}.{k}".lstrip("."), v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((f"{where}[{i}]", v) for i, v in enumerate(value))
        elif isinstance(value, float) and not math.isfinite(value):
            raise ProfileError(
                f"{path}: field {where} = {value}: must be a finite number; give the "
                "figure from the datasheet (in the field's unit)"
            )


def _resolve(name_or_path: str, folder: Path, kind: str,
             names: Callable[[], list[str]]) -> Path:
    """The profile file of a name or path; ``names`` lists the known names for the
    error's suggestions (called only then: listing the folder costs a directory scan
    per profile loaded, and ``xpusim validate`` loads ~6,000)."""
    candidate = Path(name_or_path)
    if candidate.suffix == ".toml" or candidate.exists():
        if not candidate.exists():
            raise ProfileError(f"{candidate}: {kind} profile file not found")
        if candidate.is_dir():
            raise ProfileError(
                f"{candidate}: is a directory, not a {kind} profile; pass a .toml file or a "
                f"{kind} name (run 'xpusim hw list')"
            )
        return candidate
    path = folder / f"{name_or_path}.toml"
    if path.exists():
        return path
    if folder == DEVICE_DIR and (CALIBRATED_DIR / f"{name_or_path}.toml").exists():
        return CALIBRATED_DIR / f"{name_or_path}.toml"  # a shipped calibrated profile
    close = difflib.get_close_matches(name_or_path, names(), n=5, cutoff=0.4)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ProfileError(
        f"unknown {kind} '{name_or_path}'.{hint} "
        f"Run 'xpusim hw list' for all {kind}s, or pass a path to a .toml profile."
    )


def _explain(path: Path, exc: ValidationError) -> ProfileError:
    lines = [f"{path}: invalid profile"]
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        got = err.get("input")
        got_text = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  field '{where}': {err['msg']}{got_text}")
    lines.append("  See docs/profiles.md for every field, its unit and an example.")
    return ProfileError("\n".join(lines))


def _deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _stamp(path: Path) -> tuple[str, str, int, int]:
    """What a loaded profile depends on: the path as given (messages and ``path`` fields
    name it), where it points now, and the file's modification time and size. A
    profile loaded under the same stamp is the same value (the loaders are pure
    functions of the file's content), so a changed file is read afresh."""
    st = path.stat()
    return str(path), os.path.abspath(path), st.st_mtime_ns, st.st_size


@lru_cache(maxsize=PROFILES_KEPT)
def _plain_device(stamp: tuple[str, str, int, int]) -> Device:
    """``load_device`` of a file without a calibration argument, by ``_stamp``: ``xpusim
    validate --published`` loads thousands of profiles of a few dozen files, each read,
    validated and converted afresh before (0.23 ms a device, 0.38 ms a system with its
    device, 2026-12-07). A ``Device`` is frozen, so one object serves every caller."""
    return _load_device(Path(stamp[0]), stamp[0], None)


@lru_cache(maxsize=PROFILES_KEPT)
def _system_file(stamp: tuple[str, str, int, int]) -> SystemFile:
    """The validated system file at ``_stamp`` (frozen), read once per stamp."""
    path = Path(stamp[0])
    try:
        return SystemFile.model_validate(read_toml(path))
    except ValidationError as exc:
        raise _explain(path, exc) from None


def load_device(name_or_path: str, calibration: str | Path | None = None) -> Device:
    """Load a device profile (by name or path), optionally with a calibration overlay."""
    path = _resolve(name_or_path, DEVICE_DIR, "device",
                    lambda: list_devices() + list_calibrated())
    if calibration is None:
        device = _plain_device(_stamp(path))
        if not device.calibration:
            return device
        # An overlay named as a device: its base device's file may have changed since.
    return _load_device(path, name_or_path, calibration)


def _load_device(path: Path, name_or_path: str, calibration: str | Path | None) -> Device:
    raw = read_toml(path)
    if raw.get("kind") == "calibration":
        if calibration is not None:
            raise ProfileError(f"{path}: is a calibration overlay; pass the base device with it")
        base = raw.get("device")
        if not isinstance(base, str) or not base.strip():
            raise ProfileError(
                f"{path}: calibration overlay lacks field 'device' (the base device it "
                'calibrates, e.g. device = "ascend-910b2"); add it, or pass the base device '
                "and give this file with --calibration"
            )
        return load_device(base, calibration=path)
    threads = 1
    if calibration is not None:
        cal_path = Path(calibration)
        overlay = read_toml(cal_path, "--calibration")  # the flag every command takes it by
        check_overlay_header(overlay, cal_path)
        base_name = raw.get("name")
        if overlay.get("device") not in (base_name, name_or_path):
            raise ProfileError(
                f"{cal_path}: field 'device' is '{overlay.get('device')}' but the base device is "
                f"'{base_name}'; calibrate that device or pass the matching base"
            )
        raw = _deep_merge(raw, {k: v for k, v in overlay.items() if k not in _OVERLAY_META})
        path = cal_path
        threads = _overlay_threads(overlay, cal_path)
    try:
        device = DeviceFile.model_validate(raw).to_spec(path=str(path))
    except ValidationError as exc:
        raise _explain(path, exc) from None
    if calibration is None:
        return device
    return replace(device, calibration=str(calibration), threads=threads)


def check_overlay_header(overlay: dict[str, Any], path: Path) -> None:
    """The fields that say what an overlay is (``kind``, ``device``, ``schema_version``,
    ``[provenance]``), checked before its figures: a missing ``device`` used to read as
    "field 'device' is 'None'", a ``provenance = 5`` failed with a TypeError."""
    if overlay.get("kind") != "calibration":
        raise ProfileError(f"{path}: field 'kind' must be \"calibration\" in an overlay")
    device = overlay.get("device")
    if not isinstance(device, str) or not device.strip():
        raise ProfileError(
            f"{path}: field 'device' must name the base device the overlay calibrates "
            f'(e.g. device = "ascend-910b2"), got {device!r}; add it'
        )
    version = overlay.get("schema_version", 1)
    if version != 1 or isinstance(version, bool):  # the one overlay format (docs/profiles.md)
        raise ProfileError(
            f"{path}: field 'schema_version' must be 1 (the overlay format this xpusim "
            f"reads), got {version!r}; fix it or drop the field"
        )
    if not isinstance(overlay.get("provenance", {}), dict):
        raise ProfileError(
            f"{path}: field 'provenance' must be a [provenance] table, got "
            f"{overlay['provenance']!r}; write the overlay with 'xpusim calibrate'"
        )


def _overlay_threads(overlay: dict[str, Any], path: Path) -> int:
    """The torch threads an overlay's timings ran at (``[provenance] threads``): the
    calibrated CPU is priced at them (sim/cost/conv_path.py). Absent or 0 (a measurements
    CSV without a threads column records 0): 1, the calibration's default."""
    provenance = overlay.get("provenance")
    value = provenance.get("threads", 0) if isinstance(provenance, dict) else 0
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ProfileError(
            f"{path}: field 'provenance.threads' must be an integer >= 0 (the torch threads "
            f"the calibration ran at; 0 = not recorded), got {value!r}; fix or remove it"
        )
    return max(value, 1)


def load_system(
    name_or_path: str,
    nodes: int | None = None,
    device: str | None = None,
    calibration: str | Path | None = None,
) -> System:
    """Load a system profile; ``nodes`` sets the cluster size (N of these servers)."""
    path = _resolve(name_or_path, SYSTEM_DIR, "system", list_systems)
    spec = _system_file(_stamp(path))
    dev_name = device or spec.device
    dev_path = Path(dev_name)
    if not dev_path.is_absolute() and (path.parent / dev_name).suffix == ".toml":
        dev_name = str(path.parent / dev_name)
    dev = load_device(dev_name, calibration=calibration)
    system = spec.to_spec(dev, path=str(path))
    if nodes is not None:
        if nodes < 1:
            raise ProfileError(f"--nodes must be >= 1, got {nodes}")
        system = replace(system, nodes=nodes)
    return system


def load_raw(name_or_path: str) -> tuple[str, dict[str, Any], Path]:
    """Return (kind, raw TOML, path) for a device or system name/path; used by `hw show`."""
    candidate = Path(name_or_path)
    if candidate.suffix == ".toml" or candidate.exists():
        raw = read_toml(_resolve(name_or_path, DEVICE_DIR, "device", list))
        return str(raw.get("kind", "device")), raw, candidate
    if (DEVICE_DIR / f"{name_or_path}.toml").exists():
        path = DEVICE_DIR / f"{name_or_path}.toml"
        return "device", read_toml(path), path
    if (SYSTEM_DIR / f"{name_or_path}.toml").exists():
        path = SYSTEM_DIR / f"{name_or_path}.toml"
        return "system", read_toml(path), path
    if (CALIBRATED_DIR / f"{name_or_path}.toml").exists():
        # `hw list` offers shipped calibrated profiles "as a device name"; show them as one.
        path = CALIBRATED_DIR / f"{name_or_path}.toml"
        return "device", read_toml(path), path
    close = difflib.get_close_matches(name_or_path, list_devices() + list_systems(), n=5, cutoff=0.4)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ProfileError(f"unknown device or system '{name_or_path}'.{hint} Run 'xpusim hw list'.")
