"""Where a served model comes from, and loading it: a capability's :class:`ModelSpec` (a factory
and weights, a ``torch.export`` archive, a TorchScript file or a model registry), built on a device
as a :class:`LoadedModel` (its module, name, version, weights' sha256 and dtype).

Shared by the ``torch`` backend and the ``ray`` backend's actors, which load the same specs.

A model is user code: whatever it raises while it is built or warmed up becomes a
:class:`~ppu.errors.ConfigError` naming its field (``models.<capability>.factory``, ``.kwargs``,
``.weights``, ``.exported``, ``.torchscript``, ``.registry``), never a traceback. :func:`warm_up`
runs the capability's example through the encoder and the model at start; :func:`run_model` is
every forward pass. A model that does not fit its capability (rows of another width, a batch size
fixed when it was exported, outputs the decoder cannot read) raises :class:`ModelMisfit` in the
same words at start and at run time, where the backends fail the attempt as not retryable: every
batch would fail the same way.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import nn

from ppu import capabilities as caps
from ppu.digital.coding import Coding
from ppu.digital.model_registry import ModelRegistry, file_sha256
from ppu.errors import ConfigError, ModelMisfit, PPUError
from ppu.models import Strict

__all__ = ["LoadedModel", "ModelMisfit", "ModelSpec", "check_encoders", "load_model", "load_registry_version",
           "run_model", "select_device", "split_arrays", "warm_up"]

_SOURCES = ("factory", "exported", "torchscript", "registry")
_OUTPUTS = "[B, 2] (mean, std), a (mean, std) pair, or [B] / [B, 1] (mean only)"
_DYNAMIC_BATCH = ("export it with a dynamic batch dimension: torch.export.export(model, (x,), "
                  "dynamic_shapes={{{arg!r}: {{0: torch.export.Dim('batch')}}}}), {arg} being forward's argument")


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
        given = [k for k in _SOURCES if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("give exactly one of factory, exported, torchscript, registry "
                             f"(got {given or 'none'})")
        if self.weights and not self.factory:
            raise ValueError("weights go with a factory")
        return self

    def source(self) -> str:
        """The key that names where the model comes from: factory, exported, torchscript or registry."""
        return next(k for k in _SOURCES if getattr(self, k))


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
    field: str = "models"  # the lab-file field it comes from (models.<capability>.<source>): errors name it


def _import(path: str) -> Any:
    module, _, attr = path.partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot import {path}: {exc}", field="models.factory") from None
    return obj


def _build(factory: str, kwargs: dict[str, Any], field: str, kwargs_field: str) -> nn.Module:
    """The module a factory makes from its kwargs; a ConfigError naming ``kwargs_field`` when the kwargs do
    not fit its parameters, ``field`` when it cannot be imported, raises, or makes something else."""
    try:
        fn = _import(factory)
    except ConfigError as exc:
        exc.field = field  # whose factory it is
        raise
    try:
        params: inspect.Signature | None = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin without a signature: called as it is
        params = None
    if params is not None:
        takes = params.parameters.values()
        unknown = [] if any(p.kind is p.VAR_KEYWORD for p in takes) else \
            sorted(k for k in kwargs if k not in params.parameters)
        try:
            if unknown:
                raise TypeError(f"it takes no {', '.join(map(repr, unknown))}")
            params.bind(**kwargs)
        except TypeError as exc:
            names = ", ".join(p.name if p.default is p.empty else f"{p.name}={p.default!r}" for p in takes
                              if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))
            raise ConfigError(f"{factory} does not take the kwargs {kwargs}: {exc}", field=kwargs_field,
                              hint=f"its parameters: {names or 'none'}") from None
    try:
        module = fn(**kwargs)
    except Exception as exc:
        raise ConfigError(f"{factory}(**kwargs) raised {type(exc).__name__}: {_brief(exc)}", field=field,
                          hint=f"check its kwargs ({kwargs_field}: {kwargs})" if kwargs else
                          "run the factory by hand to see why") from None
    if not isinstance(module, nn.Module):
        raise ConfigError(f"{factory} returned {type(module).__name__}, not a torch nn.Module", field=field,
                          hint="a factory is a 'module:function' (or class) that "
                          "returns the model, an nn.Module") from None
    return module


def _module_dtype(m: nn.Module) -> torch.dtype:
    for t in [*m.parameters(), *m.buffers()]:
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def _finish(module: nn.Module, device: torch.device, half: bool, name: str, version: str | None,
            sha: str | None, number: int | None = None, field: str = "models") -> LoadedModel:
    try:
        module = module.to(device)
    except Exception as exc:
        raise ConfigError(f"the model cannot move to {device}: {type(exc).__name__}: {_brief(exc)}",
                          field=field) from None
    try:
        module = module.eval()
    except NotImplementedError:  # a torch.export module is fixed in the mode it was exported in
        pass
    if half and device.type == "cuda" and getattr(module, "supports_half", True):
        module = module.half()
    return LoadedModel(module, name, version or (f"sha-{sha[:12]}" if sha else "unversioned"), sha,
                       _module_dtype(module), number, field)


def load_model(spec: ModelSpec, capability: str, device: torch.device,
               half: bool = False, features: str | None = None) -> LoadedModel | None:
    """Build the model a spec names, on ``device``. None when a registry has no version yet."""
    if spec.registry:
        target = spec.target or capability.removeprefix("predict.")
        ver = ModelRegistry(spec.registry).latest(target)
        return None if ver is None else load_registry_version(ver.path, device, half, spec.name, features,
                                                              capability)
    field = f"models.{capability}.{spec.source()}"
    if spec.factory:
        module = _build(spec.factory, spec.kwargs, field, f"models.{capability}.kwargs")
        sha = None
        if spec.weights:
            weights = f"models.{capability}.weights"
            sha = file_sha256(_existing(spec.weights, weights))
            _load_weights(module, spec.weights, weights, spec.factory)
        return _finish(module, device, half, spec.name or spec.factory, spec.version, sha, field=field)
    path = spec.exported or spec.torchscript
    assert path is not None
    sha = file_sha256(_existing(path, field))
    module = _load_file(path, field, exported=bool(spec.exported))
    return _finish(module, device, half, spec.name or Path(path).name, spec.version, sha, field=field)


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
    text = str(exc)
    if "Traceback of TorchScript" in text:  # TorchScript puts the error itself last, after its traceback
        text = [line for line in text.splitlines() if line.strip()][-1]
    text = "; ".join(part.strip().rstrip(":") for part in text.splitlines()[:lines] if part.strip())
    return text if len(text) <= chars else text[:chars] + "..."


def load_registry_version(path: Path, device: torch.device, half: bool = False,
                          name: str | None = None, features: str | None = None,
                          capability: str | None = None) -> LoadedModel:
    """``features``: the version of the encoder that will feed it; a model trained on another is refused."""
    from ppu.digital.model_registry import ModelVersion

    field = f"models.{capability}.registry" if capability else "models.registry"
    ver = ModelVersion(path.parent.name, int(path.name[1:]), path)
    meta = ver.meta()
    if features is not None and meta.get("featurizer") != features:
        raise ConfigError(f"{path} was trained on features {meta.get('featurizer')!r}, its encoder makes "
                          f"{features!r}", field=field, hint="retrain the surrogate")
    sha = file_sha256(ver.weights_path)
    if sha != meta.get("weights_sha256"):
        raise ConfigError(f"{ver.weights_path} does not match the sha256 in its meta.json",
                          field=field, hint="the file was changed after publishing: retrain")
    module = _build(meta["factory"], meta["kwargs"], field, field)
    _load_weights(module, str(ver.weights_path), field, meta["factory"])
    return _finish(module, device, half, name or meta.get("name", ver.target), ver.version, sha, ver.number, field)


class _OutputMisfit(ValueError):
    """Outputs of a shape the decoder cannot read (the words; :func:`run_model` adds the field)."""


def split_arrays(out: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A model's output as float64 (mean, std) arrays of ``n`` (std 0 when it gives the mean only).
    Accepts ``[n, 2]``, a (mean, std) pair of ``n`` each, or ``n`` values (``[n]``, ``[n, 1]``); anything
    else raises ValueError saying what came back."""
    if isinstance(out, tuple | list):
        if len(out) < 2 or not all(isinstance(t, torch.Tensor) and t.numel() == n for t in out[:2]):
            got = ", ".join(_shape(t) for t in out)
            raise _OutputMisfit(f"the model returned a {type(out).__name__} of ({got}) for {n} rows")
        mean, std = out[0], out[1]
    elif not isinstance(out, torch.Tensor):
        raise _OutputMisfit(f"the model returned a {type(out).__name__}, not a tensor, for {n} rows")
    elif out.dim() == 2 and out.shape == (n, 2):
        mean, std = out[:, 0], out[:, 1]
    elif out.numel() == n:
        mean, std = out.reshape(n), torch.zeros(n)
    else:
        raise _OutputMisfit(f"the model returned shape {_shape(out)} for {n} rows")
    return (mean.reshape(n).detach().double().cpu().numpy(), std.reshape(n).detach().double().cpu().numpy())


