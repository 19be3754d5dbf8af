"""A scientist's own Bluesky plans as tasks: the ``bluesky.plan`` capability.

A lab allows plans per instrument (``plans:`` in its backend entry, as bluesky-queueserver allows plans
and devices): stock ones by name (``count``, ``scan``, ``rel_scan``, ``list_scan``, ``grid_scan``,
``rel_grid_scan``, ``adaptive_scan``, ``mv``) or a user's own as ``module:function``. A task names the
plan and its arguments as JSON; before anything moves, the arguments are bound to the plan's signature,
and every device they name must be one of that instrument's devices (``"det1"``, or a component such as
``"stage.x"``). A plan runs on the instrument's RunEngine like the shipped plans, with the task's
metadata in its start document and its documents kept by the same sink; it is ``once`` work, so the
autonomy policy approves it like any other physical action and an interrupted one goes to review.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable
from typing import Any

from bluesky.utils import Msg
from ophyd import Device

STOCK: dict[str, str] = {name: f"bluesky.plans:{name}" for name in (
    "count", "scan", "rel_scan", "list_scan", "rel_list_scan", "grid_scan", "rel_grid_scan", "adaptive_scan")}
STOCK["mv"] = "bluesky.plan_stubs:mv"
DEVICE_PARAMS = {"detectors", "detector", "motor", "motors", "device", "devices"}
POSITIONAL = "*args"


class PlanRefused(ValueError):
    """The plan or its arguments are not allowed here; nothing moved."""


def _load(path: str) -> Callable[..., Any]:
    module, _, attr = STOCK.get(path, path).partition(":")
    if not attr:
        raise PlanRefused(f"plan {path!r} is neither a stock plan ({', '.join(sorted(STOCK))}) nor 'module:function'")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise PlanRefused(f"plan {path!r} cannot be loaded: {exc}") from None
    if not callable(fn):
        raise PlanRefused(f"{path!r} is not a plan (not callable)")
    return fn  # type: ignore[no-any-return]


def plan_name(path: str) -> str:
    return path.rpartition(":")[2]


class AllowedPlans:
    """The plans one instrument allows, by short name."""

    def __init__(self, paths: Iterable[str]):
        self.plans: dict[str, Callable[..., Any]] = {}
        for path in paths:
            name = plan_name(path)
            if name in self.plans:
                raise PlanRefused(f"two allowed plans are both called {name!r}")
            self.plans[name] = _load(path)

    def describe(self) -> list[dict[str, str]]:
        out = []
        for name, fn in sorted(self.plans.items()):
            doc = (inspect.getdoc(fn) or "").strip().splitlines()
            out.append({"plan": name, "parameters": str(inspect.signature(fn)), "summary": doc[0] if doc else ""})
        return out

    def bind(self, plan: str, args: dict[str, Any], devices: dict[str, Device],
             md: dict[str, Any]) -> Callable[[], Iterable[Msg]]:
        """A plan factory for ``plan(**args)`` with device names resolved; raises PlanRefused."""
        fn = self.plans.get(plan)
        if fn is None:
            raise PlanRefused(f"plan {plan!r} is not allowed on this instrument; allowed: "
                              f"{', '.join(sorted(self.plans)) or 'none'}")
        kwargs = dict(args)
        positional = kwargs.pop(POSITIONAL, [])
        if not isinstance(positional, list):
            raise PlanRefused(f"'{POSITIONAL}' must be a list")
        names = _device_names(devices)
        pos = [_resolve(v, names, strict=False) for v in positional]
        kw = {k: _resolve(v, names, strict=k in DEVICE_PARAMS, field=k) for k, v in kwargs.items()}
        sig = inspect.signature(fn)
        if "md" in sig.parameters:
            kw["md"] = {**md, **(kw.get("md") or {})}
        try:
            sig.bind(*pos, **kw)
        except TypeError as exc:
            raise PlanRefused(f"arguments do not fit {plan}{sig}: {exc}") from None
        return lambda: fn(*pos, **kw)


def _device_names(devices: dict[str, Device]) -> dict[str, Any]:
    """Every device and every one of its signals, by ``name`` and ``name.component``."""
    out: dict[str, Any] = {}
    for key, dev in devices.items():
        out[key] = dev
        for attr in getattr(dev, "component_names", ()):
            out[f"{key}.{attr}"] = getattr(dev, attr)
    return out


def _resolve(value: Any, names: dict[str, Any], *, strict: bool, field: str = POSITIONAL) -> Any:
    if isinstance(value, list):
        return [_resolve(v, names, strict=strict, field=field) for v in value]
    if isinstance(value, str):
        if value in names:
            return names[value]
        if strict:
            raise PlanRefused(f"{field}: {value!r} is not a device of this instrument; its devices: "
                              f"{', '.join(sorted(names)[:20])}")
    elif strict:
        raise PlanRefused(f"{field}: name devices as strings, got {value!r}")
    return value
