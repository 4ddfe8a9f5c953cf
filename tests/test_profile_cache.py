"""Profiles loaded once per file stamp (``hwprofiles.loader._plain_device``,
``_system_file``): the same value as a fresh load, and a changed file is read afresh."""

from __future__ import annotations

import os
from pathlib import Path

from xpusim.hwprofiles import loader


def test_cached_device_and_system_equal_fresh_loads() -> None:
    for name in ("h100-sxm5-80gb", "ascend-910b2"):
        path = loader._resolve(name, loader.DEVICE_DIR, "device", list)
        fresh = loader._load_device(path, name, None)
        assert loader.load_device(name) == fresh
        assert loader.load_device(name) is loader.load_device(name)
    system = loader.load_system("dgx-h100", nodes=4)
    assert system.nodes == 4
    assert loader.load_system("dgx-h100") == loader.load_system("dgx-h100", nodes=None)


def test_changed_profile_file_is_read_again(tmp_path: Path) -> None:
    source = loader._resolve("h100-sxm5-80gb", loader.DEVICE_DIR, "device", list)
    path = tmp_path / "dev.toml"
    text = source.read_text()
    path.write_text(text)
    first = loader.load_device(str(path))
    renamed = text.replace(f'name = "{first.name}"', 'name = "edited-device"', 1)
    assert renamed != text
    path.write_text(renamed)
    st = path.stat()  # a new stamp even within the file system's time resolution
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert loader.load_device(str(path)).name == "edited-device"
