"""The hidden ground truth of the simulated lab: what any candidate really is.

A :class:`World` answers, for a :class:`~ppu.capabilities.Candidate` (composition + anneal), its
true CO2 uptake at 0.15 bar and 298 K, optical band gap, phase purity after synthesis, the chance
that a synthesis succeeds, and the phases it forms. Instruments (``ppu.simulators.mof.instruments``)
turn these into noisy raw signals; nothing else in PPU should read them, except a campaign that
*scores* itself against the truth (``true_optimum``, ``top_threshold``).

Three kinds of world, same interface (``WorldConfig.kind``):

- ``sweet-spots`` (default, :class:`World`): smooth but multi-modal in composition (an
  element-linear baseline plus a few seeded Gaussian "sweet spots"), with a synthesis window in
  temperature that moves with composition. Deterministic for a given ``seed``.
- ``mof74`` (:class:`MOF74World`): a mixed-metal MOF-74 framework whose CO2 uptake comes from its
  open metal sites (Mg >> Ni ~ Co > Zn > Cu, as measured for the single-metal frameworks) and from
  how well it was activated: too cold and solvent stays on the sites, too hot and the framework
  collapses to the oxide, with a collapse temperature that depends on the metal. Mixing metals
  costs a little order and, for seeded metal pairs, gains a little from cooperative binding.
- table (``World.from_csv``): a user's measurements, interpolated (RBF, or nearest neighbour) over
  composition fractions and anneal conditions, clipped to the range the table covers.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import math
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ppu.drivers.mof.capabilities import Candidate
from ppu.drivers.mof.phases import TARGET_PHASE

ELEMENTS: tuple[str, ...] = ("Mg", "Zn", "Cu", "Co", "Ni")
TEMPERATURES_C: tuple[float, ...] = (300.0, 350.0, 400.0, 450.0, 500.0)
DEMO_CSV = Path(__file__).parent / "data" / "demo_world.csv"

# element -> (base CO2 uptake mmol/g, band gap eV, Langmuir affinity bar^-1 contribution)
_ELEMENT_TABLE: dict[str, tuple[float, float, float]] = {
    "Mg": (6.0, 3.9, 10.0), "Zn": (2.6, 3.3, 2.0), "Cu": (2.2, 1.8, 3.0),
    "Co": (3.8, 2.3, 4.0), "Ni": (4.2, 2.9, 6.0),
}
_UNKNOWN_ELEMENT = (1.0, 3.0, 1.0)
OBJECTIVES = ("co2_uptake_mmol_g", "band_gap_ev", "purity", "success_probability")


class WorldConfig(BaseModel):
    """How to build a world. ``csv_path`` set: a table world; otherwise the analytic one."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["sweet-spots", "mof74"] = Field("sweet-spots", description="which analytic world (no csv_path)")
    seed: int = Field(0, description="seeds the analytic world (sweet spots, metal-pair synergies)")
    elements: tuple[str, ...] = Field(ELEMENTS, min_length=1, description="element set of the candidate space")
    n_modes: int = Field(3, ge=0, le=20, description="number of composition sweet spots (analytic world)")
    csv_path: str | None = Field(None, description="a table of measurements; builds a table world")
    interpolation: Literal["rbf", "nearest"] = Field("rbf", description="how a table world interpolates")


class TrueProperties(BaseModel):
    """The truth about one candidate. Fractions in ``phases`` sum to 1."""

    model_config = ConfigDict(extra="forbid")

    co2_uptake_mmol_g: float = Field(ge=0, description="at 0.15 bar, 298 K, for the as-made (impure) solid")
    band_gap_ev: float = Field(gt=0)
    purity: float = Field(ge=0, le=1, description="weight fraction of the target phase after synthesis")
    success_probability: float = Field(ge=0, le=1)
    main_phase: str
    phases: dict[str, float]
    langmuir_b_per_bar: float = Field(gt=0, description="CO2 affinity: the isotherm's curvature")


def _split_phases(purity: float, linker_share: float) -> dict[str, float]:
    rest = 1.0 - purity
    return {TARGET_PHASE: purity, "linker": rest * linker_share, "rocksalt-oxide": rest * (1.0 - linker_share)}


def _main(phases: dict[str, float]) -> str:
    return max(phases, key=lambda k: phases[k])


