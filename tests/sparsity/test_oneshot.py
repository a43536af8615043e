"""One-shot pruning: each rule against cases worked by hand from the authors' code, and the block-by-block driver."""

from __future__ import annotations

import math

import pytest
import torch

from topo.errors import ConfigError
from topo.sparsity.oneshot import (
    Hessian,
    InputNorms,
    magnitude_mask,
    prune_oneshot,
    sparsegpt_prune,
    wanda_mask,
)
from topo.sparsity.structure import nm_pattern

transformers = pytest.importorskip("transformers", reason="the test extra installs transformers")


# -- statistics ---------------------------------------------------------------------------------------------------
def test_input_norms_average_the_per_sequence_sums_of_squares():
    generator = torch.Generator().manual_seed(0)
    sequences = [torch.randn(1, 5, 3, generator=generator) for _ in range(3)]
    norms = InputNorms(3, torch.device("cpu"))
    for x in sequences:
        norms.add_batch(x)
    expected = sum((x[0] ** 2).sum(0) for x in sequences) / 3  # Σ over tokens, mean over sequences
    assert torch.allclose(norms.scaler_row, expected, rtol=1e-6) and norms.nsamples == 3
    batched = InputNorms(3, torch.device("cpu"))
    batched.add_batch(torch.cat(sequences))  # one call with a batch of three counts three sequences
    assert torch.allclose(batched.scaler_row, expected, rtol=1e-6) and batched.nsamples == 3


def test_hessian_is_two_over_n_times_the_sum_of_x_xt():
    generator = torch.Generator().manual_seed(1)
    sequences = [torch.randn(1, 4, 3, generator=generator) for _ in range(5)]
    hessian = Hessian(3, torch.device("cpu"))
    for x in sequences:
        hessian.add_batch(x)
    expected = 2 / 5 * sum(x[0].t() @ x[0] for x in sequences)
    assert torch.allclose(hessian.H, expected, rtol=1e-5, atol=1e-6)


# -- magnitude ----------------------------------------------------------------------------------------------------
def test_magnitude_prunes_through_the_sorted_value_at_floor_numel_times_s_ties_included():
    weight = torch.tensor([[0.5, -0.1, 0.9, 0.3], [-0.7, 0.2, 0.3, -1.0]])
    # s = 0.5: the ascending |W| is 0.1 0.2 0.3 0.3 0.5 0.7 0.9 1.0, index ⌊8·0.5⌋ = 4 is 0.5: five pruned
    kept = magnitude_mask(weight, 0.5)
    assert kept.tolist() == [[False, False, True, False], [True, False, False, True]]
    # s = 0.25: index 2 is 0.3, which two weights share: both go, four pruned where ⌊8·0.25⌋ = 2
    assert int((~magnitude_mask(weight, 0.25)).sum()) == 4


def test_magnitude_n_m_keeps_the_n_largest_of_every_group():
    weight = torch.tensor([[0.5, -0.1, 0.9, 0.3, -0.7, 0.2, 0.3, -1.0]])
    assert magnitude_mask(weight, structure=(2, 4)).tolist() == [[True, False, True, False,
                                                                 True, False, False, True]]
    ties = torch.tensor([[0.3, 0.3, 0.3, 0.3]])  # equal scores: the lower inputs are pruned first
    assert magnitude_mask(ties, structure=(1, 4)).tolist() == [[False, False, False, True]]


# -- Wanda --------------------------------------------------------------------------------------------------------
def test_wanda_scores_weights_by_their_inputs_norms_and_prunes_each_row_alike():
    weight = torch.tensor([[1.0, 1.0, 1.0, 1.0], [4.0, 3.0, 2.0, 1.0]])
    norms = InputNorms(4, torch.device("cpu"))
    norms.scaler_row = torch.tensor([1.0, 16.0, 4.0, 9.0])  # sqrt: 1, 4, 2, 3
    # row 0 scores 1 4 2 3, row 1 scores 4 12 4 3: ⌊4·0.5⌋ = 2 pruned in each row
    kept = wanda_mask(weight, norms, 0.5)
    assert kept.tolist() == [[False, True, False, True], [False, True, True, False]]  # row 1: 4 = 4, the lower goes
    assert (kept.sum(1) == 2).all()
    assert wanda_mask(weight, norms, 0.3).sum(1).tolist() == [3, 3]  # ⌊4·0.3⌋ = 1 per row
    assert wanda_mask(weight, norms, structure=(1, 4)).tolist() == [[False, True, False, False],
                                                                   [False, True, False, False]]


