"""Every method trains a real classifier: an MLP on the bundled handwritten digits learns well above chance."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from topo.sparsity import METHODS, make_sparsifier

from ..conftest import mlp


def method_kwargs(method: str, model: nn.Module, digits=None) -> dict:
    if method == "dense":
        return {}
    if method == "adaptive":
        return {"density": 0.3, "k": 0.5, "every": 1, "unit": "epoch"}
    if method == "pruning":
        return {"density": 0.3, "prune_after": [5]}
    if method == "fixed-mask":
        gen = torch.Generator().manual_seed(0)
        return {"masks": {n: torch.rand(p.shape, generator=gen) < 0.3
                          for n, p in model.named_parameters() if n.endswith("weight")}}
    if method in ("rigl", "srigl"):
        return {"density": 0.3, "delta_t": 20, "total_steps": 12 * 22}
    if method == "snip":
        x, y = digits
        return {"density": 0.3, "batch": (x[:256], y[:256])}
    return {"density": 0.3}


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(METHODS))
def test_mlp_learns_digits_under_every_method(method, digits):
    x, y = digits
    torch.manual_seed(0)
    order = torch.randperm(len(y))
    train_idx, val_idx = order[:1400], order[1400:]
    model = mlp((64, 64))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3 * 3)
    sp = make_sparsifier(method, model, opt, **method_kwargs(method, model, (x[train_idx], y[train_idx])))
    for epoch in range(12):
        for batch in train_idx[torch.randperm(len(train_idx))].split(64):
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sp.step()
        sp.end_epoch(epoch)
    with torch.no_grad():
        accuracy = (model(x[val_idx]).argmax(1) == y[val_idx]).float().mean().item()
    assert accuracy > 0.85, f"{method}: validation accuracy {accuracy:.3f} (chance is 0.1)"
    for name, mask in sp.masks.items():
        assert torch.count_nonzero(sp.weights[name][~mask]) == 0
