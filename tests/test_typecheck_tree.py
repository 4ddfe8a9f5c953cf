"""The symlink tree mypy checks (.typecheck/xpusim, see [tool.mypy] in pyproject.toml) must
mirror the installed package, or a module would silently drop out of the type check."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TREE = ROOT / ".typecheck" / "xpusim"


def test_tree_links_the_code_folders() -> None:
    for folder in ("sim", "hwprofiles"):
        link = TREE / folder
        assert link.is_symlink() and link.resolve() == (ROOT / folder).resolve(), link


def test_tree_links_every_module_of_the_public_package() -> None:
    wanted = {p.name for p in (ROOT / "xpusim").glob("*.py")}
    linked = {p.name for p in TREE.glob("*.py") if p.is_symlink()}
    assert linked == wanted, f"add or remove symlinks in {TREE}: {sorted(wanted ^ linked)}"
    for name in linked:
        assert (TREE / name).resolve() == (ROOT / "xpusim" / name).resolve(), name
