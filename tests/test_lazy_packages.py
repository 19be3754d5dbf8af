"""Loading packs imports no instrument stack; the packs' packages load their names on first use."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _fresh(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_loading_every_pack_imports_no_instrument_stack() -> None:
    """Every orchestrator and worker process loads the packs: that must not cost ophyd, bluesky or scipy."""
    heavy = ("ophyd", "bluesky", "scipy", "caproto", "torch", "ppu.drivers.mof.xrd", "ppu.simulators.mof.devices",
             "ppu.drivers.flowchem.devices")
    got = _fresh("import sys, ppu.packs as p\n"
                 "r = p.load()\n"
                 f"print(sorted(m for m in {heavy!r} if m in sys.modules))\n"
                 "print(sorted(r.packs))")
    loaded, packs = got.splitlines()
    assert loaded == "[]"
    assert "'mof'" in packs and "'flowchem'" in packs


@pytest.mark.parametrize("order", ["submodule first", "name first"])
def test_a_public_name_wins_over_its_submodule_of_the_same_name(order: str) -> None:
    """``ppu.drivers.mof.transfer`` is the plan (as the eager package had it), whichever is imported first."""
    first = ("import ppu.drivers.mof.transfer" if order == "submodule first"
             else "from ppu.drivers.mof import transfer")
    got = _fresh(f"{first}\n"
                 "import inspect, ppu.drivers.mof as m, ppu.drivers.mof.transfer\n"
                 "from ppu.drivers.mof import transfer\n"
                 "print(inspect.isfunction(m.transfer), transfer is m.transfer, 'transfer' in dir(m))")
    assert got == "True True True"


def test_an_unknown_name_is_an_attribute_error_naming_the_package() -> None:
    import ppu.simulators.mof as sims

    with pytest.raises(AttributeError, match=r"'ppu\.simulators\.mof' has no attribute 'Nope'"):
        sims.Nope  # noqa: B018
    with pytest.raises(ImportError):
        exec("from ppu.drivers.flowchem import Nope", {})
