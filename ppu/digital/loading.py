"""Where a served model comes from, and loading it: a capability's :class:`ModelSpec` (a factory
and weights, a ``torch.export`` archive, a TorchScript file or a model registry), built on a device
as a :class:`LoadedModel` (its module, name, version, weights' sha256 and dtype).

Shared by the ``torch`` backend and the ``ray`` backend's actors, which load the same specs.
"""

from __future__ import annotations

import importlib
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import nn

from ppu import capabilities as caps
from ppu.digital.model_registry import ModelRegistry, file_sha256
from ppu.errors import ConfigError, PPUError
from ppu.models import Strict

__all__ = ["LoadedModel", "ModelSpec", "check_encoders", "load_model", "load_registry_version", "select_device",
           "split_arrays"]


def select_device(requested: str = "auto") -> torch.device:
    """``auto``: ``cuda`` when ``torch.cuda.is_available()``, else ``cpu``. An explicit request is checked."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(requested)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {requested!r} requested but CUDA is not available", field="device",
                          hint="use device: auto (falls back to cpu) or cpu")
    return dev


class ModelSpec(Strict):
    """Where one capability's model comes from (exactly one source)."""

    factory: str | None = Field(None, pattern=r"^[\w.]+:[\w.]+$", description="'module:fn' -> nn.Module")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="arguments for the factory")
    weights: str | None = Field(None, description="state_dict file for the factory's module")
    exported: str | None = Field(None, description="torch.export archive (.pt2)")
    torchscript: str | None = Field(None, description="TorchScript file")
    registry: str | None = Field(None, description="model registry root; serve the newest version of target")
    target: str | None = Field(None, description="registry target; default: capability less 'predict.'")
    name: str | None = Field(None, description="model name in provenance; default from the source")
    encoder: str | None = Field(None, pattern=r"^[\w.]+:[\w.]+$",
                                description="'module:function': inputs -> feature row; default: the capability's")
    decoder: str | None = Field(None, pattern=r"^[\w.]+:[\w.]+$",
                                description="'module:function': (mean, std, version) -> outputs; default: the "
                                "capability's, else {mean, std, model_version}")
    version: str | None = Field(None, description="model version in provenance; default from the source")

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        given = [k for k in ("factory", "exported", "torchscript", "registry") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("give exactly one of factory, exported, torchscript, registry "
                             f"(got {given or 'none'})")
        if self.weights and not self.factory:
            raise ValueError("weights go with a factory")
        return self


def check_encoders(models: dict[str, ModelSpec]) -> None:
    """A backend config's ``models`` validator: every capability is known and has an encoder (its own or
    the spec's). Raises ValueError, so that pydantic names the field."""
    for name, spec in models.items():
        try:
            cap = caps.get(name)
        except PPUError as exc:
            raise ValueError(str(exc)) from None
        if not (spec.encoder or cap.encoder):
            raise ValueError(f"{name} declares no encoder: name one with models.{name}.encoder "
                             "('module:function' turning the inputs into one row of features)")


@dataclass
class LoadedModel:
    module: nn.Module
    name: str
    version: str
    weights_sha256: str | None
    dtype: torch.dtype
    registry_number: int | None = None


def _import(path: str) -> Any:
    module, _, attr = path.partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot import {path}: {exc}", field="models.factory") from exc
    return obj


def _module_dtype(m: nn.Module) -> torch.dtype:
    for t in [*m.parameters(), *m.buffers()]:
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def _finish(module: nn.Module, device: torch.device, half: bool, name: str, version: str | None,
            sha: str | None, number: int | None = None) -> LoadedModel:
    module = module.to(device)
    try:
        module = module.eval()
    except NotImplementedError:  # a torch.export module is fixed in the mode it was exported in
        pass
    if half and device.type == "cuda" and getattr(module, "supports_half", True):
        module = module.half()
    return LoadedModel(module, name, version or (f"sha-{sha[:12]}" if sha else "unversioned"), sha,
                       _module_dtype(module), number)


def load_model(spec: ModelSpec, capability: str, device: torch.device,
               half: bool = False, features: str | None = None) -> LoadedModel | None:
    """Build the model a spec names, on ``device``. None when a registry has no version yet."""
    if spec.registry:
        target = spec.target or capability.removeprefix("predict.")
        ver = ModelRegistry(spec.registry).latest(target)
        return None if ver is None else load_registry_version(ver.path, device, half, spec.name, features)
    if spec.factory:
        module = _import(spec.factory)(**spec.kwargs)
        sha = None
        if spec.weights:
            field = f"models.{capability}.weights"
            sha = file_sha256(_existing(spec.weights, field))
            _load_weights(module, spec.weights, field, spec.factory)
        return _finish(module, device, half, spec.name or spec.factory, spec.version, sha)
    path = spec.exported or spec.torchscript
    assert path is not None
    field = f"models.{capability}.{'exported' if spec.exported else 'torchscript'}"
    sha = file_sha256(_existing(path, field))
    module = _load_file(path, field, exported=bool(spec.exported))
    return _finish(module, device, half, spec.name or Path(path).name, spec.version, sha)


def _load_file(path: str, field: str, exported: bool) -> nn.Module:
    """A torch.export archive or a TorchScript file; ConfigError naming ``field`` when torch cannot read it
    (a damaged or wrong file: torch's own error kept to its first lines, its logged traceback muted)."""
    export_log = logging.getLogger("torch.export")
    level = export_log.level
    try:
        with warnings.catch_warnings():
            # torch >= 2.10 deprecates TorchScript; files made with it still load. Muted only here.
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.load` is deprecated",
                                    category=DeprecationWarning)
            export_log.setLevel(logging.ERROR)  # torch.export.load logs each format it tried, with tracebacks
            module: nn.Module = (torch.export.load(path).module() if exported
                                 else torch.jit.load(path, map_location="cpu"))
    except Exception as exc:
        kind = "a torch.export archive (.pt2)" if exported else "a TorchScript file"
        raise ConfigError(f"{path} is not {kind} torch can load: {_brief(exc)}", field=field,
                          hint=("save it with torch.export.save(torch.export.export(model, example), path)"
                                if exported else "save it with torch.jit.save(torch.jit.script(model), path)")
                          ) from None
    finally:
        export_log.setLevel(level)
    return module


def _existing(path: str, field: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{path} " + ("is a folder" if p.is_dir() else "does not exist"), field=field,
                          hint="give the path of the model file, absolute or relative to where the worker runs")
    return path


def _load_weights(module: nn.Module, path: str, field: str, factory: str) -> None:
    """A state_dict file into the factory's module; ConfigError naming ``field`` when it cannot be read or
    does not fit (a torch error of many lines, kept to its first few)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"{path} is not a state_dict torch can load: {_brief(exc)}", field=field,
                          hint="save it with torch.save(model.state_dict(), path)") from None
    try:
        module.load_state_dict(state)
    except Exception as exc:
        raise ConfigError(f"{path} does not fit the model {factory} builds: {_brief(exc)}", field=field,
                          hint="check the factory's kwargs (layer sizes) against the ones the weights were "
                          "trained with") from None


def _brief(exc: BaseException, lines: int = 4, chars: int = 600) -> str:
    text = "; ".join(part.strip().rstrip(":") for part in str(exc).splitlines()[:lines] if part.strip())
    return text if len(text) <= chars else text[:chars] + "..."


def load_registry_version(path: Path, device: torch.device, half: bool = False,
                          name: str | None = None, features: str | None = None) -> LoadedModel:
    """``features``: the version of the encoder that will feed it; a model trained on another is refused."""
    from ppu.digital.model_registry import ModelVersion

    ver = ModelVersion(path.parent.name, int(path.name[1:]), path)
    meta = ver.meta()
    if features is not None and meta.get("featurizer") != features:
        raise ConfigError(f"{path} was trained on features {meta.get('featurizer')!r}, its encoder makes "
                          f"{features!r}", field="models.registry", hint="retrain the surrogate")
    sha = file_sha256(ver.weights_path)
    if sha != meta.get("weights_sha256"):
        raise ConfigError(f"{ver.weights_path} does not match the sha256 in its meta.json",
                          field="models.registry", hint="the file was changed after publishing: retrain")
    module = _import(meta["factory"])(**meta["kwargs"])
    module.load_state_dict(torch.load(ver.weights_path, map_location="cpu", weights_only=True))
    return _finish(module, device, half, name or meta.get("name", ver.target), ver.version, sha, ver.number)


def split_arrays(out: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A model's output as float64 (mean, std) arrays of ``n`` (std 0 when it gives the mean only)."""
    if isinstance(out, tuple | list):
        mean, std = out[0], out[1]
    elif out.dim() == 2 and out.shape[-1] == 2:
        mean, std = out[:, 0], out[:, 1]
    else:
        mean, std = out.reshape(n), torch.zeros(n)
    return (mean.reshape(n).detach().double().cpu().numpy(), std.reshape(n).detach().double().cpu().numpy())
