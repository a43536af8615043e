"""Checks every sparsity method must pass (the scikit-learn "common tests" idea)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from topo.errors import ConfigError, MaskError
from topo.sparsity import METHODS, FixedMask, make_sparsifier

from ..conftest import mlp

DENSITY = 0.3


def build(method: str, model: nn.Module, opt: torch.optim.Optimizer, seed: int = 0):
    kwargs: dict = {"seed": seed}
    if method == "adaptive":
        kwargs.update(density=DENSITY, every=5, unit="step", k=0.5)
    elif method == "pruning":
        kwargs.update(density=DENSITY, prune_after=[0])
    elif method == "fixed-mask":
        kwargs["masks"] = {n: torch.rand_like(p) < DENSITY for n, p in model.named_parameters() if n.endswith("weight")}
    elif method in ("rigl", "srigl"):
        kwargs.update(density=DENSITY, delta_t=5, total_steps=100)
    elif method == "snip":
        device = next(model.parameters()).device
        g = torch.Generator().manual_seed(seed)
        batch = (torch.randn(16, 64, generator=g).to(device), torch.randint(0, 10, (16,), generator=g).to(device))
        kwargs.update(density=DENSITY, batch=batch)
    elif method != "dense":
        kwargs["density"] = DENSITY
    return make_sparsifier(method, model, opt, **kwargs)


def train(model, opt, sp, steps, data_seed=0, epoch_every=10):
    g = torch.Generator().manual_seed(data_seed)
    for i in range(steps):
        x = torch.randn(16, 64, generator=g)
        y = torch.randint(0, 10, (16,), generator=g)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sp.step()
        if (i + 1) % epoch_every == 0:
            sp.end_epoch((i + 1) // epoch_every - 1)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_inactive_weights_exactly_zero_after_100_adam_steps_with_weight_decay(method):
    torch.manual_seed(0)
    model = mlp((32, 32))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    sp = build(method, model, opt)
    train(model, opt, sp, 100)
    for name, mask in sp.masks.items():
        weight = sp.weights[name]
        assert torch.count_nonzero(weight[~mask]) == 0, name
        if method not in ("set", "rigl", "srigl"):  # these grow new weights at zero: active and zero until trained
            assert torch.count_nonzero(weight[mask]) == mask.sum(), name


@pytest.mark.parametrize("method", sorted(METHODS))
def test_state_dict_round_trip_resumes_bit_identically(method):
    torch.manual_seed(0)
    model = mlp((32, 32))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sp = build(method, model, opt, seed=4)
    train(model, opt, sp, 23)
    saved = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict(), "sp": sp.state_dict()})
    train(model, opt, sp, 27, data_seed=1)

    fresh = mlp((32, 32))
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=1e-2)
    fresh_sp = build(method, fresh, fresh_opt, seed=99)
    fresh.load_state_dict(saved["model"])
    fresh_opt.load_state_dict(saved["opt"])
    fresh_sp.load_state_dict(saved["sp"])
    train(fresh, fresh_opt, fresh_sp, 27, data_seed=1)
    for name in sp.masks:
        assert torch.equal(sp.masks[name], fresh_sp.masks[name])
    for a, b in zip(model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("method", sorted(set(METHODS) - {"dense", "fixed-mask"}))
def test_density_outside_unit_interval_is_rejected(method):
    for bad in (0.0, -0.1, 1.01):
        with pytest.raises(ConfigError, match="density"):
            make_sparsifier(method, mlp(), density=bad)


def test_model_without_sparsifiable_weights_is_rejected():
    with pytest.raises(ConfigError, match="LayerNorm"):
        make_sparsifier("random-fixed", nn.LayerNorm(4), density=0.5)


def test_unknown_parameter_name_is_named():
    with pytest.raises(ConfigError, match="nope.weight"):
        make_sparsifier("random-fixed", mlp(), density=0.5, params=["0.weight", "nope.weight"])


def test_unknown_method_lists_valid_ones():
    with pytest.raises(ConfigError, match="adaptive"):
        make_sparsifier("lottery", mlp())


def test_default_selection_covers_linear_conv_and_recurrent_weights():
    model = nn.ModuleDict(
        {"conv": nn.Conv2d(3, 4, 3), "lstm": nn.LSTM(5, 6, num_layers=2), "gru": nn.GRUCell(3, 4),
         "bn": nn.BatchNorm2d(4), "fc": nn.Linear(4, 2)}
    )
    sp = make_sparsifier("random-fixed", model, density=0.5)
    assert sp.masked.names == [
        "conv.weight", "lstm.weight_ih_l0", "lstm.weight_hh_l0", "lstm.weight_ih_l1", "lstm.weight_hh_l1",
        "gru.weight_ih", "gru.weight_hh", "fc.weight",
    ]


def test_filter_callable_overrides_default():
    sp = make_sparsifier("random-fixed", mlp((8,)), density=0.5, params=lambda name, p, m: p.dim() == 1)
    assert sp.masked.names == ["0.bias", "2.bias"]


def test_fixed_mask_rejects_wrong_shape():
    model = mlp((8,))
    with pytest.raises(MaskError, match="0.weight"):
        FixedMask(model, masks={"0.weight": torch.ones(3, 3, dtype=torch.bool)})


def test_mask_grads_without_optimizer_hook():
    torch.manual_seed(0)
    model = mlp((16,))
    sp = make_sparsifier("random-fixed", model, density=0.2)
    model(torch.randn(4, 64)).sum().backward()
    sp.mask_grads()
    for name, mask in sp.masks.items():
        assert torch.count_nonzero(sp.weights[name].grad[~mask]) == 0


def test_optimizer_state_of_regrown_weights_is_reset():
    torch.manual_seed(0)
    model = mlp((32,))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sp = make_sparsifier("adaptive", model, opt, density=0.3, every=4, unit="step")
    train(model, opt, sp, 3)
    before = {n: opt.state[p]["exp_avg"].clone() for n, p in sp.weights.items()}
    train(model, opt, sp, 1)
    for name, param in sp.weights.items():
        mask = sp.masks[name]
        was_inactive = before[name] == 0
        fresh = mask & was_inactive
        assert torch.all(opt.state[param]["exp_avg_sq"][fresh] >= 0)
    assert sum(p for p, _ in sp.pop_changes().values()) > 0


def test_every_method_records_its_hyperparameters_under_their_names():
    model = mlp((16,))
    expected = {
        "set": {"zeta": 0.3, "every": 1, "drop": "per-sign", "init": "normal", "init_scale": 0.1,
                "reinit_when_same": False},
        "rigl": {"alpha_drop": 0.3, "delta_t": 5, "t_end": 75, "reinit_when_same": False},
        "srigl": {"alpha_drop": 0.3, "delta_t": 5, "t_end": 75, "gamma_sal": 0.3, "dynamic_ablation": True},
        "pruning": {"prune_after": [0], "scope": "layer"},
    }
    for method, fields in expected.items():
        config = build(method, model, None).config()
        assert config["method"] == method and config["density"] == DENSITY and config["seed"] == 0
        assert config["distribution"] == "uniform" and config["dense_first_last"] is False
        for key, value in fields.items():
            assert config[key] == value, (method, key)
    structured = make_sparsifier("set", mlp((16,)), density=0.5, structure="2:4", seed=0).config()
    assert structured["structure"] == "2:4" and "structure" not in build("set", mlp((16,)), None).config()


def test_remove_detaches_the_optimizer_hook_once():
    torch.manual_seed(0)
    model = mlp((16,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sp = make_sparsifier("random-fixed", model, opt, density=0.3, seed=0)
    sp.remove()
    assert sp._hook is None
    sp.remove()  # a second call is harmless
    nn.functional.cross_entropy(model(torch.randn(4, 64)), torch.tensor([0, 1, 2, 3])).backward()
    opt.step()  # no hook: inactive gradients are no longer zeroed, so inactive weights move
    assert any(torch.count_nonzero(sp.weights[n].detach()[~m]) for n, m in sp.masks.items())


@pytest.mark.parametrize("method", sorted(METHODS))
def test_the_optimizer_given_is_the_one_the_method_masks_and_the_recorder_saves(method):
    """The recorder saves ``sparsifier.optimizer``'s state for a resume, and the step pre-hook on it zeroes the
    inactive gradients before the update (a method built without it would let Adam's moments see them)."""
    torch.manual_seed(0)
    model = mlp((32, 32))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    sp = build(method, model, opt)
    assert sp.optimizer is opt
    loss = model(torch.randn(8, 64)).square().mean()
    loss.backward()
    opt.step()  # the pre-hook masks the gradients of every sparse layer
    for name, mask in sp.masks.items():
        grad = dict(model.named_parameters())[name].grad
        if method != "dense":
            assert torch.count_nonzero(grad[~mask]) == 0, name


def test_a_sparsifier_records_the_seed_and_options_it_was_given():
    model = mlp((32, 32))
    assert make_sparsifier("dense", model, seed=3).config()["seed"] == 3
    config = make_sparsifier("random-fixed", mlp((32, 32)), density=0.3, seed=1, dense_first_last=True).config()
    assert config["dense_first_last"] is True
    pruning = make_sparsifier("pruning", mlp((32, 32)), density=0.3, prune_after=[0], distribution="erk")
    assert pruning.config()["distribution"] == "erk"
    assert pruning.layer_density["0.weight"] != pruning.layer_density["2.weight"]  # ERK, not uniform


def test_default_and_custom_filters_read_a_modules_own_parameters_only():
    from topo.sparsity import select_parameters
    from topo.sparsity.masks import default_filter

    class Block(nn.Module):
        nf = 4  # an ``nf`` attribute alone does not make a module Hugging Face's Conv1D

        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.ones(4, 4))
            self.inner = nn.Linear(4, 4)

    model = nn.Sequential(Block())
    assert list(select_parameters(model)) == ["0.inner.weight"]
    assert not default_filter("weight", model[0].weight, model[0])
    own = select_parameters(model, lambda name, param, module: isinstance(module, Block))
    assert list(own) == ["0.weight"]  # the Linear inside is the Linear's own parameter, not the Block's