# -- SparseGPT ----------------------------------------------------------------------------------------------------
def _hessian(matrix: list[list[float]]) -> Hessian:
    hessian = Hessian(len(matrix), torch.device("cpu"))
    hessian.H = torch.tensor(matrix)
    return hessian


def test_sparsegpt_with_a_diagonal_hessian_prunes_by_w_squared_times_h_and_moves_nothing():
    # diag H: Hinv = diag(1/sqrt(h + damp)), so the score W²/diag(Hinv)² is w²·(h + damp), and no pruning error
    # reaches another column. damp = 0.01·mean(h) = 0.053125; scores 4.053, 1.213, 4.013, 9.478: the sorted value
    # at ⌊4·0.25⌋ = 1 is 4.013, and the two scores up to it are pruned (one more than ⌊4·0.25⌋)
    weight = torch.tensor([[1.0, 2.0, 0.5, 3.0]])
    h = [4.0, 0.25, 16.0, 1.0]
    diagonal = [[h[i] if i == j else 0.0 for j in range(4)] for i in range(4)]
    updated, kept = sparsegpt_prune(weight, _hessian(diagonal), sparsity=0.25)
    assert kept.tolist() == [[True, False, False, True]]
    assert torch.equal(updated[kept], weight[kept]) and (updated[~kept] == 0).all()


def test_sparsegpt_scores_squared_weights_so_the_sign_does_not_count():
    # h = 1 everywhere (damp 0.01): scores w²·1.01 = 9.09, 1.01, 4.04, 0.2525; the sorted value at ⌊4·0.5⌋ = 2 is
    # 4.04: the three scores up to it go, -3 stays (a cube would rank it first to go)
    weight = torch.tensor([[-3.0, 1.0, 2.0, -0.5]])
    updated, kept = sparsegpt_prune(weight, _hessian(torch.eye(4).tolist()), sparsity=0.5)
    assert kept.tolist() == [[True, False, False, False]] and updated[0, 0] == -3.0


def test_sparsegpt_n_m_scores_are_w_squared_over_the_squared_inverse_diagonal_by_hand():
    # diag H = (16, 1, 2.5, 4) + damp 0.05875: Hinv_jj = 1/√h_j', scores w²·h_j' = 16.06, 9.53, 12.38, 10.39 keep
    # inputs 0 and 2; w²·√h' (a score over Hinv_jj, not its square) would keep 1 and 2, w²·h'^1.5 inputs 0 and 3
    weight = torch.tensor([[1.0, 3.0, 2.2, 1.6]])
    h = [16.0, 1.0, 2.5, 4.0]
    diagonal = [[h[i] if i == j else 0.0 for j in range(4)] for i in range(4)]
    _, kept = sparsegpt_prune(weight, _hessian(diagonal), structure=(2, 4))
    assert kept.tolist() == [[True, False, True, False]]


