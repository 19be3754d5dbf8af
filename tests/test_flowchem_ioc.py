"""The flow-chemistry lab in real mode: its simulated twins served as EPICS IOCs (`ppu ioc`, a separate
process) and driven over Channel Access by the EPICS builds of its devices, through the same backends,
plans and chromatogram analysis. A refused or stale acquisition fails the attempt, saying why."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conformance import no_progress
from ioc_helpers import serving_iocs

from ppu.backends.base import TaskRun
from ppu.backends.physical import PhysicalBackend
from ppu.backends.registry import build_backend
from ppu.models import ResultStatus

SCALE = 2e4  # lab seconds per wall second
RECIPE: dict[str, Any] = {"ligand": "SPhos", "temperature_c": 85.0, "residence_time_min": 8.0,
                          "equivalents_b": 1.6, "concentration_m": 0.4}


def _entry(tmp: Path, type_: str, name: str, prefix: str, **kw: Any) -> dict[str, Any]:
    return {"type": type_, "name": name, "simulated": False, "epics_prefix": prefix, "time_scale": SCALE,
            "lab": "flow-ioc", "run_dir": str(tmp / "run"), "world": {"seed": 3}, "seed": 1,
            "acquire_timeout_s": 30.0, **kw}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from ppu import packs

    packs.load(["flowchem"])
    tmp = tmp_path_factory.mktemp("flow-ioc")
    backends = [_entry(tmp, "flow_reactor", "reactor", "F1:REACT:"),
                _entry(tmp, "hplc", "hplc", "F1:HPLC:"),
                _entry(tmp, "hplc", "hplc_stale", "F1:HPLCS:", ioc_fault="stale")]
    path = tmp / "lab.yaml"
    path.write_text(yaml.safe_dump({"name": "flow-ioc", "packs": ["flowchem"], "run_dir": str(tmp / "run"),
                                    "backends": backends}))
    with serving_iocs(path, "F1:HPLCS:Acquire"):
        yield {b["name"]: b for b in backends}


async def _run(entry: dict[str, Any], runs: list[TaskRun]) -> list[Any]:
    backend = build_backend(entry)
    assert isinstance(backend, PhysicalBackend) and not backend.cfg.simulated
    await backend.start()
    try:
        return await backend.run(runs, no_progress)
    finally:
        await backend.close()


def run(coro: Any, timeout: float = 90.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def _fraction(lab: dict[str, Any], task_id: str = "r1") -> str:
    [res] = run(_run(lab["reactor"], [TaskRun(task_id=task_id, attempt=1, capability="react.flow",
                                               inputs={"recipe": RECIPE})]))
    assert res.status == ResultStatus.succeeded, res.error
    assert res.provenance.device == "F1:REACT:"
    return str(res.outputs["sample_id"])


def test_a_reaction_then_its_hplc_over_channel_access(lab: dict[str, Any]) -> None:
    sample = _fraction(lab)
    [res] = run(_run(lab["hplc"], [TaskRun(task_id="h1", attempt=1, capability="measure.hplc",
                                           inputs={"sample_id": sample})]))
    assert res.status == ResultStatus.succeeded, res.error
    assert 0.0 < res.outputs["product_yield"] <= 1.0
    assert res.provenance.device == "F1:HPLC:"
    docs = [json.loads(line) for p in str(res.provenance.documents).split(";")
            for line in Path(p).read_text().splitlines()]  # JSON although strings came as CHAR waveforms
    keys = {k: v for name, doc in docs if name == "descriptor" for k, v in doc["data_keys"].items()}
    assert keys["hplc_absorbance"]["units"] == "mAU"  # EGU served by the IOC, read by the EPICS build
    assert keys["hplc_absorbance"]["shape"][0] > 1000  # the whole chromatogram crossed the wire


def test_a_refused_injection_fails_the_attempt_with_the_reason(lab: dict[str, Any]) -> None:
    [res] = run(_run(lab["hplc"], [TaskRun(task_id="h2", attempt=1, capability="measure.hplc",
                                           inputs={"sample_id": "never-made"})]))
    assert res.status == ResultStatus.failed and res.interrupted and not res.retryable
    assert "never-made" in str(res.error)


def test_stale_chromatograms_are_a_failure_never_the_previous_data(lab: dict[str, Any]) -> None:
    sample = _fraction(lab, "r2")
    [res] = run(_run(lab["hplc_stale"], [TaskRun(task_id="h3", attempt=1, capability="measure.hplc",
                                                 inputs={"sample_id": sample})]))
    assert res.status == ResultStatus.failed and res.interrupted
    assert "stale" in str(res.error)


@pytest.mark.parametrize("lab_file", sorted((Path(__file__).parent.parent / "labs").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_shipped_lab_file_loads_its_packs_and_builds_its_backends(lab_file: Path) -> None:
    from ppu.config import load_lab

    lab = load_lab(lab_file)
    lab.load_packs()
    built = [build_backend(b) for b in lab.backends]
    assert [b.name for b in built] == [b["name"] for b in lab.backends]