def test_mask_multipliers_follow_the_weights_dtype():
    model = mlp((32,))
    sp = make_sparsifier("random-fixed", model, density=0.3, seed=0)
    assert all(m.dtype == torch.float32 for m in sp.masked.multipliers())
    model.to(torch.bfloat16)
    assert all(m.dtype == torch.bfloat16 for m in sp.masked.multipliers())
    sp.step()  # and the step re-zeroes inactive weights in that dtype
    assert all(torch.count_nonzero(w[~sp.masks[n]]) == 0 for n, w in sp.weights.items())


def test_the_true_gradient_is_a_float32_copy_and_n_m_initial_masks_follow_the_seed():
    model = mlp((32,)).to(torch.bfloat16)
    sp = make_sparsifier("rigl", model, density=0.5, seed=2, structure="2:4", delta_t=5, total_steps=10)
    grad = torch.ones(4, 4, dtype=torch.bfloat16)
    copied = sp.true_grad(grad)
    assert copied.dtype == torch.float32 and copied.data_ptr() != grad.data_ptr()
    masks = []
    for global_seed in (0, 1):
        torch.manual_seed(global_seed)
        masks.append(make_sparsifier("rigl", mlp((32,)), density=0.5, seed=2, structure="2:4", delta_t=5,
                                     total_steps=10).masks)
    assert all(torch.equal(masks[0][n], masks[1][n]) for n in masks[0])


