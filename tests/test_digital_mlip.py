"""The optional CHGNet backend: prototypes (always tested) and energies (only with ppu[mlip])."""

from __future__ import annotations

import asyncio
import importlib.util
import math

import numpy as np
import pytest

from ppu.backends.base import TaskRun
from ppu.backends.registry import build_backend
from ppu.drivers.mof.capabilities import Candidate
from ppu.drivers.mof.mlip import INSTALL_HINT, rocksalt_prototype
from ppu.errors import ConfigError, ValidationFailed
from ppu.models import ResultStatus


def test_rocksalt_prototype_has_the_candidates_cations():
    c = Candidate(composition={"Mg": 0.5, "Zn": 0.3, "Cu": 0.2})
    p = rocksalt_prototype(c, supercell=2)
    assert p.formula_counts == {"Mg": 16, "Zn": 10, "Cu": 6, "O": 32}
    assert p.frac_coords.shape == (64, 3) and ((p.frac_coords >= 0) & (p.frac_coords < 1)).all()
    assert len({tuple(np.round(f, 6)) for f in p.frac_coords}) == 64  # no two atoms on one site
    a_cell = 2 * ((16 * 72 + 10 * 74 + 6 * 73) / 32 + 140) / 100  # Vegard on the cell actually built
    assert p.lattice[0, 0] == pytest.approx(2 * a_cell)
    again = rocksalt_prototype(c, supercell=2)
    assert again.species == p.species  # the same candidate always gives the same ordering
    with pytest.raises(ValidationFailed):
        rocksalt_prototype(Candidate(composition={"K": 1.0}))


@pytest.mark.skipif(importlib.util.find_spec("chgnet") is not None, reason="chgnet is installed here")
def test_missing_extra_is_a_config_error_with_the_install_hint():
    with pytest.raises(ConfigError) as err:
        build_backend({"type": "mlip", "name": "chgnet"})
    assert err.value.hint == INSTALL_HINT


@pytest.mark.mlip
def test_chgnet_energies():
    pytest.importorskip("chgnet")
    backend = build_backend({"type": "mlip", "name": "chgnet", "supercell": 1, "relax_steps": 5})
    cand = {"composition": {"Mg": 0.5, "Ni": 0.5}}
    runs = [TaskRun(task_id="e", attempt=1, capability="predict.energy", inputs={"candidate": cand}),
            TaskRun(task_id="r", attempt=1, capability="relax.energy", inputs={"candidate": cand})]
    results = asyncio.run(backend.run(runs, lambda *a: None))
    for r in results:
        assert r.status is ResultStatus.succeeded, r.error
        assert math.isfinite(r.outputs["energy_ev_per_atom"]) and r.outputs["energy_ev_per_atom"] < 0
    asyncio.run(backend.close())
