"""``mlip``: energies from a universal ML interatomic potential (CHGNet), optional extra ``ppu[mlip]``.

A candidate has a composition, not a structure, so the backend builds a *prototype*: an ordered
rocksalt supercell (``A O`` with the candidate's cations spread over the cation sublattice in
proportion to their fractions, lattice parameter from Vegard's law on Shannon radii). That is a
screening-grade structure: it ranks compositions, it is not a phase prediction. Spinel and other
prototypes are not implemented yet.

``predict.energy`` is one static CHGNet evaluation (batched over the tasks of a run);
``relax.energy`` relaxes positions and cell first (FIRE, ``relax_steps``, ``fmax``).

chgnet and pymatgen are imported lazily: without them, building this backend raises a
ConfigError that says ``pip install 'ppu[mlip]'``.

Measured (chgnet 0.4.2, pymatgen 2026.10, torch 2.13 CPU, 2 cores; 2026-11-25): the extra adds
270 MB to an environment of 1.8 GB (0.9 GB of it torch). Per structure on CPU: ``predict.energy``
62 ms at supercell 1 (8 atoms) and 0.57 s at the default supercell 2 (64 atoms), batched 40 at a
time; ``relax.energy`` 1.6 s (8 atoms) and 19 s (64 atoms) with FIRE, fmax 0.1, <= 200 steps.

Where it runs: CHGNet calls run on this backend's one dedicated thread; the loop never blocks.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from ppu.backends.base import Backend, BackendConfig, ProgressFn, TaskRun
from ppu.drivers.mof.capabilities import Candidate, EnergyInput, EnergyOutput
from ppu.errors import ConfigError, ValidationFailed
from ppu.models import BackendKind, CapabilityOffer, Result

INSTALL_HINT = "pip install 'ppu[mlip]'"

# Shannon (1976) ionic radii in pm, six-fold coordination, for the usual rocksalt oxidation state
_IONIC_RADIUS_PM = {
    "Mg": 72.0, "Ca": 100.0, "Sr": 118.0, "Ba": 135.0, "Mn": 83.0, "Fe": 78.0, "Co": 74.5, "Ni": 69.0,
    "Cu": 73.0, "Zn": 74.0, "Cd": 95.0, "Li": 76.0, "Na": 102.0, "Ti": 86.0, "V": 79.0, "Cr": 80.0,
    "Al": 53.5, "Zr": 72.0, "Ga": 62.0, "Y": 90.0, "La": 103.2, "Ce": 87.0, "In": 80.0, "Sn": 69.0,
}
_O_RADIUS_PM = 140.0
_CATION_SITES = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
_ANION_SHIFT = np.array([0.5, 0.0, 0.0])


@dataclass(frozen=True)
class Prototype:
    """An ordered periodic structure as plain arrays (no pymatgen needed to build or test it)."""

    lattice: np.ndarray  # (3, 3) Angstrom, rows are vectors
    species: list[str]
    frac_coords: np.ndarray  # (n, 3)

    @property
    def formula_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.species:
            out[s] = out.get(s, 0) + 1
        return out


def _counts(composition: dict[str, float], n_sites: int) -> dict[str, int]:
    """Integer site counts closest to the fractions (largest remainder), summing to n_sites."""
    total = sum(composition.values())
    raw = {el: x / total * n_sites for el, x in composition.items() if x > 0}
    counts = {el: math.floor(v) for el, v in raw.items()}
    short = n_sites - sum(counts.values())
    for el in sorted(raw, key=lambda e: (raw[e] - counts[e], e), reverse=True)[:short]:
        counts[el] += 1
    return {el: c for el, c in counts.items() if c > 0}


def rocksalt_prototype(candidate: Candidate, supercell: int = 2, seed: int = 0) -> Prototype:
    """The candidate's cations on the cation sublattice of an ``n x n x n`` rocksalt oxide supercell."""
    unknown = sorted(el for el in candidate.composition if el not in _IONIC_RADIUS_PM)
    if unknown:
        raise ValidationFailed(f"no rocksalt ionic radius for {', '.join(unknown)}",
                               field="inputs.candidate.composition",
                               hint=f"known: {', '.join(sorted(_IONIC_RADIUS_PM))}")
    n = supercell
    cells = np.array([[i, j, k] for i in range(n) for j in range(n) for k in range(n)], dtype=float)
    cation_pos = ((cells[:, None, :] + _CATION_SITES[None, :, :]).reshape(-1, 3)) / n
    anion_pos = (((cells[:, None, :] + _CATION_SITES[None, :, :] + _ANION_SHIFT).reshape(-1, 3)) % n) / n
    counts = _counts(candidate.composition, len(cation_pos))
    cations = [el for el in sorted(counts) for _ in range(counts[el])]
    # a stable shuffle: the same candidate always gives the same ordering
    digest = hashlib.sha256(repr(sorted(candidate.composition.items())).encode()).digest()
    rng = np.random.default_rng([seed, int.from_bytes(digest[:8], "little")])
    cations = [cations[i] for i in rng.permutation(len(cations))]
    r_cation = sum(_IONIC_RADIUS_PM[el] * c for el, c in counts.items()) / len(cation_pos)
    a = 2 * (r_cation + _O_RADIUS_PM) / 100.0  # pm -> Angstrom; Vegard on the cation radius
    return Prototype(lattice=np.eye(3) * a * n, species=cations + ["O"] * len(anion_pos),
                     frac_coords=np.vstack([cation_pos, anion_pos]))


