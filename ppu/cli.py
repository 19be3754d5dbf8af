"""``ppu``: the command line. Errors say what was wrong and what to do; exit codes are non-zero on error.

Client commands act on the lab named by ``--config`` (default ``$PPU_CONFIG`` or ``./lab.yaml``).
Every one talks to an orchestrator through the same client. When none answers at the lab's
address, a private orchestrator on the lab's store answers instead (offline mode), only while no
orchestrator holds the store's writer lease; otherwise the command fails and changes nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from rich.markup import escape
from rich.table import Table

from ppu import capabilities
from ppu.cli_output import (
    console,
    err,
    json_doc,
    json_lines,
    listing,
    progress,
    remark,
)
from ppu.config import LabConfig, check_address, load_lab
from ppu.errors import ConfigError, PPUError
from ppu.models import TaskSpec

if TYPE_CHECKING:
    from ppu.models import Task

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="PPU: one scheduler for digital and physical compute.")
T = TypeVar("T")

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="lab YAML (default $PPU_CONFIG or ./lab.yaml)")]
ConnectOpt = Annotated[str | None, typer.Option(
    "--connect", help="address of a running orchestrator (default: the lab's orchestrator.bind)")]
PlainOpt = Annotated[bool, typer.Option(
    "--plain", help="one tab-separated line per row, no header (what a pipe gets anyway)")]
JsonLinesOpt = Annotated[bool, typer.Option(
    "--json", help="one JSON object per row, one per line (JSON lines), and nothing else on stdout; "
    "`jq -s` makes them an array")]
JsonDocOpt = Annotated[bool, typer.Option("--json", help="one JSON document on stdout, and nothing else")]
# CLI-READY


def _lab(config: Path | None, *, backends: bool = False) -> LabConfig:
    """The lab named by --config, else $PPU_CONFIG, else ./lab.yaml; defaults only when none is named
    and ./lab.yaml does not exist. ``backends``: also validate every backend entry against its type
    (the commands that host or serve the lab; it imports the backend classes)."""
    env = os.environ.get("PPU_CONFIG")
    path = config or (Path(env) if env else Path("lab.yaml"))
    named = config is not None or bool(env)
    try:
        lab = load_lab(path) if path.exists() or named else LabConfig()  # named + missing: error
        lab.load_packs()  # the lab's packs, so that this command knows what its orchestrator knows
        if backends:
            lab.check_backends()
        return lab
    except PPUError as exc:
        if named and config is None and not exc.field:
            exc.hint = f"$PPU_CONFIG names {env}; point it at a lab YAML file or unset it"
        _fail(exc)
        raise AssertionError("unreachable") from None


def _fail(exc: PPUError) -> None:
    err.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False)  # escape: text like [postgres]
    if exc.field:
        err.print(f"  field: {escape(exc.field)}", highlight=False)
    if exc.hint:
        err.print(f"  [yellow]what to do:[/] {escape(exc.hint)}", highlight=False)
    raise typer.Exit(2)


def _address_option(value: str | None, option: str) -> None:
    """A --bind/--connect given on the command line is a ZMQ address, or the command ends with why."""
    if value is not None:
        try:
            check_address(value, option)
        except PPUError as exc:
            _fail(exc)


def _run(fn: Callable[[], Awaitable[T]]) -> T:
    try:
        return asyncio.run(fn())  # type: ignore[arg-type]
    except PPUError as exc:
        _fail(exc)
        raise AssertionError("unreachable") from None


def _act(lab: LabConfig, connect: str | None, remote: Callable[[Any], T]) -> T:
    """Run ``remote(client)`` against the lab's orchestrator, through a :class:`PPUClient`.

    When none answers at the lab's address, the same call goes to a private orchestrator on the
    lab's store (offline mode), which works only while no orchestrator holds the store's writer
    lease: a refused or unanswered request is an error, never a local write.
    """
    from ppu.errors import StoreHeld
    from ppu.transport.client import PPUClient
    from ppu.transport.serve import cli_actor, connect_client, private_orchestrator

    try:
        if connect is not None:
            check_address(connect, "--connect")
        client = connect_client(lab, connect)
    except PPUError as exc:
        _fail(exc)
    address = connect or lab.orchestrator.bind
    try:
        if client is not None:
            with client:
                return remote(client)
        if connect is not None:
            _fail(_nobody_at(connect, lab))
        lab.check_store()  # this process opens the store: a mistake in its location names store.url or run_dir
        with private_orchestrator(lab) as private, PPUClient(private, actor=cli_actor()) as offline:
            return remote(offline)
    except StoreHeld as exc:
        curve = " and that your key ($PPU_KEY) is listed in security.clients or security.admins" \
            if lab.security.curve else ""
        _fail(PPUError(f"an orchestrator holds the store but does not answer at {address}: {exc.message}",
                       hint=f"check that it runs and listens at {address} (or pass --connect ADDRESS){curve}; "
                            "nothing was changed"))
    except PPUError as exc:
        _fail(exc)
    raise AssertionError("unreachable")


def _nobody_at(connect: str, lab: LabConfig) -> PPUError:
    """No orchestrator answers at --connect: say the address tried, and where the lab file says one is."""
    from ppu.transport.serve import nobody_listens

    bind = lab.orchestrator.bind
    if connect == bind:
        hint = (f"check the address and port, or start one there: `ppu orchestrator --config lab.yaml` "
                f"(the lab file's orchestrator.bind is {bind})")
    elif bind.startswith("tcp://") and "*" not in bind and not nobody_listens(bind):
        hint = (f"check the address and port: something listens at {bind}, the lab file's orchestrator.bind; "
                "leave out --connect to use it")
    else:
        hint = (f"check the address and port (the lab file's orchestrator.bind is {bind}; without --connect "
                "that is used), or start one there: `ppu orchestrator --config lab.yaml --bind ADDRESS`")
    return PPUError(f"no orchestrator answers at {connect} (--connect)", field="--connect", hint=hint)


def _parse_json(text: str, what: str) -> Any:
    if text.startswith("@"):
        p = Path(text[1:])
        hint = f"pass {what} as JSON or @path/to/file.json"
        if not p.is_file():
            raise PPUError(f"{what} file {p} " + ("is a folder" if p.is_dir() else "does not exist"),
                           field=what, hint=hint)
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise PPUError(f"{what} file {p} cannot be read as text: {exc}", field=what, hint=hint) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise PPUError(f"{what} is not valid JSON: {exc}", field=what,
                       hint="example: --input '{\"x\": 1}'") from None


def _option_error(exc: ValidationError, options: dict[str, str]) -> PPUError:
    """A model's validation error as a CLI error naming the option the bad value came from."""
    e = exc.errors()[0]
    name = str(e["loc"][0]) if e["loc"] else ""
    where = options.get(name, name)
    rest = ".".join(str(x) for x in e["loc"][1:])
    return PPUError(f"{where}{'.' + rest if rest else ''}: {e['msg'].removeprefix('Value error, ')}", field=where,
                    hint="see --help for what each option takes")


