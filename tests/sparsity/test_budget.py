"""Budget matching: widened sparse models have the dense baseline's non-zero count (Section 4)."""

from __future__ import annotations

import pytest
from torch import nn

from topo.errors import ConfigError
from topo.sparsity import match_budget, nonzero_count

from ..conftest import mlp


def mnist_mlp(widths):
    return mlp(widths, n_in=784, n_out=10)


def cnn(widths):
    c1, c2, c3 = widths
    return nn.Sequential(
        nn.Conv2d(3, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c3, 10),
    )


@pytest.mark.parametrize("log_alpha", [0.5, 1.0, 1.5, 2.0])
def test_mlp_budget_matched_within_one_percent(log_alpha):
    density = 10 ** -log_alpha
    match = match_budget(mnist_mlp, [64, 64, 64], density)
    assert match.relative_error <= 0.01
    assert nonzero_count(mnist_mlp(match.widths), density) == match.nonzeros
    assert match.target == nonzero_count(mnist_mlp([64, 64, 64]), 1.0)
    assert all(w > 64 for w in match.widths)
    assert match.wide_dense_params > match.target


@pytest.mark.parametrize("log_alpha", [0.5, 1.0])
def test_cnn_budget_matched_and_widened_by_about_inverse_sqrt_alpha(log_alpha):
    density = 10 ** -log_alpha
    match = match_budget(cnn, [32, 64, 64], density)
    assert match.relative_error <= 0.01
    scale = match.widths[1] / 64
    assert scale == pytest.approx(density ** -0.5, rel=0.15)
    assert match.widths[0] / 32 == pytest.approx(scale, rel=0.05)  # every width scaled by one factor, then refined
    assert match.density == density


def test_full_density_keeps_widths():
    assert match_budget(mnist_mlp, [64, 64, 64], 1.0).widths == [64, 64, 64]


def test_bad_widths_and_density():
    with pytest.raises(ConfigError, match="widths"):
        match_budget(mnist_mlp, [0, 64], 0.5)
    with pytest.raises(ConfigError, match="density"):
        match_budget(mnist_mlp, [64], 0.0)


def test_small_model_matches_as_closely_as_integer_widths_allow(caplog):
    from topo.experiments.models import get_model_spec

    spec = get_model_spec("lstm")
    factory = lambda w: spec.build(list(w), n_in=20, n_out=20)  # noqa: E731
    with caplog.at_level("WARNING", logger="topo.sparsity.budget"):
        match = match_budget(factory, [32], 10**-0.5)
    assert 0.01 < match.relative_error < 0.02 and match.widths == [56]
    assert "closest integer widths [56]" in caplog.text
    for other in ([55], [57]):  # no integer width does better
        assert abs(nonzero_count(factory(other), 10**-0.5) - match.target) > abs(match.nonzeros - match.target)


@pytest.mark.parametrize("log_alpha", [0.5, 1.0])
def test_dense_first_and_last_layers_count_inside_the_budget(log_alpha):
    import torch

    from topo.sparsity import make_sparsifier

    density = 10 ** -log_alpha
    match = match_budget(mnist_mlp, [64, 64, 64], density, dense_first_last=True)
    assert match.relative_error <= 0.01
    model = mnist_mlp(match.widths)
    sp = make_sparsifier("random-fixed", model, density=density, dense_first_last=True, seed=0)
    nonzeros = sum(int(torch.count_nonzero(p)) for p in model.parameters())
    assert abs(nonzeros - match.target) / match.target <= 0.01  # what the model really holds, not a formula
    plain = match_budget(mnist_mlp, [64, 64, 64], density)
    assert sum(match.widths) < sum(plain.widths)  # the dense first layer leaves less budget for widening
    assert match.nonzeros == nonzero_count(model, density, dense_first_last=True)
    assert sp.masks["0.weight" if "0.weight" in sp.masks else next(iter(sp.masks))].all()


def _two_layer(widths):
    return nn.Sequential(nn.Linear(20, widths[0]), nn.ReLU(), nn.Linear(widths[0], 7))


@pytest.mark.parametrize("density", [0.5, 0.3, 0.1])
def test_one_hidden_width_is_the_best_integer_by_brute_force(density):
    from topo.sparsity import active_count

    target = nonzero_count(_two_layer([16]), 1.0)

    def count(width: int) -> int:  # two sparse weights, dense biases
        return active_count(20 * width, density) + active_count(7 * width, density) + width + 7

    best = min(range(1, 400), key=lambda w: (abs(count(w) - target), w))
    match = match_budget(_two_layer, [16], density, tolerance=0.05)
    assert abs(match.nonzeros - target) == abs(count(best) - target) and match.nonzeros == count(match.widths[0])
    assert match.target == target and match.wide_dense_params == nonzero_count(_two_layer(match.widths), 1.0)


