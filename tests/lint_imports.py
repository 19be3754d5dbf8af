"""Run the import-linter contracts of pyproject.toml on the layout PPU installs as.

drivers/, simulators/ and flows/ install as ppu.drivers, ppu.simulators and ppu.flows through a
package-dir mapping, which import-linter cannot see through (it walks the ``ppu`` folder). So this
copies the Python files into a temporary tree shaped like the installed package and lints that.
Exit status 0: every contract kept. ``--root DIR`` lints another checkout (tests use it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

MAPPING = {"ppu": "ppu", "drivers": "ppu/drivers", "simulators": "ppu/simulators", "flows": "ppu/flows"}


def installed_view(root: Path, dest: Path) -> Path:
    for src, rel in MAPPING.items():
        for f in (root / src).rglob("*.py"):
            if ".venv" in f.parts or "__pycache__" in f.parts:
                continue
            target = dest / rel / f.relative_to(root / src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, target)
    shutil.copyfile(root / "pyproject.toml", dest / "pyproject.toml")
    return dest


def lint(root: Path) -> int:
    from importlinter.cli import lint_imports

    with tempfile.TemporaryDirectory(prefix="ppu-lint-") as tmp:
        view = installed_view(root, Path(tmp))
        for name in [m for m in sys.modules if m == "ppu" or m.startswith("ppu.")]:
            del sys.modules[name]  # the copy, not the installed package, is what gets linted
        sys.path.insert(0, str(view))
        cwd = os.getcwd()
        os.chdir(view)  # import-linter puts the working directory first on sys.path
        try:
            return int(lint_imports(config_filename=str(view / "pyproject.toml"), no_cache=True))
        finally:
            os.chdir(cwd)
            sys.path.remove(str(view))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    sys.exit(lint(ap.parse_args().root))
