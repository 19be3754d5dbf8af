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


def build_backend(raw: dict[str, Any]) -> Backend:
    if "type" not in raw:
        raise ConfigError("a backend entry needs a 'type'", field="backends", hint=f"entry: {raw}")
    cls = backend_class(raw["type"])
    try:
        cfg = cls.Config.model_validate(raw)
    except ValidationError as exc:
        e = exc.errors()[0]
        loc = ".".join(str(p) for p in e["loc"])
        raise ConfigError(f"backend {raw.get('name', '?')}: {loc}: {e['msg']}", field=f"backends.{loc}") from None
    return cls(cfg)