def test_sparsegpt_compensates_a_pruned_weight_through_the_hessian_by_hand():
    # H = [[a, b], [b, c]] damped; pruning w0 moves w1 by w0·b/c' (the optimal brain surgeon update), and the score
    # of column j is w_j²/U_jj² with U the upper Cholesky factor of H⁻¹: w0²·det/c', w1²·c'
    a, b, c = 2.0, 0.6, 1.0
    damp = 0.01 * (a + c) / 2
    a_, c_ = a + damp, c + damp
    det = a_ * c_ - b * b
    weight = torch.tensor([[0.3, 1.5], [2.0, -0.2]])
    updated, kept = sparsegpt_prune(weight, _hessian([[a, b], [b, c]]), sparsity=0.2)
    # ⌊4·0.2⌋ = 0: one weight, the smallest score, is pruned (the threshold is the smallest score itself)
    scores = [[w0**2 * det / c_, w1**2 * c_] for w0, w1 in weight.tolist()]
    smallest = min((s, r, j) for r, row in enumerate(scores) for j, s in enumerate(row))
    assert (~kept).nonzero().tolist() == [[smallest[1], smallest[2]]]
    assert smallest[1:] == (1, 1)  # w = -0.2 in column 1: nothing after it in the block to compensate
    assert torch.allclose(updated[0], weight[0]) and updated[1, 1] == 0
    prune_first = torch.tensor([[0.1, 1.5]])
    updated, kept = sparsegpt_prune(prune_first, _hessian([[a, b], [b, c]]), sparsity=0.25)
    assert kept.tolist() == [[False, True]]
    assert updated[0, 1].item() == pytest.approx(1.5 + 0.1 * b / c_, rel=1e-5)


def test_sparsegpt_zeroes_dead_inputs_and_keeps_n_m_groups():
    weight = torch.tensor([[1.0, 2.0, 3.0, 4.0, 1.0, 1.0, 1.0, 1.0]])
    h = [1.0, 1.0, 0.0, 1.0, 1.0, 2.0, 3.0, 4.0]  # input 2 is dead: its weight goes, whatever its size
    updated, kept = sparsegpt_prune(weight, _hessian([[h[i] if i == j else 0.0 for j in range(8)]
                                                      for i in range(8)]), structure=(2, 4))
    assert updated[0, 2] == 0 and not kept[0, 2]
    assert kept.tolist() == [[False, True, False, True, False, False, True, True]]
    assert nm_pattern(kept.repeat(40, 1)) == "2:4"
    # unstructured: the dead input's weight (5, the largest) scores 0 and goes first, never 1·h
    updated, kept = sparsegpt_prune(torch.tensor([[0.1, 0.2, 5.0, 0.3]]), _hessian(torch.diag(torch.tensor(
        [1.0, 1.0, 0.0, 1.0])).tolist()), sparsity=0.25)
    assert kept.tolist() == [[False, True, False, True]] and updated[0, 2] == 0


def test_a_dead_inputs_unit_diagonal_enters_the_damping():
    # diag H = (0 → 1, 1, 4): damp = 0.01·mean(1, 1, 4) = 0.02, scores w²·(h + damp): 1.98401²·1.02 = 4.0150 for
    # input 1 and 4.02 for input 2, which stays; with the dead input's diagonal at 2 the damping (0.0233) would
    # rank input 1 first
    weight = torch.tensor([[0.0, 1.98401, 1.0]])
    _, kept = sparsegpt_prune(weight, _hessian(torch.diag(torch.tensor([0.0, 1.0, 4.0])).tolist()), sparsity=1 / 3)
    assert kept.tolist() == [[False, False, True]]


def test_sparsegpt_refuses_a_hessian_that_is_not_positive_definite():
    with pytest.raises(ConfigError, match="not positive definite"):
        sparsegpt_prune(torch.ones(1, 2), _hessian([[1.0, 2.0], [2.0, 1.0]]), sparsity=0.5, percdamp=0.0)


