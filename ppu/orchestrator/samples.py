"""The samples results make and use, from what each capability declares (never from field names).

A succeeded task whose capability declares a sample output made that sample; every task whose
inputs name samples measured them (and used them up, when its capability says so). The processes
that made a sample successfully are remembered: the approval policy lets them run again.
"""

from __future__ import annotations

from typing import Any

from ppu import capabilities
from ppu.autonomy import approval_key, process_key
from ppu.events import Step
from ppu.models import Location, ResultStatus, Sample, SampleState
from ppu.store import Store


def made_sample(cap: capabilities.Capability, task_id: str, inputs: dict[str, Any], campaign: str | None,
                outputs: dict[str, Any], backend: str | None) -> Sample | None:
    """The sample a succeeded task made, from what its capability declares (never from field names)."""
    if cap.sample_output is None or not outputs.get(cap.sample_output):
        return None
    loc = (outputs.get(cap.location_output) if cap.location_output else None) or {}
    return Sample(id=str(outputs[cap.sample_output]), made_by=task_id, made_with=cap.approval_view(inputs) or {},
                  campaign=campaign, parents=cap.parents(inputs),
                  location=Location(device=str(loc.get("device", backend or "?")),
                                    slot=(str(loc["slot"]) if loc.get("slot") is not None else None)),
                  state=SampleState.available)


class SampleBook:
    """What journaled steps change in the sample registry, and the processes known to make samples."""

    def __init__(self, store: Store):
        self._store = store
        self.known_processes: set[str] = set()  # approval keys of what made a sample successfully

    def load(self) -> None:
        """Read the known processes back from the store's samples (at start)."""
        for s in self._store.list_samples():
            if s.made_with and s.made_by:
                self.known_processes.add(approval_key(s.made_with) or "")

    def changes(self, steps: list[Step]) -> list[Sample]:
        """The samples that ``steps``' succeeded results make or measure, to journal with them."""
        out: list[Sample] = []
        for step in steps:
            for r in step.results:
                rec = step.records.get(r.task_id)
                if rec is None or r.status is not ResultStatus.succeeded:
                    continue
                cap = capabilities.get(rec.capability)  # what the capability declares, never field names
                sample = made_sample(cap, rec.id, rec.inputs, rec.campaign, r.outputs, rec.backend)
                if sample is not None:
                    self.known_processes.add(process_key(rec.capability, rec.inputs) or "")
                    out.append(sample)
                for sid in cap.samples_used(rec.inputs):
                    s = next((x for x in out if x.id == sid), None) or self._store.get_sample(sid)
                    if s is None:
                        continue
                    changed = False
                    if rec.id not in s.measurements:
                        s.measurements, changed = [*s.measurements, rec.id], True
                    if cap.uses_up_sample and s.state is not SampleState.consumed:
                        s.state, changed = SampleState.consumed, True
                    if changed and s not in out:
                        out.append(s)
        return out
