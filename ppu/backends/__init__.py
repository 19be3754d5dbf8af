"""Backends: the small protocol, the registry of types, the echo backend and the Bluesky host."""

from ppu.backends.base import Backend, BackendConfig, ProgressFn, TaskRun
from ppu.backends.registry import BACKEND_TYPES, backend_class, build_backend, known_types, register_type

__all__ = ["BACKEND_TYPES", "Backend", "BackendConfig", "ProgressFn", "TaskRun", "backend_class",
           "build_backend", "known_types", "register_type"]
