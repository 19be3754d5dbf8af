"""The settings our flows give Prefect when they are first to load it, and that a user's own win."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PROBE = ("import ppu.flows.campaign; "
         "from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as s; print(s.value())")


def test_the_ephemeral_server_gets_time_to_start(tmp_path: Path):
    """Prefect's own 20 s was missed on a loaded machine and `make demo` failed before it began. (A user's
    own PREFECT_* value wins: the flow module only sets what is unset, like every setting there.)"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PPU_RUN_DIR"] = str(tmp_path)
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "180"
