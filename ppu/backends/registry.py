"""Backend types by name, rebuilt from ``{type: ..., **kwargs}`` in the lab config (STYLE.md §7).

Types are import paths, so loading a lab file does not import torch or bluesky unless the lab
uses a backend that needs them. A user plug-in is named by ``module:Class`` directly.
"""

from __future__ import annotations

import importlib
from typing import Any

from pydantic import ValidationError

from ppu.backends.base import Backend
from ppu.errors import ConfigError

BACKEND_TYPES: dict[str, str] = {
    "echo": "ppu.backends.echo:EchoBackend",
    "torch": "ppu.digital.torch_backend:TorchBackend",
    "surrogate_trainer": "ppu.drivers.mof.trainer:SurrogateTrainerBackend",
    "mlip": "ppu.drivers.mof.mlip:MLIPBackend",
    "synthesis_robot": "ppu.backends.physical:SynthesisBackend",
    "xrd": "ppu.backends.physical:XRDBackend",
    "uvvis": "ppu.backends.physical:UVVisBackend",
    "gas_sorption": "ppu.backends.physical:GasSorptionBackend",
}


def register_type(name: str, path: str) -> None:
    BACKEND_TYPES[name] = path


def backend_class(type_name: str) -> type[Backend]:
    path = BACKEND_TYPES.get(type_name, type_name)
    if ":" not in path:
        raise ConfigError(f"unknown backend type {type_name!r}", field="backends.type",
                          hint=f"use one of {', '.join(sorted(BACKEND_TYPES))} or 'module:Class'")
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
