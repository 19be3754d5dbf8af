"""Packages whose names load on first use (PEP 562), so that importing a package costs nothing.

A pack's registration module sits inside its package, so importing it runs the package's
``__init__``. When that ``__init__`` imported every instrument module (ophyd, bluesky, scipy),
every orchestrator and worker process paid a second or more to start. Such a package says which
module holds each public name and takes its module ``__getattr__`` and ``__dir__`` from
:func:`exports`.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any


class _Package(types.ModuleType):
    """A lazy package whose public names win over its submodules of the same name.

    Importing a submodule binds it on its package (``transfer.py`` as ``package.transfer``). An
    ``__init__`` that imported its names did so after its submodules, so a public ``transfer`` (the
    plan) replaced the module; lazily, the module would come later and hide the plan for good.
    """

    _lazy_names: frozenset[str] = frozenset()

    def __setattr__(self, name: str, value: Any) -> None:
        if (name in self._lazy_names and isinstance(value, types.ModuleType)
                and value.__name__ == f"{self.__name__}.{name}"):
            return  # the submodule stays in sys.modules; the package's name means its public object
        super().__setattr__(name, value)


def exports(
    package: str, modules: Mapping[str, Iterable[str]]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A package's ``__getattr__`` and ``__dir__``, from its modules and the public names each holds.

    A module is named relative to the package (``".analysis"``) or in full. A name is imported on
    first use and then kept in the package, so later uses are plain attribute reads.
    """
    where = {name: module for module, names in modules.items() for name in names}
    package_module = sys.modules[package]
    namespace = vars(package_module)
    package_module.__class__ = type("Package", (_Package,), {"_lazy_names": frozenset(where)})

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(where))

    return __getattr__, __dir__
