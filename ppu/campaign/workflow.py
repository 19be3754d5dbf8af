"""A declared per-candidate workflow: which capabilities run in which order, what feeds what, and gates.

    workflow:
      steps:
        - {name: make, capability: make.sample, inputs: {spec: $candidate}, cost: 4.5, frees_slot: true}
        - {name: check, capability: measure.quick, inputs: {sample_id: $make.sample_id}, cost: 0.2}
        - name: full
          capability: measure.full
          inputs: {sample_id: $make.sample_id}
          when: quality >= 0.9          # gate: skip the costly step unless the cheap one passed
          cost: 2.5
      outputs: {quality: check.score, value: full.value}   # problem output <- step.field

An input is a literal, ``$candidate`` (the candidate as the campaign's pack encodes it),
``$candidate.NAME`` (one of its fields) or ``$STEP.FIELD`` (an output of an earlier step). A gate is
``REF OP NUMBER`` with REF an output name from ``outputs`` or ``STEP.FIELD`` and OP one of
``>= <= > < == !=``. A step whose gate fails, or that needs an output of a step that did not
succeed, is skipped. ``on_error`` turns a failure into a result (``{match: clogged, outputs: {yield:
0}}``: a run that clogged made nothing). ``frees_slot``: when this step ends, the loop may start the next candidate
(the bottleneck instrument is free); default the first step. ``cost`` is summed per candidate.
No IO: :func:`run_workflow` gets the function that runs one step.
"""

from __future__ import annotations

import logging
import operator
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field, field_validator, model_validator

from ppu.models import Strict, Task, TaskState
from ppu.protocol import WaitTimeout

_GATE = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(>=|<=|==|!=|>|<)\s*(-?[\d.]+(?:[eE][-+]?\d+)?)\s*$")
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq, "!=": operator.ne}
_NAME = r"^[A-Za-z_][\w\-]*$"


class Gate(Strict):
    ref: str
    op: str
    value: float

    def passes(self, y: Any) -> bool:
        try:
            return y is not None and _OPS[self.op](float(y), self.value)
        except (TypeError, ValueError):
            return False

    def __str__(self) -> str:
        return f"{self.ref} {self.op} {self.value:g}"


class ErrorOutcome(Strict):
    """A failure that is a result: a step whose error contains ``match`` gave ``outputs`` (e.g. a run that
    clogged made nothing: yield 0). Anything else that fails stays a failure, left out of the data."""

    match: str = Field(min_length=1, description="text the step's error contains, e.g. 'clogged'")
    outputs: dict[str, float] = Field(min_length=1, description="output name (of the workflow's outputs) -> the "
                                      "value this outcome means")


class Step(Strict):
    name: str = Field(pattern=_NAME, description="the step's name; later steps refer to its outputs as $NAME.FIELD")
    capability: str = Field(min_length=1, description="the capability a backend runs for this step")
    inputs: dict[str, Any] = Field(default_factory=dict, description="input name -> literal, $candidate, "
                                   "$candidate.NAME or $STEP.FIELD")
    when: Gate | None = Field(None, description="gate, e.g. 'quality >= 0.9': the step runs only if it holds")
    cost: float = Field(0.0, ge=0, description="what one run of this step costs (hours, money: one unit per file)")
    frees_slot: bool | None = Field(None, description="the next candidate may start when this step ends "
                                    "(default: the first step)")
    attempts: int = Field(1, ge=1, le=10, description="tries before the step counts as failed (1: physical, "
                          "never re-run)")
    on_error: list[ErrorOutcome] = Field(default_factory=list, description="failures that are outcomes, e.g. "
                                         "{match: clogged, outputs: {yield: 0}}")

    @field_validator("when", mode="before")
    @classmethod
    def _gate(cls, v: Any) -> Any:
        if isinstance(v, str):
            m = _GATE.match(v)
            if m is None:
                raise ValueError(f"gate {v!r} must read 'NAME OP NUMBER', e.g. 'quality >= 0.9' "
                                 "(OP: >= <= > < == !=)")
            return {"ref": m.group(1), "op": m.group(2), "value": float(m.group(3))}
        return v


def _refs(value: Any) -> list[str]:
    if isinstance(value, str) and value.startswith("$"):
        return [value[1:]]
    if isinstance(value, dict):
        return [r for v in value.values() for r in _refs(v)]
    if isinstance(value, list):
        return [r for v in value for r in _refs(v)]
    return []


