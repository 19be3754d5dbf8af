"""Optimisers behind one suggest/ingest interface, shaped after gest-api's ``Generator``.

    gen = BoTorchGenerator(problem, pool=points, seed=0)   # pool: optional list of candidate points
    batch = gen.suggest(2)          # [{"x": .., "ligand": "L2", "_id": 17}, ...]
    ...measure...
    gen.ingest([{**batch[0], "yield": 0.41, "selectivity": 0.93}])

A point suggested and not yet ingested is *pending*: the next suggestion accounts for it (BoTorch
passes it as ``X_pending``; the baselines never suggest it twice). ``_id`` is the pool index (or a
counter without a pool); a result with an ``_id`` this generator never gave is refused, one without
``_id`` is prior data. With a pool, suggestions are pool points; without, points of the declared
space. No IO and no clock (STYLE.md §2).

- :class:`RandomGenerator`, :class:`SobolGenerator` (scrambled Sobol in the encoded unit cube,
  snapped to the nearest unused pool point): the baselines.
- :class:`BoTorchGenerator`: a GP per objective and constrained output (``SingleTaskGP``, inputs in
  the unit cube, categorical labels one-hot or by their descriptors); one objective:
  ``qLogNoisyExpectedImprovement`` with the constraints as outcome constraints; several:
  ``qLogNoisyExpectedHypervolumeImprovement`` with the same constraints. The acquisition is
  maximised over the pool when there is one, else over the declared space (:mod:`ppu.campaign.mixed`):
  the continuous box (``optimize_acqf``), or per combination of categorical labels and levels
  (``optimize_acqf_mixed``). ``warm_start`` hands it a low-fidelity ranking of points (a digital
  twin's screen) that its initial design takes, best first, instead of Sobol points.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field

from ppu.campaign.problem import Problem, as_number
from ppu.models import Strict

if TYPE_CHECKING:
    from torch import Tensor

_CHUNK = 256


class Generator(ABC):
    """gest-api's Generator contract: ``suggest(num_points)``, ``ingest(results)``, ``finalize()``."""

    returns_id = True
    name = "generator"

    def __init__(self, vocs: Problem, *, pool: Sequence[dict[str, Any]] | None = None, seed: int = 0):
        self._validate_vocs(vocs)
        self.vocs = vocs
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.pool = list(pool) if pool is not None else None
        self.pool_x = vocs.encode(self.pool) if self.pool else None
        if self.pool is not None and not self.pool:
            raise ValueError("the candidate pool is empty")
        self.given: dict[int, dict[str, Any]] = {}  # _id -> point, every suggestion
        self.pending: dict[int, dict[str, Any]] = {}  # suggested, not yet ingested
        self.data: list[dict[str, Any]] = []  # ingested results, in order
        self.data_ids: list[int | None] = []
        self._next_id = 0

    def _validate_vocs(self, vocs: Problem) -> None:
        if not isinstance(vocs, Problem):
            raise ValueError("a generator needs a Problem (VOCS)")
        if not vocs.variables:
            raise ValueError("the problem declares no variables: nothing to choose")

    # ---- the interface ------------------------------------------------------------------------

    def suggest(self, num_points: int | None = None) -> list[dict[str, Any]]:
        n = 1 if num_points is None else num_points
        if self.pool is not None and n > len(self.unused()):
            raise ValueError(f"asked for {n} points; only {len(self.unused())} pool candidates are left")
        out = []
        for _ in range(n):  # one at a time, each pending for the next (greedy sequential batches)
            pid, point = self._one()
            point = {**self.vocs.constants, **point, "_id": pid}
            self.given[pid] = point
            self.pending[pid] = point
            out.append(dict(point))
        return out

    def ingest(self, results: list[dict[str, Any]]) -> None:
        for r in results:
            pid = r.get("_id")
            if pid is not None:
                if pid not in self.given:
                    raise ValueError(f"_id {pid!r} was never suggested by this generator")
                self.pending.pop(pid, None)
            self.data.append(dict(r))
            self.data_ids.append(pid)

    def finalize(self) -> None:
        """Nothing to close: the generators here hold no processes or files."""

    # ---- helpers for subclasses ---------------------------------------------------------------

    def unused(self) -> list[int]:
        assert self.pool is not None
        return [i for i in range(len(self.pool)) if i not in self.given]

    def _one(self) -> tuple[int, dict[str, Any]]:
        if self.pool is not None:
            i = self._pick_pool(self.unused())
            return i, dict(self.pool[i])
        u = self._pick_box()
        pid = self._next_id
        self._next_id += 1
        return pid, self.vocs.decode(u[None])[0]

    @abstractmethod
    def _pick_pool(self, left: list[int]) -> int: ...

    @abstractmethod
    def _pick_box(self) -> np.ndarray: ...


