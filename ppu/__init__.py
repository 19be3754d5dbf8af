"""PPU, the Physics Processing Unit: one scheduler for digital and physical compute."""

import os

# A PPU process shares its cores with its event loop. OpenMP worker threads (torch, MKL, oneDNN)
# that spin between parallel regions, OpenMP's default, take the loop's core and each other's: on
# 2 shared cores the served forward passes and even plain ones ran 5-10x slower (README,
# batching). Passive: idle workers sleep. Read when OpenMP loads (with torch), so it acts when ppu
# is imported first, as in `ppu worker`; a value already set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from ppu.capabilities import Capability
from ppu.errors import PPUError
from ppu.models import (
    ActionClass,
    BackendKind,
    BackendSpec,
    BackendState,
    CapabilityOffer,
    Result,
    ResultStatus,
    Sample,
    Task,
    TaskSpec,
    TaskState,
)

__version__ = "0.1.0"

__all__ = [
    "ActionClass", "BackendKind", "BackendSpec", "BackendState", "Capability", "CapabilityOffer",
    "PPUError", "Result", "ResultStatus", "Sample", "Task", "TaskSpec", "TaskState", "__version__",
]
