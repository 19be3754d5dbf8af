"""Packs and capability declarations: the registry starts empty, a lab picks its packs, and the core
reads what a capability declares (samples made, used, used up; approval inputs), never field names."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import Field
from transport_helpers import lab_config

from ppu import capabilities, packs
from ppu.backends.base import Backend, ProgressFn, TaskRun
from ppu.capabilities import Capability
from ppu.errors import ConfigError, PPUError, UnknownCapabilityError
from ppu.models import ActionClass, BackendKind, CapabilityOffer, Result, SampleState, Strict, TaskState
from ppu.transport.lab import LabThread


@pytest.fixture(autouse=True)
def every_pack_after() -> Iterator[None]:
    yield
    packs.load()  # the next test sees every installed pack again


def test_the_registry_is_empty_at_import() -> None:
    code = "import ppu.capabilities as c, ppu.orchestrator; print(len(c.registered()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0"


def test_a_lab_file_picks_its_packs() -> None:
    reg = packs.load(["mof"])
    assert reg.names == ["core", "mof"]
    assert "synthesize" in capabilities.known() and capabilities.get("synthesize").pack == "mof"
    assert "synthesis_robot" in reg.backend_types()
    packs.load([])  # only the core pack: the MOF capabilities are gone, with a hint that says why
    with pytest.raises(UnknownCapabilityError) as e:
        capabilities.get("synthesize")
    assert "packs:" in (e.value.hint or "")
    assert set(capabilities.known()) == {"echo", "bluesky.plan"}  # the core pack's own


def test_an_unknown_pack_is_a_clear_error() -> None:
    with pytest.raises(ConfigError) as e:
        packs.load(["no-such-pack"])
    assert e.value.field == "packs" and "no-such-pack" in e.value.message
    assert "mof" in (e.value.hint or "")


def test_a_declaration_must_name_real_fields() -> None:
    class In(Strict):
        x: float

    class Out(Strict):
        y: float

    with pytest.raises(ValueError, match="'sample' is not an input"):
        Capability(name="user.bad", input_model=In, output_model=Out, action=ActionClass.once,
                   sample_inputs=["sample"])
    with pytest.raises(ValueError, match="'sid' is not an output"):
        Capability(name="user.bad", input_model=In, output_model=Out, action=ActionClass.once, sample_output="sid")


# ---- a lab with its own words for samples -------------------------------------------------------

class Forge(Strict):
    process: dict[str, float] = Field(description="the part a person approves")
    batch: str = "b1"


class Forged(Strict):
    specimen_no: str
    rack: dict[str, Any] = Field(default_factory=dict)


class Cut(Strict):
    specimen: str
    depth_mm: float = 1.0


class CutOut(Strict):
    area_mm2: float


MAKE = Capability(name="user.forge", input_model=Forge, output_model=Forged, action=ActionClass.once,
                  sample_output="specimen_no", location_output="rack", approval_inputs=["process"],
                  summary=["process"])
CUT = Capability(name="user.cut", input_model=Cut, output_model=CutOut, action=ActionClass.once,
                 sample_inputs=["specimen"], uses_up_sample=True)


class SmithyBackend(Backend):
    """A test backend in another lab's words: it forges specimens and cuts them."""

    kind = BackendKind.physical

    def default_offers(self) -> list[CapabilityOffer]:
        return [CapabilityOffer(name="user.forge", duration_s=1.0), CapabilityOffer(name="user.cut", duration_s=1.0)]

    async def run(self, batch: list[TaskRun], progress: ProgressFn) -> list[Result]:
        started = time.time()
        out = []
        for r in batch:
            if r.capability == "user.forge":
                out.append(self.ok(r, {"specimen_no": f"sp-{r.task_id}", "rack": {"device": "rack-A", "slot": 3}},
                                   started))
            else:
                out.append(self.ok(r, {"area_mm2": 2.0 * r.inputs["depth_mm"]}, started))
        return out


def test_sample_semantics_come_from_the_declarations(tmp_path: Path) -> None:
    for cap in (MAKE, CUT):
        capabilities.register(cap)
    lab = lab_config(tmp_path, backends=[{"type": "test_packs:SmithyBackend", "name": "smithy"}],
                     autonomy={"default": "supervised"})
    try:
        with LabThread(lab) as lt, lt.client() as c:
            [first] = c.submit([{"capability": "user.forge", "inputs": {"process": {"T": 900.0}}}])
            [waiting] = c.approvals()
            assert waiting["task_id"] == first and "process outside the set" in waiting["reason"]
            c.approve(first)
            [forged] = c.wait([first], timeout=30)
            assert forged.state is TaskState.succeeded
            sid = f"sp-{first}"
            [sample] = c.samples()
            assert sample.id == sid and sample.made_with == {"process": {"T": 900.0}}
            assert sample.location is not None and (sample.location.device, sample.location.slot) == ("rack-A", "3")

            [again] = c.submit([{"capability": "user.forge", "inputs": {"process": {"T": 900.0}}}])
            assert [a["task_id"] for a in c.approvals()] == []  # the same process ran before: no approval
            c.wait([again], timeout=30)

            with pytest.raises(PPUError, match="not in the sample registry"):
                c.submit([{"capability": "user.cut", "inputs": {"specimen": "never-made"}}])
            [cut] = c.submit([{"capability": "user.cut", "inputs": {"specimen": sid}}])
            assert c.approvals() == []  # it declares no approval inputs, costs nothing, has no limits
            assert c.wait([cut], timeout=30)[0].state is TaskState.succeeded
            used = next(s for s in c.samples() if s.id == sid)
            assert used.state is SampleState.consumed and cut in used.measurements
            with pytest.raises(PPUError, match="consumed"):
                c.submit([{"capability": "user.cut", "inputs": {"specimen": sid}}])
    finally:
        for cap in (MAKE, CUT):
            capabilities.unregister(cap.name)


def test_a_campaign_file_declaring_its_lab_finds_the_declared_loop(tmp_path: Path) -> None:
    """`ppu campaign run` and the Prefect flow both ask runner_for which loop runs a file."""
    from ppu.campaign.declared_report import run_lab_campaign_cli, runner_for

    root = Path(__file__).parent.parent
    assert runner_for(root / "campaigns/demo.yaml") is None  # a world and no variables: the default loop
    assert runner_for(root / "campaigns/replay-demo-table.yaml") is None  # a replay
    assert runner_for(root / "campaigns/flowchem.yaml") is run_lab_campaign_cli
    assert runner_for(tmp_path / "missing.yaml") is None  # the default loader names what is wrong
    f = tmp_path / "c.yaml"
    f.write_text("name: x\nlab: [unclosed\n")
    with pytest.raises(ConfigError, match="cannot be read"):
        runner_for(f)


def test_a_misspelt_name_in_a_module_path_says_so_not_that_the_pack_is_missing() -> None:
    with pytest.raises(ConfigError) as err:
        packs.resolve("ppu.digital.nets:mpl", "factory")
    assert "ppu.digital.nets has no 'mpl'" in err.value.message and "'mlp'" in (err.value.hint or "")
    assert "installed" not in (err.value.hint or "")
    with pytest.raises(ConfigError) as err:
        packs.resolve("ppu.digital.netz:mlp", "factory")
    assert "No module named 'ppu.digital.netz'" in err.value.message and "installed" in (err.value.hint or "")