# -- the driver ---------------------------------------------------------------------------------------------------
def tiny_llama(layers: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(config).eval()


def calibration(count: int = 4, length: int = 16) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    return [torch.randint(0, 40, (1, length), generator=generator) for _ in range(count)]


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_every_block_linear_is_pruned_and_nothing_else_changes(method):
    model = tiny_llama()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    masks = prune_oneshot(model, method, calibration(), density=0.5, progress=False)
    linears = {f"{n}.weight" for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and n.startswith("model.layers.")}
    assert set(masks) == linears and len(linears) == 14
    for name, parameter in model.named_parameters():
        if name in masks:
            assert (parameter[~masks[name]] == 0).all() and masks[name].dtype == torch.bool
            assert abs(masks[name].float().mean().item() - 0.5) < 0.02, name
            if method != "sparsegpt":
                assert torch.equal(parameter[masks[name]], before[name][masks[name]])
        else:
            assert torch.equal(parameter, before[name]), name  # embeddings, norms, the output head
    if method == "wanda":  # every output keeps the same fan-in
        assert all((m.sum(1) == m.shape[1] // 2).all() for m in masks.values())


def test_wanda_measures_each_block_on_the_outputs_of_the_pruned_blocks_before_it():
    model = tiny_llama()
    samples = calibration()
    masks = prune_oneshot(model, "wanda", samples, density=0.5, progress=False)
    # the q projection of block 1 reads the normalised outputs of the pruned block 0: recorded from the pruned model
    recorded = InputNorms(32, torch.device("cpu"))
    handle = model.model.layers[1].self_attn.q_proj.register_forward_hook(
        lambda module, args, out: recorded.add_batch(args[0]))
    with torch.no_grad():
        for ids in samples:
            model(input_ids=ids)
    handle.remove()
    dense = tiny_llama()  # the same initial weights: the q projection of block 1 before pruning
    expected = wanda_mask(dense.model.layers[1].self_attn.q_proj.weight, recorded, 0.5)
    assert torch.equal(masks["model.layers.1.self_attn.q_proj.weight"], expected)


def test_gpt2_conv1d_weights_are_pruned_as_out_by_in_and_returned_as_stored():
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=40, n_positions=32, n_embd=32,
                                                                 n_layer=2, n_head=4)).eval()
    masks = prune_oneshot(model, "wanda", calibration(3, 12), structure="2:4", progress=False)
    c_fc = masks["transformer.h.0.mlp.c_fc.weight"]
    assert c_fc.shape == (32, 128)  # stored (in, out)
    assert all(nm_pattern(mask.t()) == "2:4" for mask in masks.values())
    assert "lm_head.weight" not in masks and "transformer.wte.weight" not in masks


def test_true_sequential_measures_later_projections_after_the_earlier_are_pruned():
    together = prune_oneshot(tiny_llama(), "sparsegpt", calibration(), density=0.5, progress=False)
    sequential = prune_oneshot(tiny_llama(), "sparsegpt", calibration(), density=0.5, progress=False,
                               true_sequential=True)
    first = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(together[first], sequential[first])  # the first group sees the same inputs
    later = "model.layers.0.mlp.down_proj.weight"
    assert not torch.equal(together[later], sequential[later])


def test_magnitude_needs_no_calibration_and_bad_arguments_are_one_clear_error():
    model = tiny_llama(1)
    masks = prune_oneshot(model, "magnitude", density=0.25, progress=False)
    assert all(math.isclose(m.float().mean().item(), 0.25, abs_tol=0.02) for m in masks.values())
    for kwargs, message in (({"method": "obs", "density": 0.5}, "unknown one-shot method"),
                            ({"method": "wanda", "density": 1.0}, r"must be in \(0, 1\)"),
                            ({"method": "wanda", "density": 0.5, "structure": "2:4"}, "not both"),
                            ({"method": "wanda"}, "not both"),
                            ({"method": "wanda", "density": 0.5}, "needs calibration")):
        with pytest.raises(ConfigError, match=message):
            prune_oneshot(tiny_llama(1), progress=False, **kwargs)
    with pytest.raises(ConfigError, match="no list of decoder blocks"):
        prune_oneshot(torch.nn.Sequential(torch.nn.Linear(4, 4)), "magnitude", density=0.5)


def test_a_block_called_with_hidden_states_by_keyword_is_read():
    from topo.sparsity.oneshot import _hidden

    hidden = torch.ones(2, 3)
    assert _hidden((), {"hidden_states": hidden}) is hidden and _hidden((hidden,), {}) is hidden


def test_a_two_dimensional_forward_input_is_one_sequence():
    tokens = torch.randn(5, 3, generator=torch.Generator().manual_seed(3))
    for kind in (InputNorms, Hessian):
        flat, batched = kind(3, torch.device("cpu")), kind(3, torch.device("cpu"))
        flat.add_batch(tokens)  # (tokens, columns): a batch of one
        batched.add_batch(tokens.unsqueeze(0))
        assert flat.nsamples == batched.nsamples == 1
        assert torch.equal(getattr(flat, "scaler_row", None) if kind is InputNorms else flat.H,
                           getattr(batched, "scaler_row", None) if kind is InputNorms else batched.H)


def test_ties_prune_the_lower_input_first_in_rows_wide_enough_for_an_unstable_sort_to_reorder_them():
    norms = InputNorms(128, torch.device("cpu"))
    norms.add_batch(torch.ones(1, 1, 128))
    kept = wanda_mask(torch.ones(2, 128), norms, 0.25)
    assert (~kept).nonzero()[:, 1].reshape(2, -1).tolist() == [list(range(32))] * 2
    grouped = wanda_mask(torch.ones(2, 128), norms, structure=(48, 64))
    assert (~grouped).nonzero()[:, 1].reshape(2, -1).tolist() == [[*range(16), *range(64, 80)]] * 2


def test_sparsegpt_chooses_the_unstructured_mask_per_block_of_128_columns_by_default():
    generator = torch.Generator().manual_seed(4)
    weight = torch.randn(6, 300, generator=generator)
    hessian = Hessian(300, torch.device("cpu"))
    hessian.add_batch(torch.randn(1, 600, 300, generator=generator))
    default = sparsegpt_prune(weight, hessian, 0.5)
    assert all(torch.equal(a, b) for a, b in zip(default, sparsegpt_prune(weight, hessian, 0.5, blocksize=128),
                                                   strict=True))
    small = sparsegpt_prune(weight, hessian, 0.5, blocksize=64)[1]  # 5 blocks: each keeps its own half, + 1
    for start in range(0, 300, 64):
        block = small[:, start:start + 64]
        assert block.numel() - int(block.sum()) == int(block.numel() * 0.5) + 1


def test_the_decoder_blocks_are_the_largest_list_of_blocks_whatever_comes_first():
    from topo.sparsity.oneshot import decoder_blocks

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.empty = torch.nn.ModuleList()
            self.mixed = torch.nn.ModuleList([torch.nn.Linear(32, 32), torch.nn.ReLU()])  # not one kind of block
            self.small = torch.nn.ModuleList([torch.nn.Sequential(torch.nn.Linear(2, 2)) for _ in range(2)])
            self.large = torch.nn.ModuleList([torch.nn.Sequential(torch.nn.Linear(8, 8)) for _ in range(2)])
            self.twin = torch.nn.ModuleList([torch.nn.Sequential(torch.nn.Linear(8, 8)) for _ in range(2)])

    name, blocks = decoder_blocks(Model())
    assert name == "large" and len(blocks) == 2  # the largest list of one kind of block; ties: the first


def test_true_sequential_groups_are_the_attention_inputs_its_output_the_mlp_inputs_and_its_output():
    from topo.sparsity.oneshot import _groups

    names = [f"self_attn.{p}_proj" for p in "qkvo"] + [f"mlp.{p}_proj" for p in ("gate", "up", "down")]
    linears = dict.fromkeys(names)
    assert _groups(linears, False) == [names]
    assert _groups(linears, True) == [names[:3], names[3:4], names[4:6], names[6:]]


def test_a_blocks_linears_are_its_linear_and_conv1d_layers_and_its_tuple_output_is_its_hidden_state():
    from topo.sparsity.oneshot import _linears, _run

    class Odd(torch.nn.Module):
        nf = 4  # not Hugging Face's Conv1D, whatever its attributes

        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(4, 4))

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj, self.odd = torch.nn.Linear(4, 4), Odd()

        def forward(self, x: torch.Tensor) -> tuple:
            return self.proj(x), None  # older Hugging Face blocks return (hidden, cache, …)

    block = Block()
    assert list(_linears(block)) == ["proj"]
    x = torch.ones(1, 2, 4)
    (out,) = _run(block, [((x,), {})])
    assert torch.equal(out, block.proj(x))