class Workflow(Strict):
    """See the module docstring."""

    steps: list[Step] = Field(min_length=1, description="in the order they run for each candidate")
    outputs: dict[str, str] = Field(default_factory=dict, description="problem output name -> STEP.FIELD")

    @model_validator(mode="after")
    def _wiring(self) -> Workflow:
        seen: set[str] = set()
        for k, step in enumerate(self.steps):
            if step.name in seen:
                raise ValueError(f"steps.{k}.name: {step.name!r} is used twice")
            for name, raw in step.inputs.items():
                for ref in _refs(raw):
                    head = ref.split(".", 1)[0]
                    if head != "candidate" and head not in seen:
                        raise ValueError(f"steps.{k}.inputs.{name}: ${ref} refers to {head!r}, which is not an "
                                         f"earlier step (earlier: {sorted(seen) or 'none'}) nor $candidate")
                    if head != "candidate" and "." not in ref:
                        raise ValueError(f"steps.{k}.inputs.{name}: ${ref} needs a field, e.g. ${head}.sample_id")
            if step.when is not None and step.when.ref not in self.outputs:
                head = step.when.ref.split(".", 1)[0]
                if head not in seen or "." not in step.when.ref:
                    raise ValueError(f"steps.{k}.when: {step.when.ref!r} is neither an output name "
                                     f"({sorted(self.outputs)}) nor STEP.FIELD of an earlier step")
            for j, oe in enumerate(step.on_error):
                unknown = sorted(set(oe.outputs) - set(self.outputs))
                if unknown:
                    raise ValueError(f"steps.{k}.on_error.{j}.outputs: {unknown} are not among the workflow's "
                                     f"outputs {sorted(self.outputs)}")
            seen.add(step.name)
        for out, ref in self.outputs.items():
            if ref.split(".", 1)[0] not in seen or "." not in ref:
                raise ValueError(f"outputs.{out}: {ref!r} must be STEP.FIELD of a declared step")
        if not any(s.frees_slot for s in self.steps):
            self.steps[0].__dict__["frees_slot"] = True
        return self

    def output_of(self, results: dict[str, dict[str, Any]], ref: str) -> Any:
        ref = self.outputs.get(ref, ref)
        step, _, fld = ref.partition(".")
        return results.get(step, {}).get(fld)


@dataclass
class WorkflowRun:
    """What one candidate's workflow did."""

    states: dict[str, str] = field(default_factory=dict)  # step -> succeeded / failed / ... / skipped: why
    results: dict[str, dict[str, Any]] = field(default_factory=dict)  # step -> its outputs
    outputs: dict[str, Any] = field(default_factory=dict)  # problem output name -> value (None: not measured)
    errors: dict[str, str] = field(default_factory=dict)  # step -> why it did not succeed
    cost: float = 0.0
    outcome: str | None = None  # the ``on_error`` match that made a failure a result

    def ok(self, step: str) -> bool:
        return self.states.get(step) == "succeeded"


def _resolve(value: Any, candidate: dict[str, Any], results: dict[str, dict[str, Any]]) -> Any:
    if isinstance(value, str) and value.startswith("$"):
        head, _, fld = value[1:].partition(".")
        src = candidate if head == "candidate" else results[head]
        return src if not fld else src[fld]
    if isinstance(value, dict):
        return {k: _resolve(v, candidate, results) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, candidate, results) for v in value]
    return value


def resolve_inputs(inputs: dict[str, Any], candidate: dict[str, Any],
                   results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A step's declared inputs with ``$candidate...`` and ``$STEP.FIELD`` filled in."""
    out: dict[str, Any] = _resolve(inputs, candidate, results)
    return out


RunStep = Callable[[Step, dict[str, Any], Callable[[], None] | None], Awaitable[tuple[str, dict[str, Any]]]]


async def run_workflow(wf: Workflow, candidate: dict[str, Any], run_step: RunStep,
                       free_slot: Callable[[], None] | None = None) -> WorkflowRun:
    """Run ``wf`` for one candidate. ``run_step(step, inputs, on_review)`` returns (state, outputs);
    ``free_slot`` is called once, when the ``frees_slot`` step ends (or is skipped, or waits for a person)."""
    run = WorkflowRun()
    freed = False

    def release() -> None:
        nonlocal freed
        if not freed and free_slot is not None:
            freed = True
            free_slot()

    try:
        for step in wf.steps:
            needs = {r.split(".", 1)[0] for raw in step.inputs.values() for r in _refs(raw)} - {"candidate"}
            missing = sorted(n for n in needs if not run.ok(n))
            if missing:
                run.states[step.name] = f"skipped: {', '.join(missing)} did not succeed"
            elif step.when is not None and not step.when.passes(wf.output_of(run.results, step.when.ref)):
                run.states[step.name] = f"skipped: gate {step.when} not met"
            else:
                inputs = _resolve(step.inputs, candidate, run.results)
                state, out = await run_step(step, inputs, release if step.frees_slot else None)
                run.states[step.name] = state
                run.cost += step.cost
                if state == "succeeded":
                    run.results[step.name] = dict(out)
                else:
                    run.errors[step.name] = str(out.get("error") or state)
            if step.frees_slot:
                release()
    finally:
        release()
    run.outputs = {name: wf.output_of(run.results, name) for name in wf.outputs}
    for step in wf.steps:
        err = run.errors.get(step.name)
        hit = next((oe for oe in step.on_error if err is not None and oe.match in err), None)
        if hit is not None and run.outcome is None:
            run.outcome = hit.match
            run.outputs.update({k: v for k, v in hit.outputs.items() if run.outputs.get(k) is None})
    return run


async def wait_through_review(client: Any, task_id: str, capability: str, poll_s: float,
                              on_review: Callable[[], None] | None = None) -> Task:
    """Wait for one task to end. An interrupted physical task waits for a person (a campaign never
    re-runs it): say so once (``on_review``, and the log, with what to do), and keep waiting for the
    decision."""
    told = False
    while True:
        try:
            [task] = await client.wait([task_id], timeout=poll_s)
            return task  # type: ignore[no-any-return]
        except WaitTimeout:
            if not told and (await client.task(task_id)).state is TaskState.needs_review:
                told = True
                logging.getLogger(__name__).warning(
                    "%s (%s) was interrupted and waits for a person: ppu review %s", task_id, capability, task_id)
                if on_review is not None:
                    on_review()
