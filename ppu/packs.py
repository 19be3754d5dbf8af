"""Packs: installable packages that bring one lab's science to the domain-free core.

A pack is found through the entry-point group ``ppu.packs``; the entry point names ONE
registration module attribute, a :class:`Pack` (or a function returning one)::

    [project.entry-points."ppu.packs"]
    mypack = "mypack.registration:pack"

A pack contributes capabilities (with their sample and approval declarations), backend types
(``name -> "module:Class"``), Bluesky plans, worlds, input encoders and output decoders for
served models (``name -> "module:function"``), and example lab and campaign files. Only the
capabilities are imported when a pack is loaded; everything else is named by import path and
imported when used, so loading a pack never pulls in torch, bluesky or a simulator.

Every process loads the same packs: the lab file's ``packs:`` list (default: every installed
pack) is loaded when the lab file is read (:func:`ppu.config.load_lab`), and a process that
reads no lab file loads every installed pack on its first capability look-up. So the
orchestrator, each worker, the CLI, the dashboard and the Prefect flow know the same capabilities.
"""

from __future__ import annotations

import difflib
import importlib
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from ppu import capabilities
from ppu.capabilities import Capability
from ppu.errors import ConfigError

GROUP = "ppu.packs"


@dataclass(frozen=True)
class Pack:
    """What one pack brings. Everything but the capabilities is an import path or a file."""

    name: str
    description: str = ""
    capabilities: tuple[Capability, ...] = ()
    backend_types: dict[str, str] = field(default_factory=dict)
    plans: dict[str, str] = field(default_factory=dict)
    worlds: dict[str, str] = field(default_factory=dict)
    encoders: dict[str, str] = field(default_factory=dict)
    decoders: dict[str, str] = field(default_factory=dict)
    labs: tuple[Path, ...] = ()
    campaigns: tuple[Path, ...] = ()
    objectives: dict[str, str] = field(default_factory=dict)  # capability -> output the dashboard plots
    conformance: dict[str, str] = field(default_factory=dict)  # backend type -> "module:Class" (ppu.conformance)
    # "module:function(lab: dict, settings: dict) -> dict": makes a lab file (as a dict) a campaign's simulated
    # lab; settings: name, seed, time_scale, run_dir, world (ppu.campaign.declared)
    campaign_lab: str | None = None
    # "module:function(world: dict) -> truth": what a simulated campaign is scored on; the truth has
    # expected(points, output) -> array | None and optimum(output) -> (point, value) | None
    campaign_truth: str | None = None


def resolve(path: str, what: str = "object") -> Any:
    """``"module:attr"`` -> the object; a ConfigError that names the path when it cannot be loaded."""
    module, sep, attr = path.partition(":")
    if not sep or not module or not attr:
        raise ConfigError(f"{what} {path!r} is not of the form 'module:attr'", hint="e.g. 'mypack.nets:encode'")
    try:
        obj: Any = importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(f"{what} {path!r} cannot be loaded: {exc}",
                          hint="is the pack (or the optional extra it needs) installed? is the module's "
                               "name spelt right?") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            near = difflib.get_close_matches(part, [n for n in dir(obj) if not n.startswith("_")], n=3)
            raise ConfigError(f"{what} {path!r} cannot be loaded: {module} has no {attr!r}",
                              hint=(f"did you mean {', '.join(repr(n) for n in near)}?" if near else
                                    f"check the spelling of {attr!r}: the module {module} loaded")) from None
    return obj


class PackRegistry:
    """The packs one process has loaded, and what they bring, by name."""

    def __init__(self, packs: Iterable[Pack] = ()):
        self.packs: dict[str, Pack] = {}
        for p in packs:
            if p.name in self.packs:
                raise ConfigError(f"two packs are named {p.name!r}", field="packs")
            self.packs[p.name] = p

    @property
    def names(self) -> list[str]:
        return list(self.packs)

    def capabilities(self) -> dict[str, Capability]:
        return {c.name: c for p in self.packs.values() for c in p.capabilities}

    def _merged(self, attr: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for p in self.packs.values():
            out.update(getattr(p, attr))
        return out

    def backend_types(self) -> dict[str, str]:
        return self._merged("backend_types")

    def plans(self) -> dict[str, str]:
        return self._merged("plans")

    def worlds(self) -> dict[str, str]:
        return self._merged("worlds")

    def objectives(self) -> dict[str, str]:
        return self._merged("objectives")

    def encoder(self, name: str) -> Callable[..., Any]:
        """An encoder by pack-registered name or by ``module:function``."""
        return resolve(self._merged("encoders").get(name, name), "encoder")  # type: ignore[no-any-return]

    def decoder(self, name: str) -> Callable[..., Any]:
        return resolve(self._merged("decoders").get(name, name), "decoder")  # type: ignore[no-any-return]

    def pack_of(self, capability: str) -> str | None:
        for p in self.packs.values():
            if any(c.name == capability for c in p.capabilities):
                return p.name
        return None


def installed() -> dict[str, Callable[[], Pack]]:
    """Entry points of the installed packs, by name (nothing imported yet)."""
    return {ep.name: ep.load for ep in entry_points(group=GROUP)}


def build(name: str, load: Callable[[], Any]) -> Pack:
    try:
        obj = load()
    except Exception as exc:
        raise ConfigError(f"pack {name!r} cannot be loaded: {exc}", field="packs",
                          hint="reinstall it, or leave it out of the lab file's 'packs:' list") from exc
    pack = obj() if callable(obj) and not isinstance(obj, Pack) else obj
    if not isinstance(pack, Pack):
        raise ConfigError(f"the entry point of pack {name!r} gives {type(pack).__name__}, not a ppu.packs.Pack",
                          field="packs")
    if pack.name != name:
        raise ConfigError(f"entry point {name!r} gives a pack named {pack.name!r}; the names must agree",
                          field="packs")
    return pack


_lock = threading.RLock()
_active: PackRegistry | None = None


def load(names: Iterable[str] | None = None) -> PackRegistry:
    """Load the named packs (None: every installed pack) and make them this process's packs.

    Their capabilities replace whatever was registered before, so the process knows exactly the
    capabilities of these packs. An unknown name is a ConfigError that lists the installed packs.
    """
    global _active
    found = installed()
    wanted = list(found) if names is None else list(dict.fromkeys(["core", *names]))
    missing = [n for n in wanted if n not in found]
    if missing:
        raise ConfigError(f"pack(s) not installed: {', '.join(missing)}", field="packs",
                          hint=f"installed packs: {', '.join(sorted(found)) or 'none'} (pip install the pack)")
    with _lock:
        reg = PackRegistry(build(n, found[n]) for n in wanted)
        # Capabilities of the packs loaded before give way; ones registered by hand (pack None) stay.
        for name, old in capabilities.registered().items():
            if old.pack is not None:
                capabilities.unregister(name)
        for p in reg.packs.values():
            for cap in p.capabilities:
                if (prev := capabilities.registered().get(cap.name)) is not None and prev.pack is not None:
                    raise ConfigError(f"capability {cap.name!r} is registered by two packs "
                                      f"({prev.pack} and {p.name})", field="packs")
                capabilities.register(cap.model_copy(update={"pack": p.name}))
        _active = reg
        return reg


def active() -> PackRegistry:
    """This process's packs, loading every installed pack on first use."""
    with _lock:
        return _active if _active is not None else load()


def loaded() -> PackRegistry | None:
    """This process's packs if any were loaded, without loading."""
    return _active


def ensure_loaded() -> None:
    """Called by the capability registry before a look-up: load the default packs once."""
    if _active is None:
        active()
