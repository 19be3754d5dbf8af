"""The layering holds: import-linter's contracts, and the core names no domain (issue 14)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = ROOT / "tests" / "lint_imports.py"

# The MOF pack's vocabulary: none of it may appear in the core.
VOCABULARY = ["co2", "uptake", "purity", "anneal", "xrd", "mof", "composition", "recipe", "band_gap",
              "synthes", "sorption", "isotherm", "diffract", "linker", "metal", "phase"]
# The core, as issue 14 lists it: models, capability registry, scheduler, orchestrator, store,
# protocol, events, autonomy, host, transport, backends' base, CLI and dashboard frames.
CORE = [
    *[p for p in (ROOT / "ppu").glob("*.py") if p.name not in {"demo.py"}],  # demo: the MOF demo's entry
    *(ROOT / "ppu" / "transport").glob("*.py"),
    *(ROOT / "ppu" / "backends").glob("*.py"),
    *(ROOT / "ppu" / "dashboard").glob("*.py"),
    *(ROOT / "ppu" / "dashboard" / "static").glob("*"),
    ROOT / "ppu" / "digital" / "torch_backend.py",
    ROOT / "ppu" / "digital" / "batcher.py",
    # the generic campaign machinery (issue 15): declared problems, replay worlds, generators, the loop
    *(ROOT / "ppu" / "campaign" / name for name in ("problem.py", "replay.py", "generators.py", "loop.py",
                                                       "replay_report.py", "workflow.py")),
]
ALLOWED = "vocabulary-check: allowed"  # a line that must name an old field (reading old journals)


def _hits(files: list[Path]) -> list[str]:
    pattern = re.compile("|".join(VOCABULARY), re.IGNORECASE)
    out = []
    for f in files:
        for n, line in enumerate(f.read_text().splitlines(), 1):
            if pattern.search(line) and ALLOWED not in line:
                out.append(f"{f.relative_to(ROOT) if f.is_relative_to(ROOT) else f}:{n}: {line.strip()}")
    return out


def test_the_core_names_no_domain() -> None:
    hits = _hits(CORE)
    assert hits == [], "the core names the MOF pack's vocabulary:\n" + "\n".join(hits)


def test_the_vocabulary_check_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "orchestrator.py"
    bad.write_text('recipe = inputs["recipe"]\nok = 1\n')
    assert len(_hits([bad])) == 1


def test_import_contracts_hold() -> None:
    out = subprocess.run([sys.executable, str(LINT)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout or "broken" not in out.stdout.split("Contracts:")[-1]


@pytest.mark.parametrize(("where", "line", "contract"), [
    ("drivers/mof/xrd.py", "import ppu.simulators.mof.world  # noqa: F401", "drivers never import simulators"),
    ("ppu/orchestrator/door.py", "import ppu.drivers.mof.analysis  # noqa: F401", "the core never imports a pack"),
    ("ppu/scheduler/placement.py", "import sqlite3\nimport sqlalchemy  # noqa: F401",
     "the scheduler is a pure state machine"),
])
def test_a_broken_layer_is_caught(tmp_path: Path, where: str, line: str, contract: str) -> None:
    """The contracts are not vacuous: one bad import in a copy of the tree breaks the named one."""
    for folder in ("ppu", "drivers", "simulators", "flows"):
        subprocess.run(["cp", "-r", str(ROOT / folder), str(tmp_path / folder)], check=True)
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    target = tmp_path / where
    target.write_text(target.read_text() + "\n" + line + "\n")
    out = subprocess.run([sys.executable, str(LINT), "--root", str(tmp_path)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode != 0
    broken = out.stdout.split("Broken contracts")[-1]
    assert contract in broken.replace("\n", " "), out.stdout
