"""SRigL: constant fan-in through every update, neuron ablation worked by hand, counts as the reference's."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from topo.errors import ConfigError
from topo.sparsity import SRigL, make_sparsifier
from topo.sparsity.srigl import neurons_to_ablate, srigl_budget

from ..conftest import mlp


def test_budget_is_the_references_int_of_numel_times_one_minus_sparsity():
    assert srigl_budget(2048, 0.1) == 204 and srigl_budget(100, 0.3) == 30 and srigl_budget(10, 0.9) == 9
    assert srigl_budget(64 * 64, 0.25) == 1024


def _hand_layer():
    """Four neurons of fan-in 4, two weights each: |w| falls from neuron 0 to neuron 3."""
    weight = torch.tensor([[0.9, 0.8, 0.0, 0.0], [0.7, 0.6, 0.0, 0.0], [0.05, 0.04, 0.0, 0.0],
                           [0.03, 0.02, 0.0, 0.0]])
    grad = torch.zeros(4, 4)
    grad[0, 2], grad[1, 3] = 5.0, 4.0
    return weight, grad, weight != 0


def test_neurons_with_too_few_salient_weights_are_ablated_by_hand():
    weight, grad, mask = _hand_layer()
    # n_keep 6 largest |w|: neurons 0, 1, 2 twice; n_prune 2 largest |grad|: neurons 0 and 1 once more.
    # Salient counts 3, 3, 2, 0; threshold max(1, int(0.3 · (8 // 4))) = 1; m = ⌈8 / 4⌉ = 2 and the third most
    # salient neuron has 2 >= 1, so the threshold stays: neuron 3 goes
    assert neurons_to_ablate(weight, grad, mask, n_keep=6, n_prune=2, budget=8, gamma_sal=0.3) == [3]
    # a count threshold of 3 is lowered to the third neuron's 2: neurons 0-2 live, 3 goes
    assert neurons_to_ablate(weight, grad, mask, n_keep=6, n_prune=2, budget=8, gamma_sal=3) == [3]
    # every active weight salient: two each, nothing below the threshold
    assert neurons_to_ablate(weight, grad, mask, n_keep=8, n_prune=0, budget=8, gamma_sal=0.3) == []
    everything = torch.ones(4, 4)
    assert neurons_to_ablate(everything, grad, everything != 0, 16, 0, 16, 0.3) == []  # m = 4: no one can go


def test_ablation_never_asks_live_neurons_for_more_than_the_dense_fan_in():
    # a budget of 6 over neurons of fan-in 2 needs 3 live neurons whatever the saliency says: the mask holds only 2
    # weights, so m = 1; salient counts 2, 1, 0, 0 lower the threshold to 1, which would leave 2 neurons
    weight = torch.tensor([[0.9, 0.8], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    grad = torch.zeros(4, 2)
    grad[1, 0] = 1.0
    ablated = neurons_to_ablate(weight, grad, weight != 0, n_keep=2, n_prune=1, budget=6, gamma_sal=2)
    assert ablated == [3]


def _train(sparsifier: SRigL, model: nn.Module, optimizer, steps: int, check=None) -> None:
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = torch.randn(32, 64, generator=generator)
        y = torch.randint(0, 10, (32,), generator=generator)
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        sparsifier.step()
        if check is not None:
            check()


def test_every_live_neuron_keeps_the_constant_fan_in_after_every_update():
    torch.manual_seed(0)
    model = mlp((48, 32))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    sp = make_sparsifier("srigl", model, optimizer, density=0.05, delta_t=2, t_end=40, seed=0)
    budgets = {n: sp.budget(n) for n in sp.sparse_layers}
    for name in sp.sparse_layers:  # at initialisation: T // rows in every row
        assert (sp.masks[name].sum(1) == budgets[name] // sp.masks[name].shape[0]).all()
    seen = {"ablated": 0, "updates": 0}

    def check() -> None:
        for name in sp.sparse_layers:
            mask, weight = sp.masks[name], sp.weights[name].detach()
            ablated = sp.ablated.get(name, [])
            live = [r for r in range(mask.shape[0]) if r not in ablated]
            assert (mask[live].sum(1) == budgets[name] // len(live)).all(), name
            assert sp.fan_in(name) == budgets[name] // len(live), name
            assert not mask[ablated].any() and (weight[ablated] == 0).all()
            assert (weight[~mask] == 0).all()
            seen["ablated"] += len(ablated)
        seen["updates"] += sp.pop_changes()[sp.sparse_layers[0]][0] > 0

    _train(sp, model, optimizer, 30, check)
    assert seen["updates"] >= 3 and seen["ablated"] > 0
    assert sp.ablated.get(sp.sparse_layers[-1], []) == []  # the output layer's neurons are never ablated


def test_an_update_drops_the_smallest_and_grows_the_largest_gradients_at_zero():
    model = nn.Sequential(nn.Linear(8, 4, bias=False), nn.Linear(4, 2, bias=False))
    sp = SRigL(model, density=0.5, delta_t=1, t_end=100, dynamic_ablation=False, seed=0)
    with torch.no_grad():
        mask = torch.zeros(4, 8, dtype=torch.bool)
        mask[:, :4] = True
        model[0].weight.copy_(torch.arange(1, 33, dtype=torch.float32).reshape(4, 8) * mask)
    sp.masked.set_mask("0.weight", mask)
    grad = torch.zeros(4, 8)
    grad[:, 7] = 10.0  # the largest gradient of every neuron: its last input
    grads = {"0.weight": grad, "1.weight": torch.ones(2, 4)}
    step = 50  # f = 0.15 (1 + cos(π/2)) = 0.15: ⌊16 · 0.15⌋ = 2 of layer 0's weights dropped
    sp.pop_changes()
    sp.adapt(grads, step)
    new = sp.masks["0.weight"]
    # the two smallest |w| (1 and 2, neuron 0's first inputs) go; neuron 0 regrows to k = 16 // 4 = 4 by gradient:
    # input 7, then (every other score 0) the lowest input not kept, 0, which was just dropped: it keeps its weight
    assert new.sum(1).tolist() == [4, 4, 4, 4]
    assert new[0].nonzero().flatten().tolist() == [0, 2, 3, 7]
    assert model[0].weight[0].tolist() == [1.0, 0.0, 3.0, 4.0, 0.0, 0.0, 0.0, 0.0]  # input 7 grown at zero
    assert new[1:, :4].all() and not new[1:, 4:].any()
    assert torch.equal(model[0].weight[1:, :4], torch.arange(1, 33, dtype=torch.float32).reshape(4, 8)[1:, :4])
    assert sp.pop_changes()["0.weight"] == (1, 1)  # input 1 pruned, input 7 grown; input 0 counts as neither


def test_srigl_works_with_erk_and_dense_first_last_and_refuses_bad_settings():
    torch.manual_seed(0)
    model = mlp((32, 32, 32))
    sp = make_sparsifier("srigl", model, density=0.3, total_steps=100, distribution="erk", dense_first_last=True,
                         seed=0)
    names = list(sp.masks)
    assert sp.masks[names[0]].all() and sp.masks[names[-1]].all()
    for name in sp.sparse_layers:
        rows = sp.masks[name].shape[0]
        assert (sp.masks[name].sum(1) == sp.budget(name) // rows).all()
    with pytest.raises(ConfigError, match="gamma_sal"):
        make_sparsifier("srigl", mlp((8,)), density=0.3, total_steps=10, gamma_sal=-1)
    with pytest.raises(ConfigError, match="t_end"):
        make_sparsifier("srigl", mlp((8,)), density=0.3)


def test_neurons_to_ablate_by_hand():
    from topo.sparsity.srigl import neurons_to_ablate

    weight = torch.full((4, 10), 0.01)
    weight[0, :3], weight[1, :2], weight[2, 0] = 10.0, 9.0, 8.0  # the 6 largest |w|: 3, 2, 1 and 0 per neuron
    grad, mask = torch.zeros(4, 10), torch.zeros(4, 10, dtype=torch.bool)
    mask[0, :4] = True  # 4 active weights: at least one neuron must live
    # γ·(T // rows) = 0.3 · (12 // 4) = 0.9 → threshold max(1, 0) = 1: only the neuron without a salient weight
    assert neurons_to_ablate(weight, grad, mask, n_keep=6, n_prune=0, budget=12, gamma_sal=0.3) == [3]
    # 0.5 · (20 // 4) = 2.5 → threshold 2: neurons with fewer than two salient weights (20 // 2 = 10 fits)
    assert neurons_to_ablate(weight, grad, mask, n_keep=6, n_prune=0, budget=20, gamma_sal=0.5) == [2, 3]


def test_srigl_and_rigl_defaults_and_srigls_layers():
    from topo.sparsity.srigl import neurons_to_ablate

    model = torch.nn.Sequential(torch.nn.Linear(40, 30), torch.nn.ReLU(), torch.nn.Linear(30, 5))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for method in ("rigl", "srigl"):
        assert make_sparsifier(method, model, optimizer, density=0.5, total_steps=10, seed=0).delta_t == 100
    erk = make_sparsifier("srigl", model, optimizer, density=0.3, total_steps=10, seed=0, distribution="erk")
    assert erk.layer_density["2.weight"] > erk.layer_density["0.weight"]
    assert list(make_sparsifier("srigl", model, optimizer, density=0.3, total_steps=10, seed=0,
                                params=["0.weight"]).masks) == ["0.weight"]
    # γ ≥ 1 is a count of salient weights: 2 here, whatever the budget
    weight = torch.full((4, 10), 0.01)
    weight[0, :3], weight[1, :3], weight[2, :2] = 10.0, 9.0, 8.0  # salient (top 8 |w|): 3, 3, 2, 0
    mask = torch.zeros(4, 10, dtype=torch.bool)
    mask[0, :4] = True
    assert neurons_to_ablate(weight, torch.zeros(4, 10), mask, n_keep=8, n_prune=0, budget=12, gamma_sal=2) == [3]


def test_positions_scored_minus_infinity_are_never_chosen_even_when_a_row_asks_for_more():
    import math

    from topo.sparsity.srigl import _top_per_row

    scores = torch.tensor([[1.0, -math.inf, -math.inf, 0.5], [-math.inf, 2.0, 3.0, 1.0]])
    assert _top_per_row(scores, 3).tolist() == [[True, False, False, True], [False, True, True, True]]


def test_options_reach_the_update_schedule_and_a_zero_saliency_threshold_is_allowed():
    model = mlp((16,))
    sp = SRigL(model, density=0.5, alpha_drop=0.1, delta_t=1, t_end=10, gamma_sal=0, seed=0)
    assert sp.alpha_drop == 0.1 and sp.drop_fraction(0) == pytest.approx(0.1)


def test_the_initial_mask_depends_on_the_seed_alone():
    masks = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)  # the global generator moves; SRigL's own does not
        masks.append(SRigL(mlp((16,)), density=0.25, t_end=10, seed=7).masks)
    assert all(torch.equal(masks[0][n], masks[1][n]) for n in masks[0])
    other = SRigL(mlp((16,)), density=0.25, t_end=10, seed=8).masks
    assert not all(torch.equal(masks[0][n], other[n]) for n in masks[0])


def test_a_missing_schedule_is_named_for_srigl():
    with pytest.raises(ConfigError, match="^srigl needs t_end"):
        SRigL(mlp((16,)), density=0.25)


def test_a_conv1d_layer_keeps_a_constant_fan_in_per_output_neuron():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = nn.Sequential(transformers.pytorch_utils.Conv1D(12, 8), nn.ReLU(), nn.Linear(12, 4))  # weight (in, out)
    sp = SRigL(model, density=0.25, delta_t=1, t_end=20, seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for step in range(6):
        x = torch.randn(16, 8, generator=torch.Generator().manual_seed(step))
        loss = model(x).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        sp.step()
        mask = sp.masks["0.weight"]  # stored (in, out): an output neuron's inputs are a column
        live = [c for c in range(12) if c not in sp.ablated.get("0.weight", [])]
        assert (mask[:, live].sum(0) == sp.fan_in("0.weight")).all()


def _rows_of_salient_counts(counts: list[int], fan_in: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """A weight whose row i has counts[i] non-zero inputs (all larger than any zero) and a zero gradient."""
    weight = torch.zeros(len(counts), fan_in)
    for row, count in enumerate(counts):
        weight[row, :count] = 1.0 + row / 1000
    return weight, torch.zeros_like(weight)


def test_a_salient_count_of_one_or_more_is_a_count_and_below_one_a_fraction_of_the_floored_fan_in():
    weight, grad = _rows_of_salient_counts([2, 2, 2, 1])  # 7 weights: m = 2 neurons at least, the third has 2
    ablate = functools.partial(neurons_to_ablate, weight, grad, weight != 0, n_keep=7, n_prune=0)
    assert ablate(budget=8, gamma_sal=1) == []  # a count of 1: every neuron has one
    assert ablate(budget=8, gamma_sal=1.5) == [3]  # a count of 1.5
    # 0.8 of the fan-in budget // rows = 10 // 4 = 2 is int(1.6) = 1, not int(0.8 · 2.5) = 2
    assert ablate(budget=10, gamma_sal=0.8) == []
    assert ablate(budget=8, gamma_sal=0.8) == []


def test_too_few_live_neurons_fall_back_to_the_most_salient_by_floored_division():
    weight, grad = _rows_of_salient_counts([2, 2, 2, 1])
    ablate = functools.partial(neurons_to_ablate, weight, grad, weight != 0, n_keep=7, n_prune=0, gamma_sal=2)
    assert ablate(budget=12) == [3]  # 12 // 3 = 4 live fan-in fits the dense fan-in of 4
    assert ablate(budget=13) == [3]  # 13 // 3 = 4 too (13 / 3 would not)
    # counts 2, 2, 1, 1 (the last two by gradient only); 9 // 2 = 4 fits: both go, the fallback would keep one
    weight, grad = _rows_of_salient_counts([2, 2, 0, 0])
    grad[2, 0] = grad[3, 0] = 1.0
    assert neurons_to_ablate(weight, grad, weight != 0, n_keep=4, n_prune=2, budget=9, gamma_sal=2) == [2, 3]


def test_the_fallback_keeps_the_lower_rows_among_equally_salient_neurons():
    weight, grad = _rows_of_salient_counts([2] * 64 + [1] * 64)  # 192 weights: m = 48
    # count 2 ablates the 64 neurons of count 1; 384 // 64 = 6 > 4, so the fallback keeps the 384 / 4 = 96 most
    # salient: the 64 of count 2 and, of the equally salient rest, the lowest 32 rows
    assert neurons_to_ablate(weight, grad, weight != 0, n_keep=192, n_prune=0, budget=384,
                             gamma_sal=2) == list(range(96, 128))