def test_whole_counts_at_the_edges_of_floating_point():
    import sys

    from topo.sparsity.distributions import inactive_count, layer_densities

    tiny = 12 * sys.float_info.epsilon  # (1 − tiny)·1 is a few ulps below 1: ⌊·⌋ = 0, not rounded up to 1
    assert inactive_count(1, tiny) == 0 and inactive_count(10, 0.9) == 1
    with pytest.raises(ConfigError, match="not among the layers"):
        layer_densities({"a": (4, 4), "b": (4, 4)}, 0.5, dense=["c"])


def test_exploration_survives_a_resume():
    torch.manual_seed(0)
    model = mlp((32,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sp = make_sparsifier("set", model, opt, density=0.3, seed=0, zeta=0.3)
    train(model, opt, sp, 30)  # three SET adaptations: positions active at some time exceed those active now
    explored = sp.exploration()
    assert all(value > 0.31 for value in explored.values())
    fresh = make_sparsifier("set", mlp((32,)), density=0.3, seed=1, zeta=0.3)
    fresh.load_state_dict(sp.state_dict())
    assert fresh.exploration() == explored


def test_random_controls_record_their_distribution_and_draw_from_their_own_seed():
    fixed = make_sparsifier("random-fixed", mlp((32, 32)), density=0.3, seed=0, distribution="erk")
    assert fixed.config()["distribution"] == "erk"
    assert fixed.layer_density["0.weight"] != fixed.layer_density["2.weight"]
    masks = []
    for global_seed in (0, 1):
        torch.manual_seed(global_seed)
        model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3))
        masks.append(make_sparsifier("random-channelwise", model, density=0.3, seed=4).masks)
    assert all(torch.equal(masks[0][n], masks[1][n]) for n in masks[0])