class RandomGenerator(Generator):
    name = "random"

    def _pick_pool(self, left: list[int]) -> int:
        return int(self.rng.choice(left))

    def _pick_box(self) -> np.ndarray:
        return np.asarray(self.rng.random(self.vocs.width))


class SobolGenerator(Generator):
    name = "sobol"

    def __init__(self, vocs: Problem, **kw: Any):
        super().__init__(vocs, **kw)
        from scipy.stats import qmc

        self._sobol = qmc.Sobol(d=max(1, vocs.width), scramble=True, seed=self.seed)

    def _draw(self) -> np.ndarray:
        with warnings.catch_warnings():  # Sobol balance warnings for n not a power of 2: harmless here
            warnings.simplefilter("ignore", UserWarning)
            return np.asarray(self._sobol.random(1)[0, : self.vocs.width])

    def _pick_pool(self, left: list[int]) -> int:
        assert self.pool_x is not None
        u = self._draw()
        d = ((self.pool_x[left] - u) ** 2).sum(axis=1)
        return left[int(np.argmin(d))]

    def _pick_box(self) -> np.ndarray:
        return self._draw()


def _import_botorch() -> None:
    """linear_operator (under gpytorch) applies torch.jit.script at import time, which torch >= 2.10
    marks deprecated; not ours to fix and harmless. Only that message is muted, only at import."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=DeprecationWarning)
        import botorch  # noqa: F401


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Tens of points: torch's intra-op threads cost more in hand-off than they save (5x on 2 busy cores).
    Every GP fit of the campaign layer and the packs' optimisers runs under it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class BoTorchGenerator(SobolGenerator):
    """See the module docstring. ``n_init``: Sobol points before the GPs take over."""

    name = "botorch"

    def __init__(self, vocs: Problem, *, n_init: int = 4, mc_samples: int = 128, context: Sequence[str] = (),
                 **kw: Any):
        super().__init__(vocs, **kw)
        _import_botorch()
        self.n_init = n_init
        self.mc_samples = mc_samples
        self.fits = 0
        self.last_why = ""
        self._screen: list[tuple[dict[str, Any], float]] = []  # warm_start's ranking, best first
        self._spacing = 0.35
        # A cheap low-fidelity source (a digital twin's prediction of the first objective, known for
        # every pool point): an extra model input, and the initial design's ranking.
        self.context = list(context)
        if self.context:
            if self.pool is None:
                raise ValueError("context features need a pool (their values are known for every pool point)")
            c = np.array([[float(p[k]) for k in self.context] for p in self.pool])
            self._c_lo, self._c_span = c.min(axis=0), np.where(np.ptp(c, axis=0) > 0, np.ptp(c, axis=0), 1.0)
            self.pool_zx = self._enc(self.pool)

    def _enc(self, points: Sequence[dict[str, Any]]) -> np.ndarray:
        x = self.vocs.encode(points)
        if not self.context:
            return x
        c = np.array([[float(p[k]) for k in self.context] for p in points]).reshape(len(points), -1)
        return np.concatenate([x, (c - self._c_lo) / self._c_span], axis=1)

    @property
    def model_version(self) -> str:
        return f"botorch-gp-{self.fits:03d}-n{len(self.data)}"

    # ---- data as tensors ----------------------------------------------------------------------

    def _training(self) -> tuple[Any, list[Any], list[str]]:
        import torch

        names = list(self.vocs.objectives) + [c for c in self.vocs.constraints if c not in self.vocs.objectives]
        x = torch.tensor(self._enc(self.data), dtype=torch.float64)
        ys = []
        for name in names:
            ys.append(torch.tensor([np.nan if as_number(r.get(name)) is None else float(r[name])
                                    for r in self.data], dtype=torch.float64))
        return x, ys, names

    def _model(self) -> tuple[Any, list[str]] | None:
        import torch
        from botorch.exceptions.warnings import OptimizationWarning
        from botorch.fit import fit_gpytorch_mll
        from botorch.models import ModelListGP, SingleTaskGP
        from botorch.models.transforms.outcome import Standardize
        from gpytorch.mlls import ExactMarginalLogLikelihood

        x, ys, names = self._training()
        models = []
        for y in ys:
            ok = ~torch.isnan(y)
            if int(ok.sum()) < 2:
                return None
            gp = SingleTaskGP(x[ok], y[ok].unsqueeze(-1), outcome_transform=Standardize(m=1))
            torch.manual_seed(self.seed + self.fits)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", OptimizationWarning)  # a non-converged fit still ranks
                fit_gpytorch_mll(ExactMarginalLogLikelihood(gp.likelihood, gp),
                                 optimizer_kwargs={"options": {"maxiter": 60}})
            models.append(gp)
        self.fits += 1
        return ModelListGP(*models), names

    def _acquisition(self) -> Any | None:
        import torch
        from botorch.acquisition.multi_objective.logei import qLogNoisyExpectedHypervolumeImprovement
        from botorch.acquisition.multi_objective.objective import WeightedMCMultiOutputObjective
        from botorch.acquisition.objective import GenericMCObjective
        from botorch.sampling.normal import SobolQMCNormalSampler

        got = self._model()
        if got is None:
            return None
        model, names = got
        x, ys, _ = self._training()
        objs = list(self.vocs.objectives)
        signs = [self.vocs.sign(o) for o in objs]
        constraints = [_slack(names.index(cname), s, bound)
                       for cname, con in self.vocs.constraints.items() for s, bound in con.slacks()]
        pending = [p for p in self.pending.values()]
        x_pending = torch.tensor(self._enc(pending), dtype=torch.float64) if pending else None
        sampler = SobolQMCNormalSampler(sample_shape=torch.Size([self.mc_samples]), seed=self.seed + self.fits)
        if len(objs) == 1:
            from botorch.acquisition.logei import qLogNoisyExpectedImprovement

            sign = signs[0]
            self.last_why = (f"max qLogNEI ({self.vocs.objectives[objs[0]]} {objs[0]}"
                             + (f", {len(self.vocs.constraints)} outcome constraint(s)" if constraints else "")
                             + f") with {len(pending)} pending")
            return qLogNoisyExpectedImprovement(
                model, X_baseline=x, sampler=sampler, X_pending=x_pending, prune_baseline=False, cache_root=False,
                objective=GenericMCObjective(_first_output(sign)),
                constraints=constraints or None)
        idx = [names.index(o) for o in objs]
        y_obj = torch.stack([ys[i] for i in idx], dim=-1) * torch.tensor(signs, dtype=torch.float64)
        y_obj = y_obj[~torch.isnan(y_obj).any(dim=-1)]
        lo, hi = y_obj.min(0).values, y_obj.max(0).values
        ref = (lo - 0.1 * (hi - lo).clamp_min(1e-9)).tolist()
        self.last_why = (f"max qLogNEHVI over {len(objs)} objectives"
                         + (f", {len(self.vocs.constraints)} outcome constraint(s)" if constraints else "")
                         + f" with {len(pending)} pending")
        return qLogNoisyExpectedHypervolumeImprovement(
            model, ref_point=ref, X_baseline=x, sampler=sampler, X_pending=x_pending, prune_baseline=True,
            cache_root=False,
            objective=WeightedMCMultiOutputObjective(weights=torch.tensor(signs, dtype=torch.float64),
                                                     outcomes=idx),
            constraints=constraints or None)

    def _score(self, acq: Any, u: np.ndarray) -> np.ndarray:
        import torch
        from gpytorch.utils.warnings import NumericalWarning

        xs = torch.tensor(u, dtype=torch.float64).unsqueeze(1)
        out = []
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", NumericalWarning)  # jitter notices: the posterior is still right
            for k in range(0, len(xs), _CHUNK):
                out.append(acq(xs[k:k + _CHUNK]).numpy().astype(float))
        return np.concatenate(out)

    def warm_start(self, points: Sequence[dict[str, Any]], scores: Sequence[float], *, spacing: float = 0.35) -> None:
        """A low-fidelity ranking of points of the space (e.g. a digital twin's screen; larger is better):
        without a pool, the initial design takes the best of them, each at least ``spacing`` (distance in
        the unit cube) from every point given so far, before falling back to Sobol points."""
        if len(points) != len(scores):
            raise ValueError(f"warm_start: {len(points)} points but {len(scores)} scores")
        for k, p in enumerate(points):
            why = self.vocs.check_point(p)
            if why is not None:
                raise ValueError(f"warm_start: point {k} lies outside the declared space ({why})")
        order = np.argsort(-np.asarray(scores, dtype=float), kind="stable")
        self._screen = [(dict(points[i]), float(scores[i])) for i in order]
        self._spacing = spacing

    def _alike(self) -> int | None:
        """How many values the first objective has, when they are all equal (a GP learns nothing from them)."""
        ys = [y for y in (as_number(r.get(next(iter(self.vocs.objectives)))) for r in self.data) if y is not None]
        return len(ys) if len(ys) >= 2 and max(ys) == min(ys) else None

    def _ready(self) -> bool:
        n = sum(1 for r in self.data if as_number(r.get(next(iter(self.vocs.objectives)))) is not None)
        return n >= max(2, self.n_init) and self._alike() is None

    def _initial_box(self) -> np.ndarray:
        alike = self._alike()
        note = f"; all {alike} results alike, no GP yet" if alike else ""
        screen = self._screen
        if screen:
            taken = self.vocs.encode(list(self.given.values()) + self.data) if self.given or self.data else None
            for k, (point, score) in enumerate(screen):
                u = self.vocs.encode([point])[0]
                if taken is None or bool(np.all(np.linalg.norm(taken - u, axis=1) > self._spacing)):
                    del screen[k]
                    self.last_why = f"initial design: best screened point left (low-fidelity score {score:.3g})" + note
                    return np.asarray(u)
        self.last_why = "initial design: Sobol point" + note
        return self._draw()

    def _pick_pool(self, left: list[int]) -> int:
        assert self.pool_x is not None
        if not self._ready():
            if self.context:  # the twin ranks the pool: start from its best guesses
                sign = self.vocs.sign(next(iter(self.vocs.objectives)))
                self.last_why = f"initial design: best {self.context[0]} (twin) not yet suggested"
                return max(left, key=lambda i: sign * float(self.pool[i][self.context[0]]))  # type: ignore[index]
            self.last_why = f"initial design: Sobol point snapped to the pool ({len(self.data)} < n_init measured)"
            return super()._pick_pool(left)
        with one_torch_thread():
            acq = self._acquisition()
            if acq is None:
                self.last_why = "too few values of an output to model it: Sobol point"
                return super()._pick_pool(left)
            score = self._score(acq, (self.pool_zx if self.context else self.pool_x)[left])
        self.last_why += f", over {len(left)} pool candidates"
        return left[int(np.argmax(score))]

    def _pick_box(self) -> np.ndarray:
        if not self._ready():
            return self._initial_box()
        with one_torch_thread():
            acq = self._acquisition()
            if acq is None:
                self.last_why = "too few values of an output to model it: Sobol point"
                return self._draw()
            from ppu.campaign.mixed import optimise_box

            u, how = optimise_box(acq, self.vocs, seed=self.seed + self.fits)
            self.last_why += ", " + how
            return u


def _slack(j: int, sign: float, bound: float) -> Callable[[Tensor], Tensor]:
    """Outcome constraint for BoTorch: <= 0 where output ``j`` satisfies it."""
    def slack(z: Tensor) -> Tensor:
        return sign * (bound - z[..., j])
    return slack


def _first_output(sign: float) -> Callable[[Tensor, Tensor | None], Tensor]:
    def objective(z: Tensor, X: Tensor | None = None) -> Tensor:  # BoTorch passes X= by name
        return sign * z[..., 0]
    return objective


GENERATORS: dict[str, type[Generator]] = {"botorch": BoTorchGenerator, "random": RandomGenerator,
                                          "sobol": SobolGenerator}


def pareto_front(values: np.ndarray) -> np.ndarray:
    """Mask of the non-dominated rows of ``values`` (larger is better in every column)."""
    n = len(values)
    keep = np.ones(n, dtype=bool)
    for i in range(n):
        if keep[i]:
            dominated = np.all(values <= values[i], axis=1) & np.any(values < values[i], axis=1)
            keep &= ~dominated
    return keep


def hypervolume(values: np.ndarray, ref: Sequence[float]) -> float:
    """Hypervolume dominated by ``values`` (larger is better) above ``ref``; 0 when none dominates it."""
    _import_botorch()
    import torch
    from botorch.utils.multi_objective.hypervolume import Hypervolume

    r = np.asarray(ref, dtype=float)
    v = values[np.all(values > r, axis=1)] if len(values) else values
    if len(v) == 0:
        return 0.0
    v = v[pareto_front(v)]
    return float(Hypervolume(torch.tensor(r, dtype=torch.float64)).compute(torch.tensor(v, dtype=torch.float64)))


def finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


class GeneratorSpec(Strict):
    """Which generator proposes, as a campaign file says (replay and declared lab campaigns alike)."""

    generator: Literal["botorch", "random", "sobol"] = Field("botorch", description="botorch (qLogNEI, or "
                                                             "qLogNEHVI for several objectives), random or sobol")
    n_init: int = Field(4, ge=1, le=1000, description="measured candidates before the GP takes over (the initial "
                        "design: a screen's best where there is one, else Sobol points)")
    in_flight: int = Field(1, ge=1, le=64, description="candidates being measured at once (the others are "
                           "pending when one is proposed)")
