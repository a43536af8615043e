"""SRigL: RigL with constant fan-in and neuron ablation (Lasby et al., ICLR 2024, "Dynamic sparse training with
structured sparsity"), as calgaryml/condensed-sparsity runs it (``RigLConstFanScheduler`` with its
``configs/config.yaml``: dynamic ablation, ``min_salient_weights_per_neuron`` 0.3 read against the sparse
constant fan-in, new connections at zero).

A neuron is an output of a layer: a row of its (out, in) weight (a convolution's output channel, its fan-in
in·kh·kw; a Conv1D read transposed). With T = int(numel·(1 − S)) the layer's active budget (S = 1 − density; the
reference's arithmetic: density 0.1 of 2,048 weights gives 204), every live neuron holds k = T // live neurons
weights at initialisation and after every update. An update (:meth:`SRigL.adapt`) at RigL's steps, with
f = α/2·(1 + cos πt/T_end), n_prune = int(n_active·f) and n_keep = n_active − n_prune:

1. **saliency**: the top n_keep |w| and the top n_prune |dense gradient| over the layer; a neuron with fewer
   salient weights than max(1, int(γ_sal·(T // rows))) is ablated, the threshold lowered to the saliency of the
   (m + 1)-th most salient neuron where that is below it, m = ⌈n_active / dense fan-in⌉ (so at least m + 1
   neurons live), and, should the live neurons then need a fan-in above the dense one, only the
   max(m, ⌈T / dense fan-in⌉) most salient live (the reference keeps m, which can leave a fan-in the layer cannot
   hold when the mask is far below its budget);
2. **drop**: keep the top n_keep |w| (ablated neurons last), at most k = T // live neurons per neuron;
3. **grow**: each live neuron grows back to k by |gradient| among its positions not kept (just-dropped ones
   included), new connections at 0; a position dropped and regrown at once keeps its weight.

Ablation is recomputed at every update. Where topo differs, it says so: the neurons of the model's last sparse
layer are never ablated (its outputs are the model's outputs; the reference's later versions skip the last layer
likewise when no module names are given); an ablated neuron holds no weight at all (the reference can leave it the
weights its global top-n_keep chose); a neuron holding more than k kept weights keeps its k largest |w| (the
reference keeps k of them in an unspecified order); ties go to the lower position (the reference leaves them to
``topk``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from topo.errors import ConfigError
from topo.sparsity.base import change_topology, check_density
from topo.sparsity.dst import RigL, largest
from topo.sparsity.masks import ParamFilter


def srigl_budget(numel: int, density: float) -> int:
    """T = int(numel·(1 − S)) with S = 1 − density: the active budget as the reference computes it."""
    return int(numel * (1.0 - (1.0 - density)))


def neurons_to_ablate(weight: torch.Tensor, grad: torch.Tensor, mask: torch.Tensor, n_keep: int, n_prune: int,
                      budget: int, gamma_sal: float) -> list[int]:
    """The neurons (rows of the (out, fan-in) tensors) that one SRigL update ablates; see the module docstring."""
    rows, fan_in = weight.shape
    n_ones = int(mask.sum())
    min_neurons = -(-n_ones // fan_in)
    salient = largest(weight.abs().float(), torch.ones_like(mask), n_keep) | \
        largest(grad.abs().float(), torch.ones_like(mask), n_prune)
    counts = salient.sum(1)
    order = torch.sort(counts, descending=True, stable=True).indices  # most salient first; ties: the lower row
    threshold = gamma_sal if gamma_sal >= 1 else max(1, int(gamma_sal * (budget // rows)))
    if min_neurons >= rows:
        return []
    threshold = min(threshold, int(counts[order[min_neurons]]))
    ablated = torch.nonzero(counts < threshold).flatten()
    if budget // (rows - len(ablated)) > fan_in:
        ablated = order[max(min_neurons, -(-budget // fan_in)):]
    return sorted(ablated.tolist())


class SRigL(RigL):
    """SRigL (Lasby et al. 2024); see the module docstring.

    Parameters
    ----------
    alpha_drop, delta_t, t_end, total_steps: RigL's (:class:`~topo.sparsity.dst.RigL`).
    gamma_sal: γ_sal, the fraction of the sparse fan-in a neuron's salient weights must reach to live (a number
        ≥ 1 is a count), 0.3 as the reference's configuration.
    dynamic_ablation: ablate neurons at each update (the reference's default run); False keeps every neuron.
    """

    method = "srigl"

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *, density: float,
                 alpha_drop: float = 0.3, delta_t: int = 100, t_end: int | None = None,
                 total_steps: int | None = None, gamma_sal: float = 0.3, dynamic_ablation: bool = True,
                 params: Iterable[str] | ParamFilter | None = None, seed: int | None = None,
                 distribution: str = "uniform", dense_first_last: bool = False) -> None:
        check_density(density)
        if not (isinstance(gamma_sal, (int, float)) and gamma_sal >= 0):
            raise ConfigError(f"gamma_sal (γ_sal) must be >= 0 (a fraction of the fan-in, or a count), got "
                              f"{gamma_sal!r}")
        self.gamma_sal = float(gamma_sal)
        self.dynamic_ablation = bool(dynamic_ablation)
        self.ablated: dict[str, list[int]] = {}
        super().__init__(model, optimizer, density=density, alpha_drop=alpha_drop, delta_t=delta_t, t_end=t_end,
                         total_steps=total_steps, params=params, seed=seed, distribution=distribution,
                         dense_first_last=dense_first_last)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "gamma_sal": self.gamma_sal, "dynamic_ablation": self.dynamic_ablation}

    def _rows(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` (shaped like weight ``name``) as (neurons, fan-in)."""
        oriented = self.oriented(name, tensor)
        return oriented.reshape(oriented.shape[0], -1)

    def _stored(self, name: str, rows: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`_rows`."""
        weight = self.masked.params[name]
        shape = self.oriented(name, weight).shape
        return self.oriented(name, rows.reshape(shape))

    def budget(self, name: str) -> int:
        """T of layer ``name``: its active budget at its density."""
        return srigl_budget(self.masked.params[name].numel(), self.layer_density[name])

    def random_initial_mask(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        """Every neuron of a sparse layer holds T // rows weights at random positions (dense layers: all)."""
        if name not in self.sparse_layers:
            return torch.ones_like(weight, dtype=torch.bool)
        rows = self._rows(name, weight)
        fan = self.budget(name) // rows.shape[0]
        keys = torch.rand(rows.shape, generator=self.generator, device=weight.device)
        chosen = keys.argsort(dim=1, stable=True)[:, :fan]
        mask = torch.zeros(rows.shape, dtype=torch.bool, device=weight.device).scatter_(1, chosen, True)
        return self._stored(name, mask)

    def fan_in(self, name: str) -> int:
        """k, the fan-in of every live neuron of layer ``name`` now."""
        rows = self._rows(name, self.masked.masks[name]).shape[0]
        return self.budget(name) // (rows - len(self.ablated.get(name, [])))

    @torch.no_grad()
    def adapt(self, grads: dict[str, torch.Tensor], step: int) -> None:
        """One SRigL update at step ``step`` with the dense gradients ``grads`` of the sparse layers."""
        missing = [n for n in self.sparse_layers if n not in grads]
        if missing:
            raise ConfigError(f"srigl: no gradient for layer(s) {missing} at update step {step}")
        last = self.sparse_layers[-1]
        for name in self.sparse_layers:
            weight = self.masked.params[name]
            mask = self.masked.masks[name]
            w, g, m = self._rows(name, weight.data), self._rows(name, grads[name]), self._rows(name, mask)
            rows = m.shape[0]
            n_ones = int(m.sum())
            n_prune = int(self.drop_fraction(step) * n_ones)
            n_keep = min(n_ones - n_prune, int(torch.count_nonzero(w)))
            n_prune = n_ones - n_keep
            ablate = neurons_to_ablate(w, g, m, n_keep, n_prune, self.budget(name), self.gamma_sal) \
                if self.dynamic_ablation and self.gamma_sal and name != last else []
            self.ablated[name] = ablate
            k = self.budget(name) // (rows - len(ablate))
            live = torch.ones(rows, dtype=torch.bool, device=m.device)
            live[ablate] = False
            magnitude = w.abs().float()
            kept = largest(magnitude, m & live.unsqueeze(1), n_keep)
            kept &= _top_per_row(torch.where(kept, magnitude, -math.inf), k)
            need = (k - kept.sum(1)).clamp(min=0) * live
            grown = _top_per_row(torch.where(kept, -math.inf, g.abs().float()), need)
            dropped = m & ~kept
            pruned, added = change_topology(weight.data, mask, self._stored(name, dropped), self._stored(name, grown),
                                            torch.zeros_like(weight.data))
            self._record_change(name, pruned, added)
        self._masks_changed()


def _top_per_row(scores: torch.Tensor, counts: int | torch.Tensor) -> torch.Tensor:
    """In every row, the ``counts`` (per row, or one for all) positions of largest score (ties: the lower
    position); positions scored −inf are never chosen."""
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(scores.shape[1], device=scores.device)
                                            .expand_as(order))
    limit = counts.unsqueeze(1) if torch.is_tensor(counts) else counts
    return (rank < limit) & (scores > -math.inf)
