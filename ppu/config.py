"""The lab config: one YAML file a scientist can read (STYLE.md §7).

Every field has a description and bounds; backends are listed as ``{type: ..., **kwargs}`` and
rebuilt through :mod:`ppu.backends.registry`, where each type validates its own fields.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from ppu.errors import ConfigError, PPUError
from ppu.models import Autonomy, Strict
from ppu.packs import PackRegistry
from ppu.packs import load as load_packs

if TYPE_CHECKING:
    from ppu.backends.base import Backend

_TCP = re.compile(r"^tcp://(\*|\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]+(;[A-Za-z0-9_.\-]+)?):(\*|\d{1,5})$")
ADDRESS_HINT = "use tcp://HOST:PORT (e.g. tcp://127.0.0.1:5555), ipc:///path/to/socket or inproc://name"


def address_problem(address: str) -> str | None:
    """Why ``address`` is not a ZMQ endpoint PPU can bind or connect to, or None when it is one."""
    if address.startswith(("ipc://", "inproc://")):
        return None if address.split("://", 1)[1] else "it names no path"
    m = _TCP.match(address)
    if m is None:
        return "it is not of the form tcp://HOST:PORT, ipc://PATH or inproc://NAME"
    port = m.group(3)
    if port != "*" and int(port) > 65535:
        return f"port {port} is above 65535"
    return None


def check_address(address: str, field: str) -> str:
    """``address`` itself, or a ConfigError naming ``field`` (an option or a lab-file key)."""
    why = address_problem(address)
    if why is not None:
        raise ConfigError(f"{address!r} is not a valid address: {why}", field=field, hint=ADDRESS_HINT)
    return address


def sqlite_path(url: str) -> str | None:
    """The file a SQLite URL names (relative to the current folder unless absolute), or None: not
    SQLite, or a database in memory. SQLAlchemy's reading: ``sqlite:///`` + path, any ``?query`` aside."""
    if not url.startswith("sqlite://"):
        return None
    path = url.removeprefix("sqlite://").removeprefix("/").split("?", 1)[0]
    return path if path and path != ":memory:" else None


_SQLITE_MAGIC = b"SQLite format 3\x00"


class OrchestratorConfig(Strict):
    bind: str = Field("tcp://127.0.0.1:5555", max_length=1024,
                      description="address the orchestrator's ROUTER binds (tcp://HOST:PORT, ipc://PATH)")
    heartbeat_s: float = Field(1.0, gt=0, le=60, description="heartbeat interval both ways")
    missed_heartbeats: int = Field(3, ge=1, le=100, description="a peer missing this many is dead")
    max_message_bytes: int = Field(16 * 1024 * 1024, ge=1024, le=1024**3)
    max_blob_bytes: int = Field(512 * 1024 * 1024, ge=0, le=8 * 1024**3,
                                description="most bytes of binary frames (block columns) in one message")
    backoff_base_s: float = Field(1.0, ge=0, le=3600, description="first retry delay of a repeatable task")
    backoff_max_s: float = Field(300.0, ge=0, le=86400)
    restart_grace_s: float = Field(10.0, ge=0, le=3600,
                                   description="after a restart, how long workers have to come back")
    ended_kept: int = Field(50_000, ge=1, le=10_000_000,
                            description="ended tasks whose end state the orchestrator keeps in memory (for "
                                        "dependencies and duplicate ids); it reads older ones from the store")

    @field_validator("bind")
    @classmethod
    def _address(cls, v: str) -> str:
        why = address_problem(v)
        if why is not None:
            raise ValueError(f"{v!r} is not a valid address: {why}; {ADDRESS_HINT}")
        return v


class AutonomyConfig(Strict):
    default: Autonomy = Field(Autonomy.autonomous, description="level for anything not listed below")
    backends: dict[str, Autonomy] = Field(default_factory=dict, description="backend name -> level")
    capabilities: dict[str, Autonomy] = Field(default_factory=dict, description="capability -> level")
    cost_threshold: float = Field(100.0, ge=0, description="supervised: approval above this cost")
    limit_margin: float = Field(0.05, ge=0, le=0.5,
                                description="supervised: approval for setpoints within this fraction of a limit")


class SecurityConfig(Strict):
    curve: bool = Field(False, description="authenticate peers with CURVE keys")
    keys_dir: str = Field("keys", description="folder with this lab's key pairs (ppu keys generate NAME)")
    server_key: str = Field("orchestrator", description="name of the orchestrator's key pair")
    clients: list[str] = Field(default_factory=list, description="public keys (z85) allowed to act as clients")
    operators: list[str] = Field(default_factory=list,
                                 description="public keys allowed to approve, review, stop the lab, cancel any task")
    admins: list[str] = Field(default_factory=list, description="public keys allowed everything, autonomy included")
    workers: dict[str, list[str]] = Field(
        default_factory=dict, description="worker public key (z85) -> backend names it may register")


Durability = Literal["power", "process"]