def _shape(t: Any) -> str:
    return str(list(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__


def run_model(m: LoadedModel, x: torch.Tensor, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """One forward pass of ``x`` (rows of features) under inference mode, as float64 (mean, std) arrays.

    :class:`ModelMisfit` naming the model's field when it does not take such rows (their width, or a
    batch size fixed at export) or returns outputs of another shape: the same words at start and at run
    time. Any other error of the model's is raised as it came (out of memory may pass on another attempt)."""
    n = x.shape[0]
    try:
        with torch.inference_mode():
            out = m.module(x.to(device, m.dtype, non_blocking=True))
    except Exception as exc:
        misfit = _input_misfit(m, tuple(x.shape), exc)
        if misfit is None:
            raise
        raise misfit from None
    try:
        return split_arrays(out, n)
    except _OutputMisfit as exc:
        raise ModelMisfit(f"{exc}; the decoder of {_capability(m)} reads {_OUTPUTS}", field=m.field,
                          hint="give the model a last layer of 2 outputs (mean, std) or 1 (mean)") from None


def _capability(m: LoadedModel) -> str:
    parts = m.field.split(".")
    return ".".join(parts[1:-1]) or "its capability"


# what torch says when a tensor's shape does not fit: a Linear layer, a torch.export guard (two wordings),
# then shape errors without numbers we can place
_MATMUL = re.compile(r"mat1 and mat2 shapes cannot be multiplied \((\d+)x(\d+) and (\d+)x(\d+)\)")
_GUARD = re.compile(r"Guard failed: (\w+)\.size\(\)\[(\d+)\] == (\d+)")
_GUARD_NEW = re.compile(r"\.shape\[(\d+)\] to be equal to (\d+), but got (\d+)")
_SHAPE_WORDS = re.compile(r"size mismatch|must match the size of tensor|is invalid for input of size|shape mismatch|"
                          r"to have \d+ channels|[Ee]xpected .*\b(size|shape|dimension)|cannot be multiplied|"
                          r"Dimension out of range")


def _input_misfit(m: LoadedModel, shape: tuple[int, ...], exc: BaseException) -> ModelMisfit | None:
    """The words for an error that says the model does not take rows of ``shape``; None for any other."""
    text = str(exc)
    n, width = shape[0], shape[-1]
    cap = _capability(m)
    encoder = f"the encoder of {cap} makes rows of {width} features"
    spec, _, source = m.field.rpartition(".")
    make = {"factory": "build the model (its kwargs) for", "exported": "export the model for",
            "torchscript": "script the model for", "registry": "train the model on"}.get(source, "make the model for")
    hint = f"{make} {width} input features, or name the encoder it was made for in {spec}.encoder"
    if (hit := _MATMUL.search(text)) and int(hit[2]) == width:
        return ModelMisfit(f"the model takes rows of {hit[3]} features, {encoder}", field=m.field, hint=hint)
    guard = _GUARD.search(text)
    found = (guard[1], int(guard[2]), int(guard[3])) if guard else None
    if found is None and (new := _GUARD_NEW.search(text)):
        found = ((_exported_input(m.module) or ("x", []))[0], int(new[1]), int(new[2]))
    if found is not None:
        arg, dim, want = found
        if dim == 0:
            return _fixed_batch(m, want, n, arg)
        if dim == len(shape) - 1:
            return ModelMisfit(f"the exported model takes rows of {want} features, {encoder}", field=m.field,
                               hint=hint)
    if _MATMUL.search(text) or _SHAPE_WORDS.search(text) or guard:
        return ModelMisfit(f"the model fails on {n} rows of {width} features (from the encoder of {cap}): "
                           f"{_brief(exc)}", field=m.field, hint=hint)
    return None


def _fixed_batch(m: LoadedModel, fixed: int, n: int, arg: str) -> ModelMisfit:
    return ModelMisfit(f"the model was exported with its batch size fixed to {fixed}; batches here have any "
                       f"size (this one {n} rows)", field=m.field, hint=_DYNAMIC_BATCH.format(arg=arg))


def _exported_input(module: nn.Module) -> tuple[str, list[int | None]] | None:
    """(name, dims) of a torch.export module's first input: an int where the dimension was fixed when it
    was exported, None where it is dynamic. None for other modules."""
    graph = getattr(module, "graph", None)
    if not isinstance(graph, torch.fx.Graph):
        return None
    for node in graph.nodes:
        if node.op == "placeholder":
            shape = getattr(node.meta.get("val"), "shape", None)
            if shape is None:
                return None
            return str(node.target), [d if isinstance(d, int) else None for d in shape]
    return None


def warm_up(m: LoadedModel, coding: Coding, device: torch.device) -> None:
    """At start: the capability's example, twice, through its encoder and the model, outputs read as the
    decoder reads them. Whatever fails is a ConfigError naming the field: the model's (a
    :class:`ModelMisfit` where the shapes say why), the encoder's where it fails on its own example.
    Nothing to do when the capability declares no example."""
    if coding.example is None:
        return
    cap = coding.capability
    try:
        x = torch.from_numpy(np.ascontiguousarray(coding.encode_batch([coding.example] * 2), dtype=np.float64))
        if x.dim() != 2 or x.shape[0] != 2:
            raise ValueError(f"it gave shape {list(x.shape)} for 2 rows, not [2, features]")
    except Exception as exc:
        raise ConfigError(f"the encoder of {cap} fails on the capability's example: {type(exc).__name__}: "
                          f"{_brief(exc)}", field=f"models.{cap}.encoder") from None
    exported = _exported_input(m.module) if m.field.endswith(".exported") else None
    if exported is not None and exported[1] and exported[1][0] is not None:  # fixed at export: maybe to 2
        raise _fixed_batch(m, exported[1][0], x.shape[0], exported[0])
    try:
        run_model(m, x, device)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"the model fails on the example of {cap} ({x.shape[0]} rows of {x.shape[1]} features): "
                          f"{type(exc).__name__}: {_brief(exc)}", field=m.field,
                          hint="run the model by hand on such rows to see why") from None
