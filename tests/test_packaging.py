"""Packaging: every subpackage is listed (an unlisted one silently drops out of the wheel), and
drivers/simulators/flows install under ppu.* only."""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAPPING = {"ppu": "ppu", "drivers": "ppu.drivers", "simulators": "ppu.simulators", "flows": "ppu.flows"}


def test_every_package_folder_is_listed_in_pyproject():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    found = set()
    for folder, name in MAPPING.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([name, *rel.parts]) if rel.parts else name)
    assert found - listed == set(), f"add these to [tool.setuptools] packages: {sorted(found - listed)}"


def test_generic_names_are_not_top_level():
    for generic in ("drivers", "simulators", "flows"):
        spec = importlib.util.find_spec(generic)
        assert spec is None or ROOT.as_posix() in str(spec.origin), f"{generic} leaked into site-packages"
        assert importlib.util.find_spec(f"ppu.{generic}") is not None
