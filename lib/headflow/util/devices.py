"""Moving data to the model's device and back, explicitly.

Every path that calls a model moves its inputs with :func:`to_device` and brings results back
with :func:`to_numpy` (or ``.cpu()``); host-side tensors (masks, indices) are created with
``device="cpu"``.  ``tests/test_device.py`` checks chapters 1-5's code paths for this without a GPU.
"""
from __future__ import annotations

import numpy as np
import torch


def to_device(inputs: dict, device) -> dict:
    """Processor outputs (or any dict) with every tensor moved to ``device``."""
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in inputs.items()}


def to_numpy(x: torch.Tensor) -> np.ndarray:
    """A floating tensor on any device, in any precision, as a float64 numpy array (via the CPU)."""
    return x.detach().to(device="cpu", dtype=torch.float64).numpy()