def _writable(folder: Path, option: str) -> None:
    """Fail now, naming ``option``, when ``folder`` cannot be made or written (before any work starts)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".ppu-write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        _fail(PPUError(f"cannot write the folder {folder}: {exc.strerror}", field=option,
                       hint=f"pass {option} a folder you can write"))


# ---- output: a table for a person at a terminal; one line per row, or JSON, for a pipe ---------------

SHOWN_RUNNING = 10  # running tasks `ppu status` lists one by one; the others are counted in groups


def _one_format(plain: bool, json_out: bool) -> None:
    if plain and json_out:
        _fail(PPUError("--plain and --json each choose how rows are printed: give one",
                       field="--json", hint="--plain: tab-separated lines; --json: JSON lines"))


@app.command()
def status(config: ConfigOpt = None, json_out: JsonDocOpt = False, connect: ConnectOpt = None) -> None:
    """Backends, running tasks, queue depth per capability, utilisation.

    Running tasks are counted by backend and capability; the first 10 are listed (held ones, ones
    reporting progress, physical ones, then the oldest). --json: the orchestrator's status as one
    JSON document (its ``running`` list is cut at 200; ``queues`` counts them all).
    """
    lab = _lab(config)
    if json_out:
        json_doc(_act(lab, connect, lambda c: c.status()))
        return
    _print_status(_act(lab, connect, lambda c: c.status()))


def _running_total(st: dict[str, Any]) -> int:
    """Running tasks, all of them: the orchestrator lists a few (``running``) and counts them all (``queues``)."""
    counted = sum(states.get("running", 0) for states in st.get("queues", {}).values())
    return max(counted, len(st.get("running") or []))


def _print_status(st: dict[str, Any]) -> None:
    t = Table(title="backends")
    for col in ("name", "kind", "state", "slots", "used", "utilisation", "capabilities"):
        t.add_column(col)
    for b in st["backends"]:
        t.add_row(b["name"], b["kind"], b["state"] + (" (held)" if b.get("held") else ""), str(b["slots"]),
                  str(b["used"]), f"{b.get('utilisation', 0):.0%}", ", ".join(b["capabilities"]))
    console.print(t)
    _print_running(st)
    q = Table(title="queues (live tasks by state)")
    q.add_column("capability")
    q.add_column("states")
    for cap, states in sorted(st["queues"].items()):
        q.add_row(cap, ", ".join(f"{k}={v}" for k, v in sorted(states.items())))
    console.print(q)
    counted = st.get("tasks") or {}  # every task the store holds, each in its live state
    console.print("tasks: " + (", ".join(f"{k}={v}" for k, v in sorted(counted.items())) or "none"),
                  highlight=False)
    if st.get("counters"):
        console.print("counters: " + ", ".join(f"{k}={v}" for k, v in sorted(st["counters"].items())))


def _print_running(st: dict[str, Any]) -> None:
    """Running tasks in a bounded number of lines: counted by backend and capability (the orchestrator
    counts them all), then the first SHOWN_RUNNING of them (held ones, ones with a progress message,
    physical ones first; then the oldest), then how many more there are and how to list them."""
    rows: list[dict[str, Any]] = st.get("running") or []
    total = _running_total(st)
    if not total:
        return
    if total > SHOWN_RUNNING:
        g = Table(title=f"running ({total})")
        for col in ("backend", "capability", "tasks"):
            g.add_column(col, justify="right" if col == "tasks" else "left")
        groups = [((gr["backend"], gr["capability"]), gr["running"]) for gr in st.get("running_groups") or []]
        for (backend, cap), n in groups[:SHOWN_RUNNING]:
            g.add_row(backend, cap, str(n))
        if len(groups) > SHOWN_RUNNING:
            rest = groups[SHOWN_RUNNING:]
            g.add_row(f"… {len(rest)} more", "", str(sum(n for _, n in rest)))
        console.print(g)
    first = rows[:SHOWN_RUNNING]  # in the orchestrator's order: the ones a person looks for first
    r = Table(title="running" if total <= SHOWN_RUNNING else f"running: the first {len(first)}")
    for col in ("task", "capability", "backend", "plan"):
        r.add_column(col, overflow="fold")
    for row in first:
        last = (row.get("progress") or {}).get("message") or "running"
        if row.get("held"):
            last += " (lab stopped: this backend takes nothing new)"
        r.add_row(row["task_id"], row["capability"], row.get("backend") or "", escape(last))
    console.print(r)
    if total > len(first):
        console.print(f"… and {total - len(first)} more: ppu tasks --state running --limit {total}", highlight=False)


TASK_COLUMNS = (("id", 0), ("capability", 0), ("state", 0), ("prio", 0), ("attempts", 0), ("backend", 0),
                ("campaign", 0), ("by", 0), ("error", 200))
TASK_OPTIONAL = ("by", "prio", "campaign", "attempts", "backend")  # left out first at a narrow terminal


def _task_cells(t: Task) -> tuple[str, ...]:
    return (t.id, t.capability, t.state.value, str(t.priority), str(t.attempts), t.backend or "",
            t.campaign or "", t.submitted_by or "", t.error or "")


@app.command()
def tasks(
    config: ConfigOpt = None,
    state: Annotated[str | None, typer.Option(help="only tasks in this state")] = None,
    campaign: Annotated[str | None, typer.Option(help="only tasks of this campaign")] = None,
    limit: Annotated[int, typer.Option(min=1, help="the newest this many")] = 50,
    plain: PlainOpt = False,
    json_out: JsonLinesOpt = False,
    connect: ConnectOpt = None,
) -> None:
    """List tasks, newest first.

    At a terminal: a table (plain columns for long listings), one line per task. In a pipe, or with
    --plain: one line per task, tab-separated: id, capability, state, priority, attempts, backend,
    campaign, submitted by, error. --json: one JSON object per task per line. A running task the
    store still has as assigned (a start is journaled with the task's next change) is shown as
    running, and --state running finds it.
    """
    from ppu.models import TaskState
    from ppu.protocol import MAX_LIST_ROWS

    _one_format(plain, json_out)
    if state is not None and state not in TaskState.__members__:
        _fail(PPUError(f"unknown state {state!r}", hint=f"one of {', '.join(TaskState.__members__)}"))
    lab = _lab(config)
    with progress(f"listing up to {limit:,} tasks", long=limit > MAX_LIST_ROWS):
        rows = _act(lab, connect, lambda c: c.tasks(state, campaign, limit=limit))
    if json_out:
        json_lines(rows)
        return
    listing("tasks", TASK_COLUMNS, [_task_cells(t) for t in rows], plain=plain, optional=TASK_OPTIONAL)


@app.command()
def submit(
    capability: str,
    input: Annotated[str, typer.Option("--input", "-i", help="inputs as JSON or @file.json")] = "{}",
    config: ConfigOpt = None,
    priority: Annotated[int, typer.Option(min=-1000, max=1000, help="higher goes first (-1000 to 1000)")] = 0,
    campaign: str | None = None,
    depends_on: Annotated[list[str] | None, typer.Option(help="task id this one waits for")] = None,
    backend: Annotated[str | None, typer.Option(help="run it on this backend only (e.g. a bluesky.plan task)")] = None,
    connect: ConnectOpt = None,
) -> None:
    """Submit one task; prints its id."""
    lab = _lab(config)
    try:
        spec = TaskSpec(capability=capability, inputs=_parse_json(input, "--input"), priority=priority,
                        campaign=campaign, depends_on=depends_on or [], pin_backend=backend)
    except PPUError as exc:
        _fail(exc)
    except ValidationError as exc:
        _fail(_option_error(exc, {"capability": "CAPABILITY", "inputs": "--input", "priority": "--priority",
                                  "campaign": "--campaign", "depends_on": "--depends-on", "pin_backend": "--backend"}))
    ids = _act(lab, connect, lambda c: c.submit([spec]))
    console.print(ids[0])


@app.command()
def cancel(task_id: str, config: ConfigOpt = None, reason: str = "", connect: ConnectOpt = None) -> None:
    """Cancel a queued or running task."""
    lab = _lab(config)
    _act(lab, connect, lambda c: c.cancel(task_id, reason))
    console.print(f"cancelled {task_id}")


@app.command()
def approve(task_id: str, config: ConfigOpt = None, note: str = "", connect: ConnectOpt = None) -> None:
    """Approve a task that waits for a person."""
    lab = _lab(config)
    _act(lab, connect, lambda c: c.approve(task_id, note))
    console.print(f"approved {task_id}")


@app.command()
def reject(task_id: str, reason: Annotated[str, typer.Option(help="why (kept in the audit log)")],
           config: ConfigOpt = None, connect: ConnectOpt = None) -> None:
    """Reject a task that waits for approval; it never runs."""
    lab = _lab(config)
    _act(lab, connect, lambda c: c.reject(task_id, reason))
    console.print(f"rejected {task_id}")


@app.command()
def review(
    task_id: Annotated[str | None, typer.Argument(help="task to decide on; leave out to list them")] = None,
    config: ConfigOpt = None,
    retry: Annotated[bool, typer.Option("--retry", help="run it again")] = False,
    fail: Annotated[str | None, typer.Option("--fail", help="fail it, with this reason")] = None,
    result: Annotated[str | None, typer.Option("--result", help="enter the outputs by hand (JSON or @file)")] = None,
    plain: PlainOpt = False,
    json_out: JsonLinesOpt = False,
    connect: ConnectOpt = None,
) -> None:
    """List interrupted physical tasks (needs_review), or decide on one: retry, fail, or enter its result."""
    if task_id is None:
        _one_format(plain, json_out)
        lab = _lab(config)
        rows = _act(lab, connect, lambda c: c.reviews())
        if json_out:
            json_lines(rows)
        else:
            _print_reviews(rows, plain)
        return
    if plain or json_out:
        _fail(PPUError(f"{'--json' if json_out else '--plain'} goes with the list, not with a decision",
                       field="--json" if json_out else "--plain", hint="ppu review --json"))
    chosen = [x for x in (retry, fail is not None, result is not None) if x]
    if len(chosen) != 1:
        _fail(PPUError("choose exactly one of --retry, --fail REASON, --result JSON",
                       hint=f"ppu review {task_id} --fail 'sample cracked'"))
    lab = _lab(config)
    if retry:
        _act(lab, connect, lambda c: c.review(task_id, "retry"))
    elif fail is not None:
        _act(lab, connect, lambda c: c.review(task_id, "fail", fail))
    else:
        try:
            outputs = _parse_json(result or "{}", "--result")
        except PPUError as exc:
            _fail(exc)
        _act(lab, connect, lambda c: c.review(task_id, "result", "", outputs))
    console.print(f"reviewed {task_id}")


def _print_reviews(rows: list[dict[str, Any]], plain: bool = False) -> None:
    cells = []
    for r in rows:
        prog = r.get("last_progress") or {}
        sample = r.get("sample") or {}
        loc = sample.get("location") or {}
        cells.append((r["task_id"], r["capability"], r.get("backend") or "", r.get("why") or "",
                      f"{prog.get('fraction', 0):.0%} {prog.get('message', '')}" if prog else "",
                      ", ".join(u[:8] for u in r.get("run_uids", [])),
                      f"{loc.get('device', '')} {loc.get('slot') or ''}".strip()))
    listing("waiting for review", (("task", 0), ("capability", 0), ("backend", 0), ("why", 60),
                                    ("last progress", 60), ("runs", 0), ("sample last seen", 0)), cells,
             plain=plain, empty="no task waits for review", optional=("runs", "last progress", "sample last seen"),
             after="decide with: ppu review ID --retry | --fail REASON | --result JSON")


def _summary(capability: str, inputs: dict[str, Any]) -> str:
    """A payload in a few words: the fields its capability declares a person reads first."""
    cap = capabilities.known().get(capability)
    return cap.summarise(inputs) if cap is not None else capabilities.flat_summary(inputs)


@app.command()
def approvals(config: ConfigOpt = None, plain: PlainOpt = False, json_out: JsonLinesOpt = False,
              connect: ConnectOpt = None) -> None:
    """Tasks waiting for a person's approval: why, and what each would do."""
    _one_format(plain, json_out)
    lab = _lab(config)
    rows = _act(lab, connect, lambda c: c.approvals())
    if json_out:
        json_lines(rows)
        return
    cells = []
    for r in rows:
        dur, cost = r.get("expected_duration_s"), r.get("expected_cost")
        cells.append((r["task_id"], r["capability"], r.get("reason", ""),
                      _summary(r["capability"], r.get("inputs", {})), ", ".join(r.get("backends", [])),
                      f"{dur:g} s" if dur is not None else "", f"{cost:g}" if cost is not None else ""))
    listing("waiting for approval", (("task", 0), ("capability", 0), ("why", 120), ("would do", 120), ("on", 0),
                                      ("duration", 0), ("cost", 0)), cells, plain=plain,
             empty="nothing waits for approval", optional=("cost", "duration", "on"),
             after="decide with: ppu approve ID [--note ...] or ppu reject ID --reason ...")


samples_app = typer.Typer(help="The sample registry: where every sample is and what was done to it.",
                          invoke_without_command=True)
app.add_typer(samples_app, name="samples")


@samples_app.callback()
def samples_list(ctx: typer.Context, config: ConfigOpt = None, campaign: str | None = None,
                 plain: PlainOpt = False, json_out: JsonLinesOpt = False, connect: ConnectOpt = None) -> None:
    """List samples (newest last)."""
    if ctx.invoked_subcommand is not None:
        return
    _one_format(plain, json_out)
    lab = _lab(config)
    rows = _act(lab, connect, lambda c: c.samples(campaign))
    if json_out:
        json_lines(rows)
        return
    cells = []
    for s in rows:
        loc = f"{s.location.device} {s.location.slot or ''}".strip() if s.location else ""
        cells.append((s.id, s.state.value, s.made_by or "", loc, str(len(s.measurements)), s.campaign or ""))
    listing("samples", (("id", 0), ("state", 0), ("made by", 0), ("location", 0), ("measurements", 0),
                         ("campaign", 0)), cells, plain=plain, empty="no samples",
            optional=("measurements", "campaign"))


@samples_app.command("show")
def samples_show(sample_id: str, config: ConfigOpt = None, json_out: JsonDocOpt = False,
                 connect: ConnectOpt = None) -> None:
    """One sample's lineage: what made it and with which inputs, every task that used it, where it is."""
    lab = _lab(config)
    d = _act(lab, connect, lambda c: c.sample(sample_id))
    if json_out:
        json_doc(d)
        return
    s = d["sample"]
    loc = s.get("location") or {}
    console.print(f"[bold]{s['id']}[/]  state={s['state']}  at {loc.get('device', '?')} {loc.get('slot') or ''}")
    console.print(f"made with: {json.dumps(s.get('made_with', {}))}")
    made = d.get("made_by") or {}
    console.print(f"made by: {made.get('task_id')} ({made.get('capability')}, {made.get('state')})")
    t = Table(title="measurements")
    for col in ("task", "capability", "state", "outputs", "entered by"):
        t.add_column(col)
    for m in d.get("measurements", []):
        t.add_row(m["task_id"], m.get("capability") or "", m.get("state") or "",
                  json.dumps(m.get("outputs"))[:80], m.get("entered_by") or "")
    console.print(t)


@app.command()
def audit(
    config: ConfigOpt = None,
    since: Annotated[float, typer.Option(min=0, help="only entries after this many hours ago (0: all)")] = 0.0,
    json_out: Annotated[Path | None, typer.Option(
        "--json", help="the entries as JSON lines: into this file (and the list as usual), or with - on "
        "stdout and nothing else")] = None,
    plain: PlainOpt = False,
    connect: ConnectOpt = None,
) -> None:
    """Every approval, rejection, manual result, autonomy change, stop and resume: who, when, what, why."""
    import time as _time

    to_stdout = json_out is not None and str(json_out) == "-"
    _one_format(plain, to_stdout)
    lab = _lab(config)
    t0 = _time.time() - since * 3600 if since else 0.0
    rows = _act(lab, connect, lambda c: c.audit(t0))
    if to_stdout:
        json_lines(rows)
        return
    cells = [(_time.strftime("%Y-%m-%d %H:%M:%S", _time.localtime(a.at)), a.actor, a.action, a.target or "",
              json.dumps(a.detail)) for a in rows]
    listing("audit log", (("when", 0), ("who", 0), ("what", 0), ("target", 0), ("detail", 80)), cells,
             plain=plain, empty="the audit log is empty" + (" for that period" if since else ""),
             optional=("who",))
    if json_out is not None:
        try:
            json_out.write_text("".join(a.model_dump_json() + "\n" for a in rows))
        except OSError as exc:
            _fail(PPUError(f"cannot write {json_out}: {exc.strerror}", field="--json",
                           hint="pass a file in a folder you can write, or - for stdout"))
        remark(f"wrote {len(rows)} entries to {json_out}")


@app.command()
def stop(
    config: ConfigOpt = None,
    backend: Annotated[str | None, typer.Option(help="only this backend (default: every physical one)")] = None,
    now: Annotated[bool, typer.Option("--now", help="pause at once instead of at the next checkpoint")] = False,
    connect: ConnectOpt = None,
) -> None:
    """Lab-wide stop: pause running physical plans and hold their queues (digital work goes on)."""
    lab = _lab(config)
    states = _act(lab, connect, lambda c: c.stop(backend, now))
    _print_states("stopped", states)
    console.print("resume with: ppu resume" + (f" --backend {backend}" if backend else ""))


@app.command()
def resume(
    config: ConfigOpt = None,
    backend: Annotated[str | None, typer.Option(help="only this backend (default: every stopped one)")] = None,
    connect: ConnectOpt = None,
) -> None:
    """Undo a stop: resume paused plans and let the backends take work again."""
    lab = _lab(config)
    states = _act(lab, connect, lambda c: c.resume(backend))
    _print_states("resumed", states)


def _print_states(what: str, states: dict[str, str]) -> None:
    if not states:
        console.print(f"nothing to {what[:-2]}")
        return
    t = Table(title=what)
    t.add_column("backend")
    t.add_column("left in")
    for name, st in states.items():
        t.add_row(name, st)
    console.print(t)


@app.command()
def autonomy(
    level: Annotated[str, typer.Argument(help="manual, supervised or autonomous")],
    config: ConfigOpt = None,
    backend: Annotated[str | None, typer.Option(help="set it for this backend")] = None,
    capability: Annotated[str | None, typer.Option(help="set it for this capability")] = None,
    connect: ConnectOpt = None,
) -> None:
    """Change an autonomy level at run time (default level, or one backend or capability)."""
    if level not in ("manual", "supervised", "autonomous"):
        _fail(PPUError(f"unknown autonomy level {level!r}", hint="use manual, supervised or autonomous"))
    lab = _lab(config)
    _act(lab, connect, lambda c: c.set_autonomy(level, backend, capability))
    console.print(f"autonomy of {backend or capability or 'the lab'} is now {level}")


@app.command()
def demo(
    tasks_n: Annotated[int, typer.Option("--tasks", min=1, help="how many tasks to run")] = 300,
    run_dir: Annotated[Path, typer.Option(help="folder for the store")] = Path("runs/demo-core"),
) -> None:
    """Run the orchestrator in-process with simulated digital backends and show what happened."""
    from ppu.demo import run_core_demo

    _writable(run_dir, "--run-dir")
    try:
        run_core_demo(tasks_n, run_dir, console)
    except PPUError as exc:
        _fail(exc)


# ---- networked: the orchestrator and worker processes, keys (ppu.transport) --------------------


@app.command()
def orchestrator(
    config: ConfigOpt = None,
    bind: Annotated[str | None, typer.Option(help="address to bind (default: the lab's orchestrator.bind)")] = None,
    insecure: Annotated[bool, typer.Option(help="allow a non-loopback bind without CURVE")] = False,
) -> None:
    """Run the orchestrator: serve clients and workers until Ctrl-C / SIGTERM."""
    from ppu.transport.serve import serve_orchestrator

    lab = _lab(config, backends=True)
    _address_option(bind, "--bind")
    try:
        lab.check_store()
    except PPUError as exc:
        _fail(exc)
    _serve(lambda: serve_orchestrator(lab, bind, insecure, announce=lambda s: console.print(s, highlight=False)))


@app.command()
def worker(
    backend: Annotated[list[str] | None, typer.Option("--backend", "-b", help="backend name from the lab config "
                                                      "(repeat for more; default: all)")] = None,
    config: ConfigOpt = None,
    connect: ConnectOpt = None,
    key: Annotated[str | None, typer.Option(help="CURVE key pair name in security.keys_dir "
                                           "(default $PPU_KEY or 'worker')")] = None,
) -> None:
    """Run a worker hosting backends of the lab, connected to the orchestrator."""
    from ppu.transport.serve import serve_worker

    lab = _lab(config, backends=True)
    _address_option(connect, "--connect")
    _serve(lambda: serve_worker(lab, connect, backend or [], key,
                                announce=lambda s: console.print(s, highlight=False)))


@app.command()
def plans(config: ConfigOpt = None) -> None:
    """The Bluesky plans each instrument of the lab allows as `bluesky.plan` tasks, with their parameters."""
    from ppu.backends.user_plans import AllowedPlans, PlanRefused

    lab = _lab(config)
    table = Table("backend", "plan", "parameters", "summary", box=None)
    for entry in lab.backends:
        try:
            allowed = AllowedPlans(entry.get("plans") or [])
        except PlanRefused as exc:
            _fail(ConfigError(f"backend {entry.get('name')}: {exc}", field="plans"))
        for row in allowed.describe():
            table.add_row(str(entry.get("name")), row["plan"], row["parameters"], row["summary"])
    if not table.row_count:
        console.print("no instrument of this lab allows plans (list them under `plans:` in a backend entry)")
        return
    console.print(table)
    console.print('submit one: ppu submit bluesky.plan --backend NAME --input \'{"plan": "count", '
                  '"args": {"detectors": ["det1"], "num": 3}}\'', highlight=False)


@app.command()
def ioc(
    config: ConfigOpt = None,
    interface: Annotated[list[str] | None, typer.Option(help="address to serve Channel Access on (repeat; "
                                                        "default $EPICS_CAS_INTF_ADDR_LIST, else all)")] = None,
) -> None:
    """Serve the simulated twin of every real-mode instrument (simulated: false, epics_prefix) as an EPICS IOC."""
    from ppu.transport.serve import serve_iocs

    lab = _lab(config, backends=True)
    try:
        _serve(lambda: serve_iocs(lab, interface or None, announce=lambda s: console.print(s, highlight=False)))
    except PPUError as exc:
        _fail(exc)


def _serve(fn: Callable[[], Awaitable[None]]) -> None:
    import logging

    logging.basicConfig(level=os.environ.get("PPU_LOG", "WARNING"), format="%(asctime)s %(name)s %(message)s")
    try:
        _run(fn)
    except KeyboardInterrupt:  # a second Ctrl-C while closing
        raise typer.Exit(130) from None


keys_app = typer.Typer(no_args_is_help=True, help="CURVE key pairs for orchestrator, workers and clients.")
app.add_typer(keys_app, name="keys")


@keys_app.command("generate")
def keys_generate(
    name: str,
    dir: Annotated[Path, typer.Option("--dir", help="folder for the key pairs")] = Path("keys"),
) -> None:
    """Make NAME.key (public: put it in the lab config) and NAME.key_secret (keep it on that machine)."""
    from ppu.transport.security import generate_keys, public_key

    try:
        pub, sec = generate_keys(name, dir)
    except PPUError as exc:
        _fail(exc)
    console.print(f"public key {pub}: {public_key(name, dir)}\nsecret key {sec} (keep it private)",
                  highlight=False)


@app.command()
def dashboard(
    config: ConfigOpt = None,
    connect: ConnectOpt = None,
    port: Annotated[int | None, typer.Option(min=0, max=65535, help="web port (default 8765; 0: any free port)")
                    ] = None,
    host: Annotated[str | None, typer.Option(help="address to bind (default 127.0.0.1; others need a token)")] = None,
    token: Annotated[str | None, typer.Option(help="token for acting (default $PPU_DASHBOARD_TOKEN, else generated)")
                     ] = None,
) -> None:
    """A live web dashboard: backends, timeline, queues, approvals and reviews, campaigns."""
    from ppu.dashboard import serve

    lab = _lab(config)
    try:
        serve(lab, connect=connect, host=host, port=port, token=token)
    except PPUError as exc:
        _fail(exc)


campaign_app = typer.Typer(help="Closed-loop campaigns: digital screening + BO on the lab.", no_args_is_help=True)
app.add_typer(campaign_app, name="campaign")


@campaign_app.command("run")
def campaign_run(
    config: Annotated[Path, typer.Argument(help="campaign YAML, e.g. campaigns/demo.yaml")],
    run_dir: Annotated[Path, typer.Option(help="run folder (emptied first)")] = Path("runs/campaign"),
    prefect: Annotated[bool, typer.Option("--prefect/--no-prefect",
                                          help="run it as the Prefect flow (local, no server to start)")] = True,
    dashboard: Annotated[bool, typer.Option("--dashboard/--no-dashboard",
                                            help="serve the live dashboard while it runs")] = True,
) -> None:
    """Run a campaign: progress bar, summary table, plots and decisions.jsonl in the run folder."""
    if not config.is_file():
        _fail(PPUError(f"campaign file {config} " + ("is a folder" if config.is_dir() else "does not exist"),
                       hint="try campaigns/demo.yaml"))
    _writable(run_dir, "--run-dir")
    try:
        from ppu.campaign.declared_report import runner_for

        runner = runner_for(config)
        if runner is not None:  # the problem declares its variables and names the lab it runs on
            runner(config, run_dir, console)
            return
        from ppu.campaign import run_campaign_cli

        run_campaign_cli(config, run_dir, console, prefect=prefect, dashboard=dashboard)
    except PPUError as exc:
        _fail(exc)


@app.command("packs")
def packs_cmd(config: ConfigOpt = None) -> None:
    """The installed packs: what each brings (capabilities, backend types, example files)."""
    from ppu import packs

    lab = _lab(config)
    try:
        everything = packs.PackRegistry(packs.build(n, load) for n, load in sorted(packs.installed().items()))
    except PPUError as exc:
        _fail(exc)
    loaded = set(everything.names if lab.packs is None else lab.packs) | {"core"}
    console.print(f"[bold]installed packs ({len(everything.names)})[/]")
    for name, p in everything.packs.items():
        state = "loaded" if name in loaded else "not loaded by this lab"
        console.print(f"[bold]{name}[/] ({state}): {p.description}", soft_wrap=True)
        rows = [("capabilities", ", ".join(c.name for c in p.capabilities)),
                ("backend types", ", ".join(sorted(p.backend_types))),
                ("examples", ", ".join(str(f) for f in (*p.labs, *p.campaigns)))]
        for label, text in rows:
            if text:
                console.print(f"  {label + ':':15}{text}", soft_wrap=True, highlight=False)
    if lab.packs is not None:
        console.print(f"this lab loads: {', '.join(['core', *lab.packs])}")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