def test_two_widths_end_at_a_local_optimum_of_unit_moves():
    match = match_budget(lambda ws: mlp(tuple(ws)), [30, 12], 0.2)

    def gap(widths):
        return abs(nonzero_count(mlp(tuple(widths)), 0.2) - match.target)

    for i in range(2):
        for delta in (-1, 1):
            moved = list(match.widths)
            moved[i] += delta
            assert gap(moved) >= gap(match.widths)
    assert nonzero_count(mlp((30, 12)), 1.0) == match.target


def test_widths_of_one_are_allowed_and_a_parameter_filter_counts_only_its_weights():
    assert match_budget(_two_layer, [1], 1.0).widths == [1]
    only_first = ["0.weight"]
    match = match_budget(_two_layer, [16], 0.25, params=only_first, tolerance=0.05)
    dense = nonzero_count(_two_layer([16]), 1.0, only_first)
    assert match.target == dense and match.nonzeros == nonzero_count(_two_layer(match.widths), 0.25, only_first)
    assert nonzero_count(_two_layer([16]), 0.25, only_first) != nonzero_count(_two_layer([16]), 0.25)


def test_the_budget_counts_only_the_parameters_named():
    params = ["0.weight", "2.weight"]  # the last layer stays out of the sparse budget
    match = match_budget(mnist_mlp, [64, 64, 64], 0.25, params=params)
    assert match.target == nonzero_count(mnist_mlp([64, 64, 64]), 1.0, params)
    assert match.wide_dense_params == nonzero_count(mnist_mlp(match.widths), 1.0, params)
    assert match.relative_error <= 0.01


def _mlp_13_to_5(widths):
    return mlp(tuple(widths), n_in=13, n_out=5)


@pytest.mark.parametrize(("base", "density"), [([11, 11, 11], 0.5), ([11, 11, 11], 0.3), ([30, 12], 0.05),
                                               ([30, 12], 0.2), ([7, 40, 3], 0.3)])
def test_widths_where_the_scale_is_not_enough_end_at_a_local_optimum_of_unit_moves(base, density):
    # the bisection's common scale leaves these one unit off the best: the search must step down (11s at 0.5,
    # 30/12 at 0.05) or take a second pass (30/12 at 0.2, 7/40/3 at 0.3)
    match = match_budget(_mlp_13_to_5, base, density, tolerance=0.05)

    def gap(widths):
        return abs(nonzero_count(_mlp_13_to_5(widths), density) - match.target)

    for i in range(len(base)):
        for delta in (-1, 1):
            moved = list(match.widths)
            moved[i] = max(1, moved[i] + delta)
            assert gap(moved) >= gap(match.widths)


@pytest.mark.parametrize(("n_in", "base", "density"), [(20, [2, 3], 0.3), (2, [1], 0.5), (2, [1], 0.3)])
def test_a_gap_of_exactly_half_a_unit_step_and_one_is_matched_with_a_warning(n_in, base, density, caplog):
    def factory(widths):
        return mlp(tuple(widths), n_in=n_in, n_out=1)

    with caplog.at_level("WARNING", logger="topo.sparsity.budget"):
        match = match_budget(factory, base, density)  # the guard's edge: a warning, not an error
    assert match.relative_error > 0.01 and "closest integer widths" in caplog.text


def _wide_then_one(widths):
    return mlp(tuple(widths), n_in=50, n_out=1)


def test_a_local_optimum_farther_than_half_the_smallest_unit_step_is_an_error():
    # [2, 1] at 0.4 ends where the second width, held at 1, moves the count by less than the gap left by the first
    with pytest.raises(ConfigError, match=r"^no widths near \[\d+, 1\] match the budget of \d+ non-zeros within 1.0%"):
        match_budget(_wide_then_one, [2, 1], 0.4)
    match = match_budget(_wide_then_one, [3, 1], 0.5)  # there, the gap is within half the smallest step and one
    assert match.widths == [6, 1] and match.relative_error > 0.01
    three = match_budget(lambda widths: mlp(tuple(widths), n_in=20, n_out=1), [2, 2, 1], 0.5)
    assert three.widths == [3, 4, 2] and three.relative_error > 0.01  # each step widens one width, the others kept
