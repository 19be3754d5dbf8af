"""CURVE keys and who may do what (DESIGN.md promise 7).

The decisions live in :class:`Authorizer` (which key has which :class:`Role`) and the pure
function :func:`authorise` (what a role may ask for); neither does IO (STYLE.md §6, after
``zmq/auth/base.py``). The server wires the Authorizer to a ZAP handler on its loop and calls
:func:`authorise` for every client request, in one place. A key in the lab config is either a z85
public key (40 characters) or the name of a key pair in ``security.keys_dir`` (made by
``ppu keys generate NAME``). The role table is in ``docs/protocol.md`` (Roles).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from urllib.parse import urlparse

import zmq.auth

from ppu.config import SecurityConfig
from ppu.errors import ConfigError, NotAllowed
from ppu.models import Task

log = logging.getLogger(__name__)

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}


@dataclass(frozen=True)
class CurveKeys:
    """What a connecting peer needs: its own pair and the orchestrator's public key (z85 bytes)."""

    public: bytes
    secret: bytes
    server_public: bytes


def generate_keys(name: str, keys_dir: str | Path = "keys") -> tuple[Path, Path]:
    """Make ``NAME.key`` (public, share it) and ``NAME.key_secret`` (keep it) in ``keys_dir``."""
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"bad key name {name!r}",
                          hint="use a plain name such as 'orchestrator' or 'instrument-pc'")
    d = Path(keys_dir)
    try:
        d.mkdir(parents=True, exist_ok=True)
        pub, sec = zmq.auth.create_certificates(str(d), name)
        Path(sec).chmod(0o600)
    except OSError as exc:
        raise ConfigError(f"cannot write keys into {d}: {exc.strerror}", field="--dir",
                          hint="pass --dir a folder you can write (it is created when missing)") from None
    return Path(pub), Path(sec)


def load_keypair(keys_dir: str | Path, name: str) -> tuple[bytes, bytes]:
    path = Path(keys_dir) / f"{name}.key_secret"
    if not path.exists():
        raise ConfigError(f"no secret key {path}",
                          hint=f"make one with: ppu keys generate {name} --dir {keys_dir}")
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the key pair {path}: {exc}",
                          hint=f"make a new one with: ppu keys generate {name} --dir {keys_dir}") from None
    if secret is None:
        raise ConfigError(f"{path} holds no secret key",
                          hint=f"make a new one with: ppu keys generate {name} --dir {keys_dir}")
    return public, secret


def public_key(value: str, keys_dir: str | Path) -> str:
    """A z85 public key, given either the key itself or the name of a key pair in ``keys_dir``."""
    if len(value) == 40 and not (Path(keys_dir) / f"{value}.key").exists():
        return value
    path = Path(keys_dir) / f"{value}.key"
    if not path.exists():
        raise ConfigError(f"{value!r} is neither a z85 public key nor a key in {keys_dir}",
                          field="security", hint=f"ppu keys generate {value} --dir {keys_dir}")
    public, _ = zmq.auth.load_certificate(str(path))
    return public.decode()


def peer_keys(security: SecurityConfig, name: str) -> CurveKeys:
    """Keys for a worker or client named ``name`` connecting to this lab's orchestrator."""
    public, secret = load_keypair(security.keys_dir, name)
    server_public = public_key(security.server_key, security.keys_dir).encode()
    return CurveKeys(public, secret, server_public)


def is_loopback(address: str) -> bool:
    if address.startswith(("ipc://", "inproc://")):
        return True
    u = urlparse(address)
    host = (u.hostname or "").lower()
    return u.scheme == "tcp" and (host in LOOPBACK_HOSTS or host.startswith("127."))


def check_bind(address: str, curve: bool, insecure: bool) -> None:
    if not curve and not insecure and not is_loopback(address):
        raise ConfigError(
            f"refusing to bind {address} without CURVE: anyone on the network could submit work",
            field="orchestrator.bind",
            hint="set security.curve: true (ppu keys generate ...), bind 127.0.0.1, or pass --insecure")


class Role(StrEnum):
    """Who a peer is. Each role may do what the ones before it may (worker stands apart)."""

    worker = "worker"  # registers the backends listed for its key; makes no client request
    client = "client"  # submits work, reads everything, cancels its own tasks
    operator = "operator"  # also approves, rejects, reviews, stops/resumes the lab, cancels any task
    admin = "admin"  # also changes autonomy levels


_RANK = {Role.client: 1, Role.operator: 2, Role.admin: 3}

# request type -> the least role that may send it; anything not listed needs a client.
NEEDS: dict[str, Role] = {
    "get_artifact": Role.client,  # a block or block result, like any other read
    "approve": Role.operator, "reject": Role.operator, "review": Role.operator, "hold": Role.operator,
    "set_autonomy": Role.admin,
}
OWN_ONLY = frozenset({"cancel"})  # below operator, only on tasks submitted with the same key
OWNER_ROLE = Role.operator  # the least role that may act on anybody's task


def authorise(role: Role | None, request: str, task: Task | None = None, key: str | None = None) -> None:
    """Raise :class:`NotAllowed` unless ``role`` may send ``request`` (a message type) about ``task``.

    ``key`` is the requester's CURVE public key: a client may cancel a task only when the task's
    ``submitter_key`` is that key. An unknown task (None) passes, so the answer stays ``unknown_task``.
    """
    need = NEEDS.get(request, Role.client)
    if role is None or role is Role.worker:
        raise NotAllowed(f"this key may not {request}: it is not a client key",
                         hint="list the key under security.clients (or operators/admins) in the lab config")
    if _RANK[role] < _RANK[need]:
        raise NotAllowed(f"a {role.value} may not {request} ({need.value} or above only)",
                         hint=f"use a key listed under security.{need.value}s")
    if request in OWN_ONLY and task is not None and _RANK[role] < _RANK[OWNER_ROLE]:
        if task.submitter_key is None or task.submitter_key != key:
            raise NotAllowed(f"a {role.value} may {request} only its own tasks; {task.id} was submitted "
                             f"by {task.submitted_by or 'someone else'}", field="task_id",
                             hint="ask an operator or admin, or the person who submitted it")


class Authorizer:
    """Which public keys may connect, register which backends, and with which role they act."""

    def __init__(self, security: SecurityConfig):
        d = security.keys_dir
        self.curve = security.curve
        self.admins = {public_key(k, d) for k in security.admins}
        self.operators = {public_key(k, d) for k in security.operators} | self.admins
        self.clients = {public_key(k, d) for k in security.clients} | self.operators
        self.workers = {public_key(k, d): set(v) for k, v in security.workers.items()}
        self.refused: Counter[str] = Counter()

    def known(self, key: str) -> bool:
        return key in self.clients or key in self.workers

    def may_register(self, key: str | None, backend: str) -> bool:
        return not self.curve or (key is not None and backend in self.workers.get(key, set()))

    def role(self, key: str | None) -> Role | None:
        """The key's role; without CURVE every peer is admin (the orchestrator binds loopback only)."""
        if not self.curve:
            return Role.admin
        if key in self.admins:
            return Role.admin
        if key in self.operators:
            return Role.operator
        if key in self.clients:
            return Role.client
        return Role.worker if key in self.workers else None

    # the ZAP credentials-provider interface of zmq.auth (configure_curve_callback)
    def callback(self, domain: str, key: bytes) -> bool:
        k = key.decode("ascii", "replace")
        if self.known(k):
            return True
        self.refused[k] += 1
        log.warning("refused an unknown CURVE key %s", k)
        return False