class World:
    """The analytic world; see the module docstring. Build a table world with :meth:`from_csv`."""

    kind = "analytic"

    def __init__(self, config: WorldConfig | None = None):
        self.config = config or WorldConfig()
        rng = np.random.default_rng(self.config.seed)
        dim = len(self.config.elements)
        self._centers = rng.dirichlet(np.ones(dim), size=self.config.n_modes)
        self._amps = rng.uniform(1.5, 3.5, size=self.config.n_modes)
        self._width = 0.18
        self._gap_wiggle = rng.uniform(-0.15, 0.15, size=dim)

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def from_config(cls, config: WorldConfig | dict | None = None) -> World:
        cfg = config if isinstance(config, WorldConfig) else WorldConfig.model_validate(config or {})
        if cfg.csv_path:
            return TableWorld(cfg)
        if cfg.kind == "mof74":
            return MOF74World(cfg)
        return World(cfg)

    @classmethod
    def from_csv(cls, path: str | Path, *, interpolation: Literal["rbf", "nearest"] = "rbf") -> World:
        return TableWorld(WorldConfig(csv_path=str(path), interpolation=interpolation))

    # ---- truth --------------------------------------------------------------------------------

    def _fractions(self, c: Candidate) -> np.ndarray:
        return np.array([float(c.composition.get(e, 0.0)) for e in self.config.elements])

    def _table(self, c: Candidate) -> tuple[float, float, float]:
        """Composition-weighted element properties, counting unknown elements as a weak diluent."""
        rows = [_ELEMENT_TABLE.get(e, _UNKNOWN_ELEMENT) for e in c.composition]
        w = np.array(list(c.composition.values()))
        arr = np.array(rows)
        u, g, b = (w[:, None] * arr).sum(axis=0)
        return float(u), float(g), float(b)

    def synthesis_window_c(self, c: Candidate) -> tuple[float, float]:
        """Centre and width (C) of the anneal temperatures where the target phase forms."""
        f = c.composition
        centre = 380 + 80 * (f.get("Cu", 0) + f.get("Zn", 0)) - 60 * f.get("Mg", 0) + 40 * f.get("Co", 0)
        return centre, 90.0

    def properties(self, c: Candidate) -> TrueProperties:
        x = self._fractions(c)
        base_u, base_g, base_b = self._table(c)
        bumps = sum(a * math.exp(-float(((x - ctr) ** 2).sum()) / (2 * self._width**2))
                    for a, ctr in zip(self._amps, self._centers, strict=True))
        intrinsic = base_u + bumps
        t_opt, w = self.synthesis_window_c(c)
        dt = c.anneal_temperature_c - t_opt
        crystallinity = 1.0 - math.exp(-max(c.anneal_time_h, 0.0) / 1.0)  # 4 h: 98 % crystalline
        purity = float(np.clip(0.98 * math.exp(-0.5 * (dt / w) ** 2) * crystallinity, 0.02, 0.98))
        linker_share = 1.0 / (1.0 + math.exp(dt / 30.0))  # too cold: linker left; too hot: oxide
        phases = _split_phases(purity, linker_share)
        mix = sum(x[i] * x[j] for i, j in itertools.combinations(range(len(x)), 2))
        gap = base_g - 0.6 * mix + float(self._gap_wiggle @ x) * 0.5
        success = 0.55 + 0.42 * math.exp(-0.5 * (dt / (1.8 * w)) ** 2)
        return TrueProperties(
            co2_uptake_mmol_g=intrinsic * (0.1 + 0.9 * purity), band_gap_ev=float(np.clip(gap, 1.6, 4.3)),
            purity=purity, success_probability=float(np.clip(success, 0.3, 0.97)), main_phase=_main(phases),
            phases=phases, langmuir_b_per_bar=3.0 + base_b,
        )

    # ---- scoring a campaign (the only sanctioned readers of the truth) ------------------------

    def values(self, pool: Sequence[Candidate], objective: str = "co2_uptake_mmol_g") -> np.ndarray:
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; use one of {OBJECTIVES}")
        return np.array([getattr(self.properties(c), objective) for c in pool], dtype=float)

    def true_optimum(self, pool: Sequence[Candidate], objective: str = "co2_uptake_mmol_g") -> tuple[Candidate, float]:
        """The best candidate of ``pool`` and its true value (maximising ``objective``)."""
        if not pool:
            raise ValueError("the candidate pool is empty")
        v = self.values(pool, objective)
        i = int(np.argmax(v))
        return pool[i], float(v[i])

    def top_threshold(self, pool: Sequence[Candidate], fraction: float = 0.01,
                      objective: str = "co2_uptake_mmol_g") -> float:
        """The true value a candidate needs to be in the top ``fraction`` of ``pool``."""
        v = np.sort(self.values(pool, objective))[::-1]
        k = max(1, math.ceil(fraction * len(v)))
        return float(v[k - 1])