def test_sparsegpt_n_m_keeps_each_groups_largest_magnitudes_whatever_the_block_size_and_returns_the_dtype():
    generator = torch.Generator().manual_seed(5)
    weight = torch.randn(4, 16, generator=generator)
    weight[:, 0] = -10.0  # a large negative weight is kept: the score is w², not w
    diagonal = Hessian(16, torch.device("cpu"))
    diagonal.H = torch.eye(16)
    _, kept = sparsegpt_prune(weight, diagonal, structure=(2, 4))
    expected = torch.zeros_like(kept)
    top = weight.abs().reshape(4, 4, 4).topk(2, dim=-1).indices
    expected.reshape(4, 4, 4).scatter_(-1, top, True)
    assert torch.equal(kept, expected)
    full = Hessian(16, torch.device("cpu"))
    full.add_batch(torch.randn(1, 64, 16, generator=generator))
    lazy = sparsegpt_prune(weight, full, structure=(2, 4), blocksize=4)  # later blocks updated once per block
    eager = sparsegpt_prune(weight, full, structure=(2, 4), blocksize=16)
    assert torch.equal(lazy[1], eager[1]) and torch.allclose(lazy[0], eager[0], atol=1e-5)
    assert sparsegpt_prune(weight.to(torch.bfloat16), full, structure=(2, 4))[0].dtype == torch.bfloat16