class StoreConfig(Strict):
    """Where the journal lives and what a commit survives. ``store: URL`` is short for ``store: {url: URL}``."""

    url: str | None = Field(None, description="SQLAlchemy URL (sqlite:///... or postgresql+psycopg://...); "
                            "default: SQLite under run_dir")
    durability: Durability = Field(
        "power", description="what an acknowledged task survives. 'power' (default): a power cut or an "
        "operating-system crash; every commit is fsynced (SQLite WAL, synchronous=FULL). 'process': the "
        "death of any process, SIGKILL included, but not a power cut or an OS crash: SQLite WAL with "
        "synchronous=NORMAL, a commit is in the operating system's page cache, fsynced at checkpoints "
        "(a lab bench, CI, a laptop; several times faster per task). SQLite only: on PostgreSQL the "
        "server's own synchronous_commit decides")

    @field_validator("url")
    @classmethod
    def _scheme(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("sqlite://", "postgresql://", "postgresql+")):
            raise ValueError(f"{v[:80]!r} is not a store URL: use sqlite:///path/to/ppu.sqlite or "
                             "postgresql+psycopg://user@host/db (or leave it out: SQLite under run_dir)")
        if v is not None and v.startswith("sqlite://"):
            rest = v.removeprefix("sqlite://")
            if rest and not rest.startswith("/"):  # sqlite://name reads `name` as a host
                raise ValueError(f"{v[:80]!r} is not a SQLite URL: the path follows three slashes "
                                 "(sqlite:///relative/ppu.sqlite) or four (sqlite:////absolute/ppu.sqlite)")
            if sqlite_path(v) is None:
                raise ValueError(f"{v[:80]!r} names no file: a store in memory keeps nothing once the command "
                                 "ends; name a file, e.g. sqlite:////path/to/ppu.sqlite (or leave store out: "
                                 "SQLite under run_dir)")
        return v

    @model_validator(mode="after")
    def _dialect(self) -> StoreConfig:
        if self.durability == "process" and self.url and not self.url.startswith("sqlite"):
            raise ValueError("durability 'process' applies to SQLite only; on PostgreSQL leave it at 'power' "
                             "and set synchronous_commit on the server")
        return self


class LabConfig(Strict):
    name: str = Field("lab", description="a name for this lab")
    run_dir: str = Field("runs", description="folder for the store, documents, plots")
    store: StoreConfig | None = Field(None, description="the store: a SQLAlchemy URL, or {url: ..., durability: "
                                      "power|process}; default SQLite under run_dir, durability power")
    packs: list[str] | None = Field(None, description="packs this lab loads (ppu packs lists the installed ones); "
                                    "default: every installed pack. The core pack is always loaded.")
    orchestrator: OrchestratorConfig = Field(default_factory=OrchestratorConfig)
    autonomy: AutonomyConfig = Field(default_factory=AutonomyConfig)
    security: SecurityConfig = Field(default_factory=SecurityConfig)
    backends: list[dict[str, Any]] = Field(default_factory=list, description="{type: ..., name: ..., ...}")

    @field_validator("store", mode="before")
    @classmethod
    def _store_url(cls, v: Any) -> Any:
        return {"url": v} if isinstance(v, str) else v

    @field_validator("backends")
    @classmethod
    def _names(cls, v: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for i, b in enumerate(v):
            for key in ("type", "name"):
                if not isinstance(b.get(key), str) or not b[key]:
                    raise ValueError(f"backend entry {i + 1} needs a {key!r} (a non-empty string): "
                                     "each entry reads {type: ..., name: ..., ...}")
        names = [str(b.get("name")) for b in v]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"backend names must be unique: {sorted(dupes)}")
        return v

    def check_backends(self) -> None:
        """Validate every backend entry against its type's fields, building nothing.

        Imports each entry's backend class (a few seconds for types that bring torch or botorch),
        so the processes that host or serve the lab call it, not every client command.
        """
        from ppu.backends.registry import check_entry

        for i, b in enumerate(self.backends):
            with self.backend_errors(i):
                check_entry(b, f"backends.{i}")

    def build_backends(self, names: list[str] | None = None) -> list[Backend]:
        """The backends of the entries named (default: all), built; an error names its entry's field
        (``backends.2.device``), whatever the backend type called it."""
        from ppu.backends.registry import build_backend

        out = []
        for name in names if names is not None else [str(b.get("name")) for b in self.backends]:
            entry = self.backend_entry(name)
            with self.backend_errors(name):
                out.append(build_backend(entry))
        return out

    @contextlib.contextmanager
    def backend_errors(self, backend: int | str) -> Iterator[None]:
        """Around building or starting the backend of one entry (its index or name): a PPUError out of
        it names the lab file's field, ``backends.<i>.`` before the backend's own field (a backend
        knows its fields, such as ``device`` or ``models.<capability>.factory``, not where its entry
        sits), and the backend by name."""
        i = backend if isinstance(backend, int) else \
            next((k for k, b in enumerate(self.backends) if b.get("name") == backend), None)
        try:
            yield
        except PPUError as exc:
            if i is not None:
                raise in_backend_entry(exc, i, str(self.backends[i].get("name") or "")) from None
            raise

    def load_packs(self) -> PackRegistry:
        """Load this lab's packs into this process (every process of the lab does the same)."""
        return load_packs(self.packs)

    def store_url(self) -> str:
        if self.store is not None and self.store.url:
            return self.store.url
        return f"sqlite:///{(Path(self.run_dir) / 'ppu.sqlite').resolve()}"

    def store_field(self) -> str:
        """The lab-file field the store's location comes from: store.url, or run_dir when that is left out."""
        return "store.url" if self.store is not None and self.store.url else "run_dir"

    def check_store(self) -> None:
        """Before this process opens a SQLite store: its file is a SQLite database or not there yet, and
        its folder is one this process can write (or make). A ConfigError names the field the location
        comes from (store.url or run_dir) and says what to do.

        Only a process that opens the store calls it: a client of a running orchestrator may not see
        the orchestrator's disk at all.
        """
        url = self.store_url()
        path = sqlite_path(url)
        if path is None:
            return
        field = self.store_field()
        hint = ("point store.url at a file in a folder you can write, e.g. sqlite:////home/you/lab/ppu.sqlite "
                "(or leave store out: SQLite under run_dir)" if field == "store.url" else
                "point run_dir at a folder you can write (or set store.url)")
        db = Path(path)
        if db.is_dir():
            raise ConfigError(f"the store at {url} is a folder, not a database file", field=field,
                              hint=f"name a file in it: sqlite:///{db / 'ppu.sqlite'}")
        if db.exists():
            try:
                with db.open("rb") as f:
                    head = f.read(len(_SQLITE_MAGIC))
            except OSError as exc:
                raise ConfigError(f"cannot open the store at {url}: {exc.strerror}", field=field, hint=hint) from None
            if head and head != _SQLITE_MAGIC:
                raise ConfigError(f"the store at {url} is not a SQLite database (the file {db} holds something else)",
                                  field=field, hint="name a new file (it is made on first use) or the lab's "
                                  "existing store; PPU never writes over a file it did not make")
        folder = db.parent
        while not folder.exists() and folder != folder.parent:  # the folders to make are made in the nearest one
            folder = folder.parent
        if not folder.is_dir():
            raise ConfigError(f"cannot make the store's folder {db.parent}: {folder} is a file", field=field,
                              hint=hint)
        probe = folder / f".ppu-write-test-{os.getpid()}"
        try:
            probe.touch()
            probe.unlink()
        except OSError as exc:
            made = "" if folder == db.parent else f" (to make {db.parent} in)"
            raise ConfigError(f"cannot open the store at {url}: the folder {folder}{made} is not writable "
                              f"({exc.strerror})", field=field, hint=hint) from None

    def store_durability(self) -> Durability:
        return self.store.durability if self.store is not None else "power"

    def backend_entry(self, name: str) -> dict[str, Any]:
        for b in self.backends:
            if b.get("name") == name:
                return b
        raise ConfigError(f"no backend named {name!r} in lab {self.name}",
                          hint=f"backends in the config: {', '.join(str(b.get('name')) for b in self.backends)}")


