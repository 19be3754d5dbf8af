"""`ppu ioc` as its own process for a test module: started on a lab file, ready once a PV connects."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def serving_iocs(lab_file: Path, probe_pv: str) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``ppu ioc -c lab_file`` until the block ends; ``probe_pv`` is one of its PVs (the last served)."""
    from ophyd import EpicsSignalRO

    log_path = lab_file.with_suffix(".ioc.log")
    with log_path.open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "ppu.cli", "ioc", "-c", str(lab_file)], stdout=log,
                                stderr=subprocess.STDOUT, env=os.environ.copy())
        try:
            for _ in range(300):
                if proc.poll() is not None:
                    raise RuntimeError(f"ppu ioc exited {proc.returncode}: {log_path.read_text()}")
                if "IOCs of lab" in log_path.read_text():
                    EpicsSignalRO(probe_pv, name="probe").wait_for_connection(timeout=20)
                    break
                time.sleep(0.1)
            else:
                raise RuntimeError(f"IOC did not start: {log_path.read_text()}")
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
