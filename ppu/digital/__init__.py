"""The digital half of PPU: served torch models with dynamic batching, a model registry, GP surrogates.

Importing this package imports torch but not BoTorch; BoTorch is imported when a surrogate is fit.

A lab file serves predictions and trains new versions like this (paths relative to the worker)::

    backends:
      - type: torch                      # offers what it serves; cuda when available, else cpu
        name: surrogates
        batch_size: 16                   # per run() call (the scheduler batches too)
        slots: 4                         # run() calls in flight; forward batch <= 64 by default
        max_wait_ms: 5
        models:
          predict.yield: {registry: runs/models}               # newest version, hot-swapped
          predict.impurity: {factory: "mypkg.nets:impurity_net", weights: models/impurity.pt, version: "3",
                             encoder: "mypkg.features:encode"}  # default: the capability's encoder

A pack's trainer backend (the MOF pack's ``surrogate_trainer``) publishes the registry versions.

Columnar tasks (a block of rows as one task, see docs/protocol.md "Blocks") run through the same
backends: the encoder's ``.block`` form turns the block's columns into one feature matrix. The
``ray`` backend type (:mod:`ppu.digital.ray_backend`, ``ppu[ray]``) serves the same models on Ray
actors; it is imported only when a lab names it.
"""

from ppu.digital.batcher import MicroBatcher
from ppu.digital.model_registry import ModelRegistry, ModelVersion, file_sha256
from ppu.digital.torch_backend import (
    Coding,
    LoadedModel,
    ModelSpec,
    TorchBackend,
    TorchConfig,
    load_model,
    select_device,
)

__all__ = [
    "Coding", "LoadedModel", "MicroBatcher", "ModelRegistry", "ModelSpec", "ModelVersion", "TorchBackend",
    "TorchConfig", "file_sha256", "load_model", "select_device",
]
