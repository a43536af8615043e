"""Shared fixtures: small real data shipped in the repository and tiny models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]

#: Parametrize over devices: the CPU always, CUDA where present (selected by ``pytest -m cuda``).
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device")])]


@pytest.fixture(scope="session")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """The 1,797 8×8 handwritten digits bundled with topo (topo/data/digits.npz), scaled to [0, 1]."""
    from topo.experiments.data import bundled

    with np.load(bundled("digits.npz")) as f:
        x = torch.from_numpy(f["images"].reshape(len(f["labels"]), -1).astype(np.float32) / 16.0)
        y = torch.from_numpy(f["labels"].astype(np.int64))
    return x, y


def mlp(widths: list[int] | tuple[int, ...] = (32, 32), n_in: int = 64, n_out: int = 10) -> nn.Sequential:
    layers: list[nn.Module] = []
    for w in widths:
        layers += [nn.Linear(n_in, w), nn.ReLU()]
        n_in = w
    layers.append(nn.Linear(n_in, n_out))
    return nn.Sequential(*layers)