# metal -> (CO2 uptake of the fully activated single-metal framework at 0.15 bar, mmol/g; band gap eV;
# Langmuir affinity bar^-1; collapse temperature C). Uptakes follow the order reported for M-MOF-74
# at low pressure (Mg the strongest open-metal site, Cu the weakest); collapse temperatures from
# the order of their thermal stability. Rounded, screening-grade numbers.
_MOF74_METALS: dict[str, tuple[float, float, float, float]] = {
    "Mg": (5.9, 3.9, 12.0, 520.0), "Ni": (4.4, 2.9, 8.0, 470.0), "Co": (4.1, 2.3, 7.0, 450.0),
    "Zn": (2.8, 3.3, 3.0, 430.0), "Cu": (1.9, 1.8, 2.5, 380.0),
}


class MOF74World(World):
    """Mixed-metal MOF-74: uptake from open metal sites times how well the framework was activated."""

    kind = "mof74"

    def __init__(self, config: WorldConfig | None = None):
        super().__init__(config or WorldConfig(kind="mof74"))
        rng = np.random.default_rng(self.config.seed + 74)
        dim = len(self.config.elements)
        # cooperative binding for a few metal pairs (seeded): up to +25 % where both are present
        self._synergy = np.triu(rng.uniform(0.0, 0.25, size=(dim, dim)) * (rng.random((dim, dim)) < 0.3), 1)

    def _metals(self, c: Candidate) -> tuple[float, float, float, float]:
        rows = [_MOF74_METALS.get(e, (1.0, 3.0, 1.0, 400.0)) for e in c.composition]
        w = np.array(list(c.composition.values()))
        u, g, b, t = (w[:, None] * np.array(rows)).sum(axis=0)
        return float(u), float(g), float(b), float(t)

    @staticmethod
    def _window(t_collapse: float) -> tuple[float, float]:
        return t_collapse - 110.0, 70.0

    def synthesis_window_c(self, c: Candidate) -> tuple[float, float]:
        """Activation window: centred 110 C below the framework's collapse temperature."""
        return self._window(self._metals(c)[3])

    def properties(self, c: Candidate) -> TrueProperties:
        x = self._fractions(c)
        base_u, base_g, base_b, t_collapse = self._metals(c)
        mix = sum(x[i] * x[j] for i, j in itertools.combinations(range(len(x)), 2))
        synergy = float(x @ self._synergy @ x) * 4.0  # 4 x_i x_j peaks at 1 for a 50/50 pair
        sites = base_u * (1.0 - 0.35 * mix) * (1.0 + synergy)
        t = c.anneal_temperature_c
        t_opt, w = self._window(t_collapse)  # from the metals already averaged above
        crystallinity = 1.0 - math.exp(-max(c.anneal_time_h, 0.0) / 1.0)
        purity = float(np.clip(0.98 * math.exp(-0.5 * ((t - t_opt) / w) ** 2) * crystallinity, 0.02, 0.98))
        activated = 1.0 / (1.0 + math.exp(-(t - (t_opt - 60.0)) / 18.0))  # solvent leaves the sites
        linker_share = 1.0 / (1.0 + math.exp((t - t_opt) / 30.0))
        phases = _split_phases(purity, linker_share)
        gap = base_g - 0.8 * mix
        success = 0.6 + 0.37 * math.exp(-0.5 * ((t - t_opt) / (1.8 * w)) ** 2) - 0.15 * (t > t_collapse)
        return TrueProperties(
            co2_uptake_mmol_g=sites * activated * (0.1 + 0.9 * purity), band_gap_ev=float(np.clip(gap, 1.6, 4.3)),
            purity=purity, success_probability=float(np.clip(success, 0.3, 0.97)), main_phase=_main(phases),
            phases=phases, langmuir_b_per_bar=3.0 + base_b * activated,
        )


