"""Backends: the small protocol, the registry of types, and the simple simulated ones."""

from ppu.backends.base import Backend, BackendConfig, ProgressFn, TaskRun
from ppu.backends.registry import BACKEND_TYPES, backend_class, build_backend, register_type

__all__ = ["BACKEND_TYPES", "Backend", "BackendConfig", "ProgressFn", "TaskRun", "backend_class",
           "build_backend", "register_type"]