def test_a_state_without_exploration_records_resumes_from_the_masks():
    model = mlp((16,))
    sp = make_sparsifier("random-fixed", model, density=0.3, seed=0)
    state = sp.state_dict()
    del state["ever_active"]  # as a checkpoint written before topo recorded exploration
    fresh = make_sparsifier("random-fixed", mlp((16,)), density=0.3, seed=1)
    fresh.load_state_dict(state)
    assert all(torch.equal(fresh.ever_active[n], sp.masks[n]) for n in sp.masks)


def test_one_optimizer_step_is_counted_once():
    model = mlp((16,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sp = make_sparsifier("random-fixed", model, optimizer, density=0.3, seed=0)
    model(torch.randn(4, 64)).sum().backward()
    optimizer.step()
    sp.step()
    sp.step()  # no optimizer step in between: not counted
    assert sp.step_count == 1


def test_n_m_structure_is_checked_along_a_conv1d_layers_inputs():
    transformers = pytest.importorskip("transformers")
    model = nn.Sequential(transformers.pytorch_utils.Conv1D(6, 8))  # stored (8 in, 6 out): 8 inputs fit 2:4
    sp = make_sparsifier("random-fixed", model, density=0.5, structure="2:4", seed=0)
    mask = sp.masks["0.weight"]  # stored (in, out): an output's inputs are a column, in groups of 4 rows
    assert mask[:4].sum(0).eq(2).all() and mask[4:].sum(0).eq(2).all()
    with pytest.raises(ConfigError, match="its 6 inputs do not divide into groups of 4"):
        make_sparsifier("random-fixed", nn.Sequential(transformers.pytorch_utils.Conv1D(8, 6)), density=0.5,
                        structure="2:4")


def test_a_mask_state_of_other_layers_is_one_error_naming_them():
    sp = make_sparsifier("random-fixed", mlp((16,)), density=0.3, seed=0)
    masks = sp.masked.state_dict()
    with pytest.raises(MaskError, match=r"missing \['0.weight'\], unexpected \[\]"):
        sp.masked.load_state_dict({n: m for n, m in masks.items() if n != "0.weight"})
    with pytest.raises(MaskError, match=r"missing \[\], unexpected \['9.weight'\]"):
        sp.masked.load_state_dict({**masks, "9.weight": masks["0.weight"]})


def test_mask_multipliers_are_rebuilt_only_when_a_mask_or_the_dtype_changes():
    model = mlp((16,))
    sp = make_sparsifier("random-fixed", model, density=0.3, seed=0)
    first = list(sp.masked.multipliers())
    assert all(a is b for a, b in zip(first, sp.masked.multipliers(), strict=True))  # cached
    sp.masks["0.weight"][0, 0] = ~sp.masks["0.weight"][0, 0]  # in place: the mask's version moves
    again = sp.masked.multipliers()
    assert again[0] is not first[0] and again[0][0, 0] == sp.masks["0.weight"][0, 0]
    assert all(a is b for a, b in zip(first[1:], again[1:], strict=True))
    model.double()
    assert all(m.dtype == torch.float64 for m in sp.masked.multipliers())


def test_er_reads_a_one_dimensional_weight_as_one_input_and_a_fused_weight_as_its_parts():
    from topo.sparsity.distributions import layer_densities

    # ER raw densities (n_in + n_out) / (n_in · n_out): 1.1 for (10,) read as 10 × 1, 0.2 for 10 × 10
    densities = layer_densities({"vector": (10,), "square": (10, 10)}, 0.2, "er")
    assert densities["vector"] / densities["square"] == pytest.approx(1.1 / 0.2)
    # a weight of two fused 10 × 10 parts has one part's raw density, 0.2, not that of 20 × 10 (0.15)
    fused = layer_densities({"fused": (20, 10), "square": (10, 10)}, 0.2, "er", parts={"fused": 2})
    assert fused["fused"] == pytest.approx(fused["square"])
