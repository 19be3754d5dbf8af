"""The MOF pack's registration module: the one place its ``ppu.packs`` entry point names.

It lives in ``simulators/mof/`` because it names both sides of the pack (the drivers and the
simulated twins); it imports only the capability models, and names everything else by import
path, so loading the pack imports neither bluesky, torch nor a simulator.
"""

from __future__ import annotations

from pathlib import Path

from ppu.drivers.mof.capabilities import CAPABILITIES
from ppu.packs import Pack

_REPO = Path(__file__).resolve().parents[2]
_CASES = "ppu.simulators.mof.conformance"


def _shipped(folder: str, names: tuple[str, ...]) -> tuple[Path, ...]:
    """Example files that ship with the source tree (absent from a wheel install: then none)."""
    return tuple(p for n in names if (p := _REPO / folder / n).exists())


def pack() -> Pack:
    return Pack(
        name="mof",
        description="metal-organic frameworks: synthesis robot, XRD, UV-vis, gas sorption; CO2 uptake campaigns",
        capabilities=CAPABILITIES,
        backend_types={
            "synthesis_robot": "ppu.simulators.mof.backends:SynthesisBackend",
            "xrd": "ppu.simulators.mof.backends:XRDBackend",
            "uvvis": "ppu.simulators.mof.backends:UVVisBackend",
            "gas_sorption": "ppu.simulators.mof.backends:GasSorptionBackend",
            "surrogate_trainer": "ppu.drivers.mof.trainer:SurrogateTrainerBackend",
            "mlip": "ppu.drivers.mof.mlip:MLIPBackend",
        },
        plans={
            "synthesize": "ppu.drivers.mof.synthesis:synthesize",
            "measure_xrd": "ppu.drivers.mof.xrd:measure_xrd",
            "measure_uvvis": "ppu.drivers.mof.uvvis:measure_uvvis",
            "measure_isotherm": "ppu.drivers.mof.sorption:measure_isotherm",
            "transfer": "ppu.drivers.mof.transfer:transfer",
        },
        worlds={"analytic": "ppu.simulators.mof.world:World", "mof74": "ppu.simulators.mof.world:MOF74World",
                "table": "ppu.simulators.mof.world:TableWorld"},
        encoders={"candidate": "ppu.drivers.mof.featurize:encode_prediction_input"},
        decoders={"prediction": "ppu.drivers.mof.featurize:decode_prediction"},
        labs=_shipped("labs", ("sim-lab.yaml",)),
        campaigns=_shipped("campaigns", ("demo.yaml", "mof74.yaml", "real-lab.yaml")),
        objectives={"measure.co2_uptake": "uptake_mmol_g"},
        conformance={"synthesis_robot": f"{_CASES}:Synthesis", "xrd": f"{_CASES}:XRD", "uvvis": f"{_CASES}:UVVis",
                     "gas_sorption": f"{_CASES}:GasSorption", "surrogate_trainer": f"{_CASES}:SurrogateTrainer",
                     "mlip": f"{_CASES}:MLIP"},
    )
