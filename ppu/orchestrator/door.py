"""The door: everything a submission is checked against before any of it is accepted.

A spec becomes a :class:`~ppu.models.Task` only once its capability, inputs, samples, pinned
backend, columnar block and safe limits pass, with the approval policy's verdict; a submission is
refused as a whole when any of its tasks would be (a duplicate or reused id, an unknown dependency).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable

from ppu import capabilities
from ppu.autonomy import approval_reason
from ppu.config import AutonomyConfig, OrchestratorConfig
from ppu.errors import NotAllowed, SafeLimitError, UnknownBackendError, UnknownTaskError, ValidationFailed
from ppu.models import ApprovalState, BackendSpec, SampleState, Task, TaskSpec, limit_violations, new_id
from ppu.scheduler import Scheduler
from ppu.store import Store


def block_output_columns(cap: capabilities.Capability) -> list[str]:
    """The output columns every block result of ``cap`` carries at least: its row outputs that are required
    floats (a served model's decoder answers a block with such columns, ``mean`` and ``std`` by default)."""
    return [name for name, f in cap.output_model.model_fields.items() if f.is_required() and f.annotation is float]


class Door:
    """Checks submissions against the lab as it is now (its backends, samples, tasks and autonomy)."""

    def __init__(self, sched: Scheduler, store: Store, cfg: OrchestratorConfig, specs: dict[str, BackendSpec],
                 known_processes: set[str], autonomy: Callable[[], AutonomyConfig], clock: Callable[[], float]):
        self._sched = sched
        self._store = store
        self._cfg = cfg
        self._specs = specs  # the registered backends' specs, as the orchestrator keeps them
        self._known_processes = known_processes
        self._autonomy = autonomy
        self._clock = clock

    def checked(self, specs: list[TaskSpec], actor: str, key: str | None,
                stored: bool = True) -> list[tuple[Task, str | None]]:
        """Every spec as a task, with why it needs approval (or None); all or none."""
        checked = [self.validate(s, actor, key, stored=stored) for s in specs]
        ids = [t.id for t, _ in checked]
        if len(set(ids)) != len(ids):
            raise NotAllowed("duplicate task ids in one submission", field="id")
        self._check_ids(ids, [t for t, _ in checked])
        return checked

    def validate(self, spec: TaskSpec, actor: str | None = None, key: str | None = None, *,
                 stored: bool = True) -> tuple[Task, str | None]:
        """Everything checked at the door; returns the task and why it needs approval (or None).

        ``actor`` and ``key`` (the submitter's CURVE public key) are recorded on the task. ``stored``:
        a columnar task's rows are in the artifact store already (False: checking before storing them)."""
        cap = capabilities.get(spec.capability)
        if spec.block is not None:  # a columnar task: its rows were checked (dtype, shape) at the door
            if cap.action.value != "repeatable":
                raise ValidationFailed(f"{spec.capability} is a physical ({cap.action.value}) capability: it takes "
                                       "no columnar blocks", field="block", hint="submit one task per sample")
            if spec.inputs:
                raise ValidationFailed("a columnar task's rows are in its block; leave inputs empty",
                                       field="inputs")
            if stored and not spec.block.sha256:
                raise ValidationFailed("the block's rows are not stored", field="block",
                                       hint="submit blocks through the client's submit_block or screen")
            self._check_block_outputs(cap, spec.block.rows)
        inputs = {} if spec.block is not None else capabilities.validate_inputs(spec.capability, spec.inputs)
        used = cap.samples_used(inputs)
        sample_id = spec.sample_id or (used[0] if used else None)
        for name in cap.sample_inputs:  # every sample the capability declares it works on must be known
            ids = cap.samples_used({name: inputs.get(name)})
            if not ids:
                raise ValidationFailed(f"{spec.capability} needs a sample id in inputs.{name}",
                                       field=f"inputs.{name}", hint="ppu samples lists the known samples")
            for sid in ids:
                s = self._store.get_sample(sid)
                if s is None:
                    raise ValidationFailed(f"sample {sid!r} is not in the sample registry",
                                           field=f"inputs.{name}", hint="ppu samples lists the known samples")
                if s.state is SampleState.consumed:
                    raise ValidationFailed(f"sample {sid} is {s.state.value} and cannot be scheduled",
                                           field=f"inputs.{name}")
        offering = [s for s in self._specs.values() if s.offer(spec.capability)]
        if spec.pin_backend is not None:
            pinned = self._specs.get(spec.pin_backend)
            if pinned is None:
                raise UnknownBackendError(f"cannot pin to unknown backend {spec.pin_backend!r}",
                                          field="pin_backend", hint="ppu status lists the backends")
            if not pinned.offer(spec.capability):
                raise NotAllowed(f"{spec.pin_backend} does not offer {spec.capability}", field="pin_backend")
            offering = [pinned]
        if spec.block is not None and offering and not any(s.columnar for s in offering):
            raise ValidationFailed(f"no backend that offers {spec.capability} runs columnar blocks "
                                   f"({', '.join(sorted(s.name for s in offering))} take one row per task)",
                                   field="block", hint=f"submit {spec.capability} row by row, or serve it with "
                                   "a backend type that runs blocks, such as torch or ray")
        limited = [s for s in offering if s.safe_limits]
        if limited and len(limited) == len(offering):
            problems = {s.name: limit_violations(s.safe_limits, inputs) for s in limited}
            if all(problems.values()):
                first = next(iter(problems.values()))[0]
                raise SafeLimitError(f"outside the safe limits of every backend that offers "
                                     f"{spec.capability}: {first}", field="inputs." + first.split(":")[0],
                                     hint="change the setpoint or the backend's safe_limits in the lab config")
        reason = approval_reason(spec.capability, cap.action, inputs, offering, self._autonomy(),
                                 self._known_processes)
        task = Task(id=spec.id or new_id(), capability=spec.capability, inputs=inputs, action=cap.action,
                    priority=spec.priority, campaign=spec.campaign, depends_on=spec.depends_on,
                    deadline=spec.deadline, pin_backend=spec.pin_backend, min_fidelity=spec.min_fidelity,
                    max_attempts=spec.max_attempts if cap.action.value == "repeatable" else 1,
                    sample_id=sample_id, submitted_at=self._clock(), submitted_by=actor, submitter_key=key,
                    block=spec.block,
                    approval=ApprovalState.waiting if reason else ApprovalState.not_required)
        return task, reason

    def _check_block_outputs(self, cap: capabilities.Capability, rows: int) -> None:
        """Refuse a block whose result could not travel back: its output columns come as one result message's
        binary frames, bounded by ``max_blob_bytes`` like the block's rows. Counted as the least any block of
        the capability answers with: a float64 column per required float output (``mean``, ``std``)."""
        names = block_output_columns(cap)
        limit = self._cfg.max_blob_bytes
        size = rows * 8 * len(names)
        if size <= limit:
            return
        fit = limit // (8 * len(names))
        raise ValidationFailed(
            f"a block of {rows} rows of {cap.name} answers with at least {size} bytes of output columns "
            f"({', '.join(names)}: 8 bytes a row each), above the orchestrator's limit of {limit} bytes "
            "(orchestrator.max_blob_bytes): its result could not be sent back", field="block.rows",
            hint=(f"pass block_rows={fit} or fewer" if fit else "submit it row by row")
            + " to screen / submit_block, or raise orchestrator.max_blob_bytes in the lab file")

    def recall(self, ids: Iterable[str]) -> None:
        """The scheduler keeps only the newest ended tasks (``done_kept``): once it let older ones go, the
        ids it does not know are looked up in the store, so that a duplicate id is refused and an old
        dependency found as they were when the scheduler knew every task."""
        if self._sched.forgot:
            unknown = list(dict.fromkeys(i for i in ids if self._sched.state_of(i) is None))
            if unknown:
                self._sched.recall(self._store.task_states(unknown))

    def _check_ids(self, ids: list[str], tasks: list[Task]) -> None:
        """All or none: what the scheduler would refuse half-way through a submission, refused first."""
        self.recall(itertools.chain(ids, (d for t in tasks for d in t.depends_on)))  # read only if needed
        earlier: set[str] = set()
        for t in tasks:
            if self._sched.state_of(t.id) is not None:
                raise NotAllowed(f"task id {t.id!r} already exists", field="id", hint="leave id empty for a new one")
            for d in t.depends_on:
                if d not in earlier and self._sched.state_of(d) is None:
                    raise UnknownTaskError(f"dependency {d!r} is not a known task (or comes later in the "
                                           "submission)", field="depends_on")
            earlier.add(t.id)
