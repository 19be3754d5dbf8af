"""The backend contract for every backend type of every installed pack (parametrised from the packs).

One test class per (pack, backend type), built from the case the pack names in
``Pack.conformance``. A backend type without a case fails ``test_every_backend_type_has_a_case``.
"""

from __future__ import annotations

import importlib.util

import pytest
from conformance import CaseContract

from ppu import packs

REGISTRY = packs.active()


def test_every_backend_type_has_a_case() -> None:
    missing = [f"{p.name}:{t}" for p in REGISTRY.packs.values() for t in p.backend_types if t not in p.conformance]
    assert missing == [], f"backend types without a conformance case: {missing}"


def _contract(pack: str, type_: str, path: str) -> type[CaseContract]:
    case = packs.resolve(path, "conformance case")()
    absent = [m for m in case.requires if importlib.util.find_spec(m) is None]
    marks = [pytest.mark.skip(reason=f"needs {', '.join(absent)} (an optional extra)")] if absent else []
    if "ray" in case.requires and not absent:
        # the session's one local Ray (conftest): each backend joins it instead of starting and
        # stopping a Ray of its own per test (seconds each; a Ray started for you is tested in
        # test_digital_ray_config)
        marks.append(pytest.mark.usefixtures("ray_local"))
    cls = type(f"Test_{pack}_{type_}", (CaseContract,), {"case": case, "__module__": __name__})
    for m in marks:
        cls = m(cls)
    return cls


for _pack in REGISTRY.packs.values():
    for _type, _path in _pack.conformance.items():
        _cls = _contract(_pack.name, _type, _path)
        globals()[_cls.__name__] = _cls