_ENTRY_FIELD = re.compile(r"^backends\.\d+(\.|$)")


def in_backend_entry(exc: PPUError, index: int, name: str = "") -> PPUError:
    """A backend's error said of the lab file's entry ``backends.<index>``: its field under
    ``backends.<index>.`` (``device`` -> ``backends.0.device``, the registry's ``backends.type`` ->
    ``backends.0.type``, none -> ``backends.0``); a field already naming an entry stays as it is."""
    where = f"backends.{index}"
    field = exc.field
    if not field or field == "backends":
        exc.field = where
    elif not _ENTRY_FIELD.match(field):
        exc.field = f"{where}.{field.removeprefix('backends.')}"
    if name and not exc.message.startswith(f"backend {name}"):
        exc.message = f"backend {name}: {exc.message}"
    return exc


M = TypeVar("M", bound=BaseModel)


def load_yaml_model(path: str | Path, model: type[M], what: str, hint: str) -> M:
    """Read a YAML file into ``model``; every failure is a ConfigError naming the file and field."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{what} {p} does not exist", hint=hint)
    if p.is_dir():
        raise ConfigError(f"{what} {p} is a folder, not a file", hint=hint)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {p} is not a text file (not UTF-8)", hint=hint) from None
    except OSError as exc:
        raise ConfigError(f"{what} {p} cannot be read: {exc.strerror}", hint=hint) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p} is not valid YAML: {exc}", hint=hint) from None
    if raw is None:
        raise ConfigError(f"{what} {p} is empty", hint=f"write the {what} into it, or {hint}")
    return parse_model(raw, model, str(p), what)


def parse_model(raw: Any, model: type[M], source: str, what: str) -> M:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the {what} must be a mapping")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        e = exc.errors()[0]
        loc = ".".join(str(x) for x in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg += f" (a {what} has no key {loc!r}: check its spelling)"
        raise ConfigError(f"{source}: {loc}: {msg}", field=loc) from None


def load_lab(path: str | Path) -> LabConfig:
    return load_yaml_model(path, LabConfig, "lab config", "pass --config PATH to a lab YAML file")


def parse_lab(raw: Any, source: str = "<lab>") -> LabConfig:
    return parse_model(raw, LabConfig, source, "lab config")
