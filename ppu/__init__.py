"""PPU, the Physics Processing Unit: one scheduler for digital and physical compute."""

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
