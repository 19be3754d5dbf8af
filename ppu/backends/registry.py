"""Backend types by name, rebuilt from ``{type: ..., **kwargs}`` in the lab config (STYLE.md §7).

The names come from the loaded packs (:mod:`ppu.packs`), plus any added by :func:`register_type`.
Types are import paths, so loading a lab file does not import torch or bluesky unless the lab
uses a backend that needs them. A user plug-in is named by ``module:Class`` directly.
"""

from __future__ import annotations

import importlib
from typing import Any

from pydantic import ValidationError

from ppu import packs
from ppu.backends.base import Backend
from ppu.errors import ConfigError

BACKEND_TYPES: dict[str, str] = {}  # added by hand (register_type); the packs' types come first


def register_type(name: str, path: str) -> None:
    BACKEND_TYPES[name] = path


def known_types() -> dict[str, str]:
    return {**BACKEND_TYPES, **packs.active().backend_types()}


def backend_class(type_name: str) -> type[Backend]:
    types = known_types()
    path = types.get(type_name, type_name)
    if ":" not in path:
        raise ConfigError(f"unknown backend type {type_name!r}", field="backends.type",
                          hint=f"use one of {', '.join(sorted(types))} or 'module:Class'; a type of another pack "
                               "needs that pack installed and listed under 'packs:' (ppu packs lists them)")
    module, _, attr = path.partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"backend type {type_name!r} cannot be loaded from {path}: {exc}",
                          field="backends.type", hint="is the optional extra for it installed?") from exc
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise ConfigError(f"{path} is not a ppu Backend", field="backends.type")
    return cls


def check_entry(raw: dict[str, Any], where: str = "backends") -> tuple[type[Backend], Any]:
    """The backend class of a lab-file entry and its validated config; ConfigError naming the field
    (under ``where``: ``backends.2`` for the lab file's third entry)."""
    if "type" not in raw:
        raise ConfigError("a backend entry needs a 'type'", field="backends", hint=f"entry: {raw}")
    cls = backend_class(raw["type"])
    try:
        return cls, cls.Config.model_validate(raw)
    except ValidationError as exc:
        e = exc.errors()[0]
        loc = ".".join(str(p) for p in e["loc"])
        hint = f"{cls.__name__} has no field {loc!r}; see its Config for the fields it takes" \
            if e["type"] == "extra_forbidden" else None
        raise ConfigError(f"backend {raw.get('name', '?')}: {loc}: {e['msg'].removeprefix('Value error, ')}",
                          field=f"{where}.{loc}", hint=hint) from None


def build_backend(raw: dict[str, Any]) -> Backend:
    cls, cfg = check_entry(raw)
    return cls(cfg)