def _require_chgnet() -> Any:
    try:
        import chgnet  # noqa: F401
        import pymatgen.core  # noqa: F401
        from chgnet.model import CHGNet
    except ImportError as exc:
        raise ConfigError(f"the mlip backend needs chgnet and pymatgen ({exc.name} is missing)",
                          field="backends.type", hint=INSTALL_HINT) from None
    return CHGNet


class MLIPConfig(BackendConfig):
    model_version: str | None = Field(None, description="CHGNet checkpoint; None: chgnet's default")
    prototype: Literal["rocksalt"] = "rocksalt"
    supercell: int = Field(2, ge=1, le=4, description="n x n x n conventional cells (4 n^3 cations)")
    relax_steps: int = Field(200, ge=1, le=10_000)
    fmax: float = Field(0.1, gt=0, description="force criterion for relax.energy (eV/Angstrom)")
    device: str = Field("cpu", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    fidelity_predict: float = Field(0.3, ge=0, le=1)
    fidelity_relax: float = Field(0.4, ge=0, le=1)


class MLIPBackend(Backend):
    kind = BackendKind.digital
    Config: ClassVar[type[BackendConfig]] = MLIPConfig

    def __init__(self, config: BackendConfig):
        super().__init__(config)
        assert isinstance(config, MLIPConfig)
        self.cfg = config
        self._chgnet_cls = _require_chgnet()
        self._model: Any = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ppu-mlip-{config.name}")
        self._version = "unknown"
        self._sha: str | None = None

    def default_offers(self) -> list[CapabilityOffer]:
        return [CapabilityOffer(name="predict.energy", fidelity=self.cfg.fidelity_predict, duration_s=1.0),
                CapabilityOffer(name="relax.energy", fidelity=self.cfg.fidelity_relax, duration_s=30.0)]

    def _load(self) -> None:
        import chgnet

        from ppu.digital.torch_backend import select_device

        device = str(select_device(self.cfg.device))
        kw = {"model_name": self.cfg.model_version} if self.cfg.model_version else {}
        self._model = self._chgnet_cls.load(use_device=device, verbose=False, **kw)
        self._version = f"chgnet-{getattr(chgnet, '__version__', '?')}/{self.cfg.model_version or 'default'}"
        files = sorted(Path(chgnet.__file__).parent.glob("pretrained/**/*.pth.tar"))
        if files:  # the checkpoint the default load reads; best effort
            from ppu.digital.model_registry import file_sha256
            self._sha = file_sha256(files[-1])

    async def start(self) -> None:
        if self._model is None:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._load)

    async def close(self) -> None:
        self._executor.shutdown(wait=True)

    def _structure(self, proto: Prototype) -> Any:
        from pymatgen.core import Lattice, Structure

        return Structure(Lattice(proto.lattice), proto.species, proto.frac_coords)

    def _energies(self, capability: str, structures: list[Any]) -> list[float]:
        with warnings.catch_warnings():
            # CHGNet 0.4 calls float() on a tensor that requires grad, and torch warns about it;
            # not ours to fix and harmless (the value is read, never differentiated).
            warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad=True to a scalar",
                                    category=UserWarning)
            # ASE's cell filter takes a matrix logarithm every step; scipy flags errors of 1e-12.
            warnings.filterwarnings("ignore", message="logm result may be inaccurate", category=RuntimeWarning)
            return self._energies_unmuted(capability, structures)

    def _energies_unmuted(self, capability: str, structures: list[Any]) -> list[float]:
        if capability == "predict.energy":
            preds = self._model.predict_structure(structures, task="e", batch_size=len(structures))
            preds = preds if isinstance(preds, list) else [preds]
            return [float(np.asarray(p["e"]).reshape(-1)[0]) for p in preds]
        from chgnet.model import StructOptimizer

        opt = StructOptimizer(model=self._model)
        out = []
        for s in structures:
            r = opt.relax(s, fmax=self.cfg.fmax, steps=self.cfg.relax_steps, verbose=False)
            out.append(float(r["trajectory"].energies[-1]) / len(s))
        return out

    async def run(self, batch: list[TaskRun], progress: ProgressFn) -> list[Result]:
        await self.start()
        started = time.time()
        results: list[Result | None] = [None] * len(batch)
        todo: dict[str, list[tuple[int, Any]]] = {}
        for i, run in enumerate(batch):
            if run.capability not in ("predict.energy", "relax.energy"):
                results[i] = self.fail(run, f"{self.name} does not serve {run.capability}", started,
                                       retryable=False)
                continue
            try:
                cand = EnergyInput.model_validate(run.inputs).candidate
                todo.setdefault(run.capability, []).append(
                    (i, self._structure(rocksalt_prototype(cand, self.cfg.supercell))))
            except Exception as exc:  # one bad candidate fails only its own task
                results[i] = self.fail(run, f"cannot build the prototype: {exc}", started, retryable=False)
        loop = asyncio.get_running_loop()
        prov: dict[str, Any] = {
            "model_name": "CHGNet", "model_version": self._version, "weights_sha256": self._sha,
            "device": self.cfg.device,
            "extra": {"prototype": self.cfg.prototype, "supercell": self.cfg.supercell}}
        for cap, items in todo.items():
            try:
                structures = [s for _, s in items]
                energies = await loop.run_in_executor(self._executor, self._energies, cap, structures)
            except Exception as exc:
                for i, _ in items:
                    results[i] = self.fail(batch[i], f"CHGNet failed: {type(exc).__name__}: {exc}", started,
                                           **prov)
                continue
            for (i, _), e in zip(items, energies, strict=True):
                out = EnergyOutput(energy_ev_per_atom=e, model_version=self._version)
                results[i] = self.ok(batch[i], out.model_dump(), started, **prov)
        return [r for r in results if r is not None]
