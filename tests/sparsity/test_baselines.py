"""The paper's controls: random fixed, channel-wise, magnitude pruning (Han et al. 2015b), dense."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from topo.errors import ConfigError, MaskError
from topo.sparsity import Dense, FixedMask, MagnitudePruning, RandomChannelwise, RandomFixed, active_count

from ..conftest import mlp
from .test_common import train


def test_random_fixed_masks_never_change():
    torch.manual_seed(0)
    model = mlp((32, 32))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sp = RandomFixed(model, opt, density=0.25)
    start = {n: m.clone() for n, m in sp.masks.items()}
    train(model, opt, sp, 60, epoch_every=5)
    assert all(torch.equal(start[n], sp.masks[n]) for n in start)
    for mask in sp.masks.values():
        assert mask.sum() == active_count(mask.numel(), 0.25)


def test_channelwise_masks_whole_kernels_with_exact_pair_count():
    model = nn.Sequential(nn.Conv2d(6, 10, 3), nn.Conv1d(10, 4, 5), nn.Linear(7, 3))
    sp = RandomChannelwise(model, density=0.3, seed=1)
    for name, mask in sp.masks.items():
        flat = mask.flatten(2) if mask.dim() > 2 else mask.unsqueeze(-1)
        assert torch.all(flat.all(-1) == flat.any(-1)), name
        assert flat[..., 0].sum() == active_count(mask.shape[0] * mask.shape[1], 0.3)


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_magnitude_pruning_keeps_exactly_the_target_count_of_largest_weights(scope):
    torch.manual_seed(0)
    model = mlp((40, 40))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sp = MagnitudePruning(model, opt, density=0.1, prune_after=[1], scope=scope)
    for epoch in range(2):
        train(model, opt, sp, 10, epoch_every=100)
        assert all(m.all() for m in sp.masks.values())
        before = {n: w.detach().abs().clone() for n, w in sp.weights.items()}
        sp.end_epoch(epoch)
    totals = [m.numel() for m in sp.masks.values()]
    actives = [int(m.sum()) for m in sp.masks.values()]
    if scope == "layer":
        assert actives == [active_count(t, 0.1) for t in totals]
        for name, mask in sp.masks.items():
            assert before[name][mask].min() >= before[name][~mask].max()
    else:
        assert sum(actives) == active_count(sum(totals), 0.1)
        kept = torch.cat([before[n][m] for n, m in sp.masks.items()])
        dropped = torch.cat([before[n][~m] for n, m in sp.masks.items()])
        assert kept.min() >= dropped.max()
    train(model, opt, sp, 10, epoch_every=100)
    for name, mask in sp.masks.items():
        assert torch.count_nonzero(sp.weights[name][~mask]) == 0


def test_one_shot_pruning_keeps_largest_magnitudes():
    model = nn.Linear(10, 10, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.arange(100, dtype=torch.float32).view(10, 10) - 50)
    sp = MagnitudePruning(model, density=0.2, prune_after=[0])
    sp.end_epoch(0)
    kept = model.weight[sp.masks["weight"]].abs()
    assert kept.numel() == 20 and kept.min() >= 40


def test_iterative_pruning_density_falls_geometrically():
    model = mlp((50,))
    sp = MagnitudePruning(model, density=0.01, prune_after=[0, 2, 4])
    targets = []
    for epoch in range(6):
        sp.end_epoch(epoch)
        targets.append(sp.total().active / sp.total().total)
    assert targets[0] == pytest.approx(0.01 ** (1 / 3), rel=0.02)
    assert targets[2] == pytest.approx(0.01 ** (2 / 3), rel=0.05)
    assert targets[5] == pytest.approx(0.01, rel=0.1)


def test_dense_masks_nothing():
    torch.manual_seed(0)
    model = mlp((16,))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sp = Dense(model, opt)
    train(model, opt, sp, 5)
    assert all(m.all() for m in sp.masks.values())
    assert sp.total().density == 1.0


def test_fixed_mask_without_masks_or_with_an_empty_mask_is_one_clear_error():
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    with pytest.raises(ConfigError, match="masks` is empty"):
        FixedMask(model, masks={})
    with pytest.raises(MaskError, match="'1.weight' has no active weight"):
        FixedMask(model, masks={"0.weight": torch.ones(3, 4, dtype=torch.bool),
                                "1.weight": torch.zeros(2, 3, dtype=torch.bool)})


def test_active_count_is_exact_for_every_density_k_over_n():
    # (1 - 0.9) * 10 is 0.9999999999999998 in floating point: flooring it would leave a layer at 0.9 dense
    assert active_count(10, 0.9) == 9
    wrong = [(k, n) for n in range(1, 400) for k in range(1, n + 1) if active_count(n, k / n) != k]
    assert wrong == []
    for n in (10_000, 45_088_768, 4096 * 11008):  # a Llama MLP matrix
        assert all(active_count(n, k / n) == k for k in (1, 7, n // 3, n // 2, n - 1, n))
    assert active_count(7, 0.3) == 7 - 4 and active_count(100, 0.015) == 2  # ⌊4.9⌋, ⌊98.5⌋: the references' floor


def test_fixed_mask_keeps_its_seed_and_magnitude_pruning_refuses_a_global_n_m_scope():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8))
    fixed = FixedMask(model, None, masks={"0.weight": torch.rand(8, 8) < 0.5}, seed=3)
    assert fixed.seed == 3
    with pytest.raises(ConfigError, match="scope='layer'"):
        MagnitudePruning(model, None, density=0.5, scope="global", structure="2:4")


def test_a_restored_method_counts_the_epochs_done():
    from topo.sparsity import make_sparsifier

    model = torch.nn.Sequential(torch.nn.Linear(8, 8))
    method = make_sparsifier("set", model, torch.optim.SGD(model.parameters(), lr=0.1), density=0.5, seed=0)
    method.end_epoch(0)
    method.end_epoch(1)
    restored = make_sparsifier("set", model, torch.optim.SGD(model.parameters(), lr=0.1), density=0.5, seed=0)
    restored.load_state_dict(method.state_dict())
    assert restored.epochs_done == method.epochs_done == 2


def test_a_method_without_a_seed_draws_it_from_torchs_global_generator():
    from topo.sparsity.base import draw_seed

    torch.manual_seed(0)
    expected = int(torch.randint(0, 2**31 - 1, ()))
    torch.manual_seed(0)
    assert draw_seed() == expected


def test_dense_counts_steps_and_covers_the_weights_asked_for():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    dense = Dense(model, None, params=["0.weight"])
    assert list(dense.masks) == ["0.weight"] and dense.epochs_done == 0
    dense.step()
    dense.step()
    assert dense.step_count == 2


def test_random_channelwise_masks_the_optimizer_it_is_given():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(4, 6, 3), torch.nn.Flatten(), torch.nn.Linear(6 * 4 * 4, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    method = RandomChannelwise(model, optimizer, density=0.5, seed=0)
    inactive = {name: ~mask for name, mask in method.masks.items()}
    for _ in range(2):
        model(torch.randn(3, 4, 6, 6)).square().sum().backward()
        optimizer.step()  # no method.step(): the optimizer's pre-hook masks the gradients
        optimizer.zero_grad()
    weights = dict(model.named_parameters())
    assert all(not weights[name].detach()[off].any() for name, off in inactive.items())


def test_fixed_mask_holds_only_the_layers_given_at_their_density():
    torch.manual_seed(0)
    model = mlp((32,))
    mask = torch.rand(32, 64) < 0.25
    fixed = FixedMask(model, masks={"0.weight": mask})
    assert list(fixed.masks) == ["0.weight"] and fixed.sparse_layers == ["0.weight"]
    assert fixed.config()["density"] == pytest.approx(mask.float().mean().item())
    assert torch.count_nonzero(model[2].weight) == model[2].weight.numel()  # the other layer is untouched


def test_pruning_prunes_only_the_parameters_named_and_refuses_negative_epochs():
    torch.manual_seed(0)
    model = mlp((32,))
    pruning = MagnitudePruning(model, density=0.25, prune_after=[0], params=["2.weight"])
    assert list(pruning.masks) == ["2.weight"]
    with pytest.raises(ConfigError, match="prune_after"):
        MagnitudePruning(mlp((32,)), density=0.25, prune_after=[-1])


def test_channelwise_options_reach_the_masks():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 16, 3), nn.Conv2d(16, 4, 3))
    sp = RandomChannelwise(model, density=0.3, params=["1.weight", "2.weight"], distribution="erk", seed=0)
    assert sp.sparse_layers == ["1.weight", "2.weight"]
    assert sp.layer_density["1.weight"] != sp.layer_density["2.weight"]  # ERK, not uniform
    for name, density in sp.layer_density.items():
        pairs = sp.masks[name][:, :, 0, 0]
        assert pairs.sum() == active_count(pairs.numel(), density), name
    first_last = RandomChannelwise(model, density=0.3, dense_first_last=True, seed=0)
    assert first_last.masks["0.weight"].all() and first_last.masks["2.weight"].all()
    assert not first_last.masks["1.weight"].all()


def test_a_fixed_mask_given_as_numbers_is_held_as_booleans():
    model = mlp((16,))
    mask = (torch.arange(16 * 64).view(16, 64) % 3 == 0).float()
    sp = FixedMask(model, masks={"0.weight": mask})
    assert sp.masks["0.weight"].dtype == torch.bool and torch.equal(sp.masks["0.weight"], mask.bool())
    assert (model[0].weight[~mask.bool()] == 0).all()


def test_the_pruning_schedule_by_hand():
    sp = MagnitudePruning(mlp(), density=0.25, prune_after=[2, 4])
    # after epochs 0-2 (3 done) the first pruning has run: α^(1/2); after epoch 4 both: α
    assert [sp.current_target(done) for done in (0, 2, 3, 4, 5)] == [1.0, 1.0, 0.5, 0.5, 0.25]
    assert sp.current_target(3, density=0.04) == pytest.approx(0.2)
