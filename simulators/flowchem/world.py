"""The hidden truth of the flow lab: a kinetic model of a catalysed reaction in a plug-flow reactor.

Chemistry (a Pd/phosphine coupling with a consecutive over-reaction)::

    A + B -> P      r1 = k1 [A][B]      the wanted product
    P + B -> S      r2 = k2 [P][B]      over-reaction of the product (the impurity)

Rate constants are Arrhenius, written about a reference temperature (80 degC) so the numbers are
readable: ``k = k_ref * exp(-Ea/R (1/T - 1/T_ref))``. The side reaction has the higher activation
energy, so heat speeds it more than the main reaction; excess B and long residence feed it too.
The ligand (categorical) scales both pre-factors and shifts both activation energies, and sets the
temperature above which the catalyst decomposes (activity falls as a logistic in temperature).
A plug-flow reactor at steady state is a batch reactor in residence time, so the outlet is the
solution of the rate equations at t = residence time (``scipy.integrate.solve_ivp``, LSODA, tight
tolerances). The product's solubility rises with temperature; a cold, concentrated recipe risks
precipitating P and clogging the coil (``clog_probability``), the flow lab's failed synthesis.

Seeded: the world's seed perturbs the ligand table (a few kJ/mol, tens of per cent on the
pre-factors), so different seeds are different (but similar) chemistries. Nothing but the
simulated instruments and a campaign scoring itself (:meth:`FlowWorld.true_optimum`) reads it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from pydantic import Field
from scipy.integrate import solve_ivp
from scipy.optimize import minimize

from ppu.drivers.flowchem.models import LIGANDS, PROCESS_BOX, FlowRecipe
from ppu.models import Strict

R_KJ = 8.314462618e-3  # kJ/(mol K)
T_REF_K = 353.15


@dataclass(frozen=True)
class LigandEffect:
    k1_factor: float  # on the main reaction's pre-factor
    dea1: float  # kJ/mol added to Ea1
    k2_factor: float
    dea2: float
    t_decomp_c: float  # catalyst decomposition midpoint, degC


# Bulky biaryl phosphines (SPhos, XPhos) are the faster, more robust catalysts; SPhos is the more
# selective (its bulk slows the second coupling), XPhos the most active. Screening-grade numbers.
LIGAND_TABLE: dict[str, LigandEffect] = {
    "PPh3": LigandEffect(1.0, 0.0, 1.0, 0.0, 100.0),
    "dppf": LigandEffect(1.5, -3.0, 1.2, 0.0, 120.0),
    "SPhos": LigandEffect(1.8, -4.0, 0.3, 3.0, 115.0),
    "XPhos": LigandEffect(3.0, -7.0, 2.2, -3.0, 150.0),
}


class FlowWorldConfig(Strict):
    """How to build a flow world (the ``world`` of a flow lab file)."""

    seed: int = Field(0, description="perturbs the ligand table: a different (similar) chemistry per seed")
    variation: float = Field(1.0, ge=0, le=5, description="how strongly the seed perturbs the chemistry")
    k1_ref: float = Field(0.25, gt=0, description="main reaction at 80 degC, L/(mol min)")
    ea1_kj: float = Field(70.0, gt=0, description="activation energy of the main reaction, kJ/mol")
    k2_ref: float = Field(0.06, gt=0, description="over-reaction at 80 degC, L/(mol min)")
    ea2_kj: float = Field(85.0, gt=0, description="activation energy of the over-reaction, kJ/mol")
    solubility_25c_m: float = Field(0.32, gt=0, description="solubility of P at 25 degC, mol/L")


class ReactionOutcome(Strict):
    """Outlet of the reactor: concentrations (mol/L) and the numbers a chemist would quote."""

    concentrations: dict[str, float]
    product_yield: float = Field(ge=0, le=1)
    impurity: float = Field(ge=0, le=1)
    conversion: float = Field(ge=0, le=1)


def patankar(k1: np.ndarray, k2: np.ndarray, a0: np.ndarray, b0: np.ndarray, t_min: np.ndarray,
             steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(P, S) after ``t_min`` by the semi-implicit Patankar-Euler scheme, vectorised over any shape.

    Each loss term is implicit in the species it consumes, so concentrations stay positive and the
    scheme is stable for any step: first-order accurate, cheap. Used for screening and by the twin.
    """
    dt = t_min / steps
    a = np.array(np.broadcast_to(a0, np.broadcast_shapes(np.shape(k1), np.shape(a0))), dtype=float)
    b = a * 0 + b0
    p = np.zeros_like(a)
    s = np.zeros_like(a)
    for _ in range(steps):
        a_new = a / (1.0 + dt * k1 * b)
        r1 = a - a_new
        p_new = (p + r1) / (1.0 + dt * k2 * b)
        r2 = p + r1 - p_new
        a, p, s, b = a_new, p_new, s + r2, np.clip(b - r1 - r2, 0.0, None)
    return p, s