class TableWorld(World):
    """A world interpolated from a CSV of measurements (see :meth:`World.from_csv`).

    Columns: one per element (symbol, fraction), optional ``anneal_temperature_c`` and
    ``anneal_time_h``, and the properties ``co2_uptake_mmol_g``, ``band_gap_ev``, ``purity``,
    optional ``success_probability`` and ``langmuir_b_per_bar``.
    """

    kind = "table"
    _REQUIRED = ("co2_uptake_mmol_g", "band_gap_ev", "purity")
    _OPTIONAL = {"success_probability": 0.9, "langmuir_b_per_bar": 8.0}

    def __init__(self, config: WorldConfig):
        assert config.csv_path, "a table world needs csv_path"
        path = Path(config.csv_path)
        if not path.exists():
            raise FileNotFoundError(f"world table {path} does not exist")
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        if not rows:
            raise ValueError(f"world table {path} has no rows")
        cols = list(rows[0])
        missing = [c for c in self._REQUIRED if c not in cols]
        if missing:
            raise ValueError(f"world table {path} lacks columns {missing}")
        elements = tuple(c for c in cols if re.fullmatch(r"[A-Z][a-z]?", c))
        if not elements:
            raise ValueError(f"world table {path} has no element columns (e.g. Mg, Zn)")
        super().__init__(config.model_copy(update={"elements": elements, "n_modes": 0}))
        feats = [self._features_raw({e: float(r[e] or 0) for e in elements},
                                    float(r.get("anneal_temperature_c") or 400.0),
                                    float(r.get("anneal_time_h") or 4.0)) for r in rows]
        self._x = np.array(feats)
        names = list(self._REQUIRED) + list(self._OPTIONAL)
        self._names = names
        self._y = np.array([[float(r[n]) if r.get(n) not in (None, "") else self._OPTIONAL[n] for n in names]
                            for r in rows])
        self._lo, self._hi = self._y.min(axis=0), self._y.max(axis=0)
        self._median_t = float(np.median([float(r.get("anneal_temperature_c") or 400.0) for r in rows]))
        from scipy.interpolate import NearestNDInterpolator, RBFInterpolator

        if config.interpolation == "nearest" or len(rows) < len(self._x[0]) + 2:
            self._interp = NearestNDInterpolator(self._x, self._y)
        else:
            # Linear RBF with a constant term: fractions summing to 1 make a linear trend singular.
            self._interp = RBFInterpolator(self._x, self._y, kernel="linear", smoothing=1e-3, degree=0)

    def _features_raw(self, comp: dict[str, float], t: float, h: float) -> list[float]:
        return [comp.get(e, 0.0) for e in self.config.elements] + [t / 200.0, h / 8.0]

    def properties(self, c: Candidate) -> TrueProperties:
        q = np.array([self._features_raw(c.composition, c.anneal_temperature_c, c.anneal_time_h)])
        y = np.clip(np.asarray(self._interp(q))[0], self._lo, self._hi)
        v = dict(zip(self._names, (float(a) for a in y), strict=True))
        purity = float(np.clip(v["purity"], 0.0, 1.0))
        phases = _split_phases(purity, 1.0 if c.anneal_temperature_c < self._median_t else 0.0)
        return TrueProperties(
            co2_uptake_mmol_g=max(v["co2_uptake_mmol_g"], 0.0), band_gap_ev=max(v["band_gap_ev"], 0.1),
            purity=purity, success_probability=float(np.clip(v["success_probability"], 0, 1)),
            main_phase=_main(phases), phases=phases, langmuir_b_per_bar=max(v["langmuir_b_per_bar"], 0.1),
        )


@lru_cache(maxsize=32)
def _compositions(n_elements: int, k: int) -> tuple[tuple[int, ...], ...]:
    """Every way to split k grid units among n elements (stars and bars)."""
    out = []
    for bars in itertools.combinations(range(k + n_elements - 1), n_elements - 1):
        prev, parts = -1, []
        for b in (*bars, k + n_elements - 1):
            parts.append(b - prev - 1)
            prev = b
        out.append(tuple(parts))
    return tuple(out)


def candidate_id(c: Candidate) -> str:
    key = ",".join(f"{e}={c.composition[e]:.4f}" for e in sorted(c.composition))
    key += f";T={c.anneal_temperature_c:.1f};h={c.anneal_time_h:.2f}"
    return "c-" + hashlib.sha1(key.encode()).hexdigest()[:10]


def candidate_pool(n: int, seed: int = 0, *, elements: Sequence[str] = ELEMENTS,
                   temperatures_c: Sequence[float] = TEMPERATURES_C, anneal_time_h: float = 4.0) -> list[Candidate]:
    """A deterministic pool of ``n`` candidates: compositions on a simplex grid x anneal temperatures.

    The grid is the coarsest one (step 1/k) with at least ``n`` points; when it has more, ``n`` of
    them are drawn with ``seed`` (kept in grid order). Zero fractions are left out of a composition.
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    k = 2
    while len(_compositions(len(elements), k)) * len(temperatures_c) < n and k < 40:
        k += 1
    grid = [(comp, t) for comp in _compositions(len(elements), k) for t in temperatures_c]
    if n < len(grid):
        keep = np.sort(np.random.default_rng(seed).choice(len(grid), size=n, replace=False))
        grid = [grid[i] for i in keep]
    pool = []
    for comp, t in grid:
        fractions = {e: u / k for e, u in zip(elements, comp, strict=True) if u}
        c = Candidate(composition=fractions, anneal_temperature_c=t, anneal_time_h=anneal_time_h)
        pool.append(c.model_copy(update={"id": candidate_id(c)}))
    return pool