def test_a_blocks_linears_come_in_module_order_whatever_order_they_were_defined_in():
    from topo.sparsity.oneshot import _linears

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mlp = torch.nn.ModuleDict({"down_proj": torch.nn.Linear(4, 4), "up_proj": torch.nn.Linear(4, 4)})
            self.self_attn = torch.nn.ModuleDict({p: torch.nn.Linear(4, 4) for p in ("o_proj", "q_proj")})

    assert list(_linears(Block())) == ["self_attn.q_proj", "self_attn.o_proj", "mlp.up_proj", "mlp.down_proj"]


def test_one_dimensional_calibration_sequences_are_read_as_batches_of_one():
    model = tiny_llama(1)
    flat = [ids[0] for ids in calibration(2)]
    masks = prune_oneshot(model, "wanda", flat, density=0.5, progress=False)
    assert torch.equal(masks["model.layers.0.mlp.up_proj.weight"],
                       prune_oneshot(tiny_llama(1), "wanda", calibration(2), density=0.5,
                                     progress=False)["model.layers.0.mlp.up_proj.weight"])


@pytest.mark.parametrize("method", ["magnitude", "sparsegpt"])
def test_n_m_pruning_through_the_driver_keeps_n_of_every_m_inputs(method):
    masks = prune_oneshot(tiny_llama(1), method, calibration(), structure="2:4", progress=False)
    assert masks and all(nm_pattern(mask) == "2:4" for mask in masks.values())


def test_a_singular_hessian_is_one_error_naming_the_layer():
    with pytest.raises(ConfigError, match=r"Hessian of model\.layers\.0\.self_attn\.q_proj\.weight is not positive"):
        prune_oneshot(tiny_llama(1), "sparsegpt", calibration(1, 2), density=0.5, percdamp=0, progress=False)


def test_the_next_blocks_input_replaces_the_hidden_states_where_they_were_passed():
    from topo.sparsity.oneshot import _with_hidden

    old, new, mask = torch.zeros(2), torch.ones(2), torch.full((2,), 7.0)
    assert _with_hidden((old, mask, 3), {"use_cache": False}, new) == ((new, mask, 3), {"use_cache": False})
    assert _with_hidden((), {"hidden_states": old, "attention_mask": mask}, new) == (
        (), {"hidden_states": new, "attention_mask": mask})


def test_true_sequential_puts_an_unrecognised_linear_with_the_mlp_inputs():
    from topo.sparsity.oneshot import _groups

    names = ["self_attn.q_proj", "self_attn.o_proj", "block_sparse_moe.gate", "mlp.gate_proj", "mlp.down_proj"]
    assert _groups(dict.fromkeys(names), True) == [names[:1], names[1:2], names[2:4], names[4:]]