def arrhenius(k_ref: float, ea_kj: float, temperature_c: float) -> float:
    return k_ref * math.exp(-ea_kj / R_KJ * (1.0 / (temperature_c + 273.15) - 1.0 / T_REF_K))


def _rates(_t: float, y: np.ndarray, k1: float, k2: float) -> list[float]:
    a, b, p, _s = np.clip(y, 0.0, None)
    r1, r2 = k1 * a * b, k2 * p * b
    return [-r1, -r1 - r2, r1 - r2, r2]


def integrate(k1: float, k2: float, a0: float, b0: float, t_min: float) -> np.ndarray:
    """[A, B, P, S] after ``t_min`` minutes of the batch (= plug-flow) reaction."""
    sol = solve_ivp(_rates, (0.0, t_min), [a0, b0, 0.0, 0.0], method="LSODA", args=(k1, k2),
                    rtol=1e-8, atol=1e-11)
    if not sol.success:
        raise RuntimeError(f"kinetic integration failed: {sol.message}")
    return np.clip(sol.y[:, -1], 0.0, None)


class FlowWorld:
    """See the module docstring."""

    def __init__(self, config: FlowWorldConfig | None = None):
        self.config = config or FlowWorldConfig()
        rng = np.random.default_rng(self.config.seed + 1701)
        v = self.config.variation
        self.ligands: dict[str, LigandEffect] = {}
        for name in LIGANDS:
            base = LIGAND_TABLE[name]
            f1, f2 = np.exp(rng.normal(0.0, 0.15 * v, size=2))
            d1, d2, dt = rng.normal(0.0, [1.5 * v, 1.5 * v, 6.0 * v])
            self.ligands[name] = LigandEffect(base.k1_factor * f1, base.dea1 + d1, base.k2_factor * f2,
                                              base.dea2 + d2, base.t_decomp_c + dt)

    @classmethod
    def from_config(cls, config: FlowWorldConfig | dict | None = None) -> FlowWorld:
        return cls(config if isinstance(config, FlowWorldConfig) else FlowWorldConfig.model_validate(config or {}))

    # ---- truth --------------------------------------------------------------------------------

    def activity(self, recipe: FlowRecipe) -> float:
        """Fraction of the catalyst alive at this temperature (logistic decomposition)."""
        t_d = self.ligands[recipe.ligand].t_decomp_c
        return 1.0 / (1.0 + math.exp((recipe.temperature_c - t_d) / 8.0))

    def rate_constants(self, recipe: FlowRecipe) -> tuple[float, float]:
        """(k1, k2) in L/(mol min) for this ligand and temperature, catalyst decomposition included."""
        c, lig = self.config, self.ligands[recipe.ligand]
        act = self.activity(recipe)
        k1 = arrhenius(c.k1_ref * lig.k1_factor, c.ea1_kj + lig.dea1, recipe.temperature_c) * act
        k2 = arrhenius(c.k2_ref * lig.k2_factor, c.ea2_kj + lig.dea2, recipe.temperature_c) * act
        return k1, k2

    def outcome(self, recipe: FlowRecipe) -> ReactionOutcome:
        k1, k2 = self.rate_constants(recipe)
        a0 = recipe.concentration_m
        a, b, p, s = integrate(k1, k2, a0, a0 * recipe.equivalents_b, recipe.residence_time_min)
        return ReactionOutcome(concentrations={"A": float(a), "B": float(b), "P": float(p), "S": float(s)},
                               product_yield=float(min(p / a0, 1.0)), impurity=float(min(s / a0, 1.0)),
                               conversion=float(min(max(1.0 - a / a0, 0.0), 1.0)))

    def solubility_m(self, temperature_c: float) -> float:
        """Solubility of P (mol/L): rises about e-fold every 55 degC."""
        return self.config.solubility_25c_m * math.exp((temperature_c - 25.0) / 55.0)

    def clog_probability(self, recipe: FlowRecipe, product_m: float | None = None) -> float:
        """Chance that P precipitates and blocks the coil: a logistic in supersaturation."""
        p = self.outcome(recipe).concentrations["P"] if product_m is None else product_m
        excess = p - self.solubility_m(recipe.temperature_c)
        return 0.95 / (1.0 + math.exp(-excess / 0.03))

    # ---- scoring a campaign (the only sanctioned reader of the truth) --------------------------

    def expected_yield(self, recipe: FlowRecipe) -> float:
        """What a run of ``recipe`` yields on average: a clogged run collects nothing."""
        out = self.outcome(recipe)
        return out.product_yield * (1.0 - self.clog_probability(recipe, out.concentrations["P"]))

    def expected_yield_batch(self, recipes: list[FlowRecipe], steps: int = 400) -> np.ndarray:
        """Approximate :meth:`expected_yield` of many recipes at once (semi-implicit, ``steps`` steps)."""
        k = np.array([self.rate_constants(r) for r in recipes])
        a0 = np.array([r.concentration_m for r in recipes])
        tau = np.array([r.residence_time_min for r in recipes])
        p, _s = patankar(k[:, 0], k[:, 1], a0, a0 * np.array([r.equivalents_b for r in recipes]), tau, steps)
        sol = np.array([self.solubility_m(r.temperature_c) for r in recipes])
        clog = 0.95 / (1.0 + np.exp(-(p - sol) / 0.03))
        return np.clip(p / a0, 0, 1) * (1.0 - clog)

    def true_optimum(self, *, samples: int = 4000, starts: int = 2, seed: int = 0) -> tuple[FlowRecipe, float]:
        """The best expected yield in PROCESS_BOX over every ligand: a dense random screen on the fast
        integrator, then L-BFGS-B on the exact one from the best points of each ligand."""
        lo = np.array([b[0] for b in PROCESS_BOX.values()])
        hi = np.array([b[1] for b in PROCESS_BOX.values()])
        rng = np.random.default_rng(seed)
        best: tuple[FlowRecipe, float] | None = None
        for ligand in LIGANDS:
            def neg(u: np.ndarray, ligand: str = ligand) -> float:
                x = lo + np.clip(u, 0, 1) * (hi - lo)
                return -self.expected_yield(recipe_from(ligand, x))
            u = rng.random((samples, len(lo)))
            screen = self.expected_yield_batch([recipe_from(ligand, lo + x * (hi - lo)) for x in u])
            for u0 in u[np.argsort(screen)[::-1][:starts]]:
                res = minimize(neg, u0, method="L-BFGS-B", bounds=[(0.0, 1.0)] * len(lo),
                               options={"maxiter": 40, "eps": 1e-4})
                val = -float(res.fun)
                if best is None or val > best[1]:
                    best = (recipe_from(ligand, lo + np.clip(res.x, 0, 1) * (hi - lo)), val)
        assert best is not None
        return best


def recipe_from(ligand: str, x: np.ndarray | list[float]) -> FlowRecipe:
    """A recipe from a ligand and the continuous parameters in PROCESS_BOX order."""
    return FlowRecipe.model_validate({"ligand": ligand, **{k: float(v) for k, v in zip(PROCESS_BOX, x, strict=True)}})
