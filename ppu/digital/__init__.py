"""The digital half of PPU: featurisation, served torch models with dynamic batching, surrogates.

Importing this package imports torch but not BoTorch; BoTorch is imported when a surrogate is fit.

A lab file serves predictions and trains new versions like this (paths relative to the worker)::

    backends:
      - type: surrogate_trainer          # offers train.surrogate
        name: trainer
        registry: runs/models            # writes runs/models/<target>/vNNNN/
      - type: torch                      # offers predict.* ; cuda when available, else cpu
        name: surrogates
        batch_size: 16                   # per run() call (the scheduler batches too)
        slots: 4                         # run() calls in flight; forward batch <= 64 by default
        max_wait_ms: 5
        models:
          predict.co2_uptake: {registry: runs/models}          # newest version, hot-swapped
          predict.band_gap: {registry: runs/models}
          predict.purity: {factory: "mypkg.nets:purity_net", weights: models/purity.pt, version: "3"}
"""

from ppu.digital.batcher import MicroBatcher
from ppu.digital.model_registry import ModelRegistry, ModelVersion, file_sha256
from ppu.digital.torch_backend import (
    LoadedModel,
    ModelSpec,
    TorchBackend,
    TorchConfig,
    load_model,
    select_device,
)

__all__ = [
    "LoadedModel", "MicroBatcher", "ModelRegistry", "ModelSpec", "ModelVersion", "TorchBackend", "TorchConfig",
    "file_sha256", "load_model", "select_device",
]
