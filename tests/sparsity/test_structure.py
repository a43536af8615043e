"""N:M structure: what is called N:M, the conv layout, and what the semi-structured export takes."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import topo.sparsity as ts
from topo.errors import ConfigError
from topo.sparsity.structure import (
    conv1d_as_linear,
    fits_nm,
    from_input_rows,
    input_rows,
    nm_pattern,
    nm_top,
    semi_structured_limits,
)

transformers = pytest.importorskip("transformers", reason="the test extra installs transformers")


def test_a_sparse_unstructured_mask_is_never_called_n_m():
    # a 1 %-dense 64 x 64 mask has at most one weight in nearly every group of four, but most groups are empty
    generator = torch.Generator().manual_seed(0)
    labelled = [nm_pattern(torch.rand(64, 64, generator=generator) < 0.01) for _ in range(20)]
    assert labelled == [None] * 20


def test_most_groups_must_hold_n():
    mask = torch.zeros(40, 16, dtype=torch.bool)
    mask[:, [0, 1, 4, 5, 8, 9]] = True  # 2:4 in three of four groups, the fourth empty: still 2:4
    assert nm_pattern(mask) == "2:4"
    mask[:, [8, 9]] = False  # only half the groups hold two: not most
    assert nm_pattern(mask) is None
    one_four = torch.zeros(40, 8, dtype=torch.bool)
    one_four[:, [1, 6]] = True
    assert nm_pattern(one_four) == "1:4"


def test_a_layer_too_small_to_tell_is_not_called_n_m():
    # 2:4 in 32 groups: a random mask of density 1/2 fits 2:4 with probability (11/16)^32 = 6e-6, above 1e-6
    assert nm_pattern(nm_top(torch.rand(8, 16), 2, 4)) is None
    assert nm_pattern(nm_top(torch.rand(10, 16), 2, 4)) == "2:4"  # 40 groups: 3e-7


def test_a_2_4_layer_with_a_few_kept_zeros_stays_2_4():
    torch.manual_seed(0)
    mask = nm_top(torch.rand(32, 64), 2, 4)
    mask[torch.rand(32, 64) < 0.1] = False  # RigL's regrown zeros read back as inactive
    assert nm_pattern(mask) == "2:4"


def test_convolutions_are_n_m_along_input_channels_as_apex_asp_prunes_them():
    torch.manual_seed(0)
    weight = torch.randn(8, 16, 3, 3)
    # apex ASP's layout: (out, in, kh, kw) -> (kh·kw·out, in), the two largest of every four input channels
    rows = weight.permute(2, 3, 0, 1).reshape(-1, 16)
    asp = nm_top(rows.abs(), 2, 4).reshape(3, 3, 8, 16).permute(2, 3, 0, 1)
    assert nm_pattern(asp) == "2:4"
    assert nm_pattern(weight.abs() > 0.7) is None
    # the same kept count along the flattened kernel (taps of one channel) is not an input-channel layout
    along_taps = nm_top(weight.reshape(8, -1).abs(), 2, 4).reshape(8, 16, 3, 3)
    assert nm_pattern(along_taps) is None


@settings(max_examples=20, deadline=None)
@given(shape=st.sampled_from([(6, 8), (4, 8, 3), (2, 8, 3, 5), (3, 4, 1, 1)]), samples=st.integers(1, 3))
def test_input_rows_round_trips(shape, samples):
    tensor = torch.arange(samples * torch.Size(shape).numel()).reshape(samples, *shape)
    rows = torch.stack([input_rows(t) for t in tensor])
    assert rows.shape[-1] == shape[1]
    assert torch.equal(from_input_rows(rows, shape), tensor)
    if len(shape) > 2:  # every row holds one output channel's inputs at one tap
        assert torch.equal(rows[0][0], tensor[0][(0, slice(None), *([0] * (len(shape) - 2)))])


def test_fits_nm():
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[:, [0, 5]] = True
    assert fits_nm(mask, 2, 4) and fits_nm(mask, 1, 4) and not fits_nm(mask, 0, 4)
    mask[0, 1] = True
    assert fits_nm(mask, 2, 4) and not fits_nm(mask, 1, 4)
    assert not fits_nm(torch.zeros(2, 6, dtype=torch.bool), 2, 4)  # inputs not in groups of four


def test_to_semi_structured_imports_from_topo_sparsity():
    from topo.sparsity import to_semi_structured

    assert to_semi_structured is ts.structure.to_semi_structured


def _gpt2_2of4():
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=64, n_head=4, vocab_size=100,
                                                                 n_positions=32))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    sparsifier = ts.make_sparsifier("pruning", model, optimizer, density=0.5, structure="2:4", prune_after=[0])
    sparsifier.end_epoch(0)
    return model


def test_semi_structured_export_takes_gpt2_conv1d_weights():
    with pytest.raises(ConfigError, match=r"transformer\.h\.0\.attn\.c_attn\.weight is on cpu"):
        ts.to_semi_structured(_gpt2_2of4())


def test_semi_structured_export_takes_1_4_layers():
    layer = nn.Linear(64, 64)
    with torch.no_grad():
        layer.weight.mul_(nm_top(layer.weight.abs(), 1, 4))
    with pytest.raises(ConfigError, match=r"0\.weight is on cpu"):
        ts.to_semi_structured(nn.Sequential(layer))
    with pytest.raises(ConfigError, match="no nn.Linear or Conv1D weight of the model fits 2:4"):
        ts.to_semi_structured(nn.Sequential(nn.Linear(8, 8)))


def test_conv1d_as_linear_computes_the_same_function():
    conv = _gpt2_2of4().transformer.h[0].mlp.c_fc
    linear = conv1d_as_linear(conv)
    x = torch.randn(3, 5, 64)
    assert linear.weight.shape == (256, 64) and torch.allclose(linear(x), conv(x), atol=1e-6)


def test_semi_structured_size_rule_is_pytorchs():
    # cuSPARSELt (PyTorch's default) takes float16 in multiples of 16 x 16; CUTLASS 32 x 64; float64 neither
    from torch.sparse import SparseSemiStructuredTensor

    assert semi_structured_limits(torch.float16) == (16, 16) and semi_structured_limits(torch.float64) is None
    forced = SparseSemiStructuredTensor._FORCE_CUTLASS
    try:
        SparseSemiStructuredTensor._FORCE_CUTLASS = True
        assert semi_structured_limits(torch.bfloat16) == (32, 64)
    finally:
        SparseSemiStructuredTensor._FORCE_CUTLASS = forced


def test_the_chance_of_an_unstructured_mask_fitting_n_m_by_hand():
    import math

    from topo.sparsity.structure import _log_chance

    # a group of 4 at density 1/2 holds at most 2 with probability (1 + 4 + 6) / 16
    assert _log_chance(4, 2, 0.5, 32) == pytest.approx(32 * math.log(11 / 16))
    assert _log_chance(8, 1, 0.25, 10) == pytest.approx(10 * math.log(0.75**8 + 8 * 0.25 * 0.75**7))
    assert _log_chance(4, 2, 1.0, 10) == -math.inf  # a full mask never fits 2:4


def test_groups_name_the_layer_and_ties_go_to_the_lower_input():
    from topo.sparsity.structure import grow_in_groups, random_nm_mask

    with pytest.raises(ConfigError, match="^fc: 6 inputs do not divide into groups of 4"):
        nm_top(torch.ones(2, 6), 2, 4, "fc")
    with pytest.raises(ConfigError, match="^layer: 6 inputs do not divide into groups of 4"):
        nm_top(torch.ones(2, 6), 2, 4)
    with pytest.raises(ConfigError, match="^fc: 6 inputs"):
        grow_in_groups(torch.ones(2, 6), torch.ones(2, 6, dtype=torch.bool), torch.ones(2, 1), 4, "fc")
    with pytest.raises(ConfigError, match="^fc: 6 inputs"):
        random_nm_mask((2, 6), 2, 4, torch.Generator(), torch.device("cpu"), "fc")
    assert nm_top(torch.ones(2, 8), 2, 4).tolist() == [[True, True, False, False] * 2] * 2
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.9, 0.3, 0.3, 0.3, 0.8]])
    assert nm_top(scores, 2, 4).tolist() == [[False, True, False, True, True, False, False, True]]
    allowed = torch.tensor([[True, True, True, True, False, True, True, True]])
    grown = grow_in_groups(torch.zeros(1, 8), allowed, torch.tensor([[1, 2]]), 4)
    assert grown.tolist() == [[True, False, False, False, False, True, True, False]]  # ties: the lower inputs
    first = random_nm_mask((4, 8), 2, 4, torch.Generator().manual_seed(1), torch.device("cpu"))
    again = random_nm_mask((4, 8), 2, 4, torch.Generator().manual_seed(1), torch.device("cpu"))
    assert torch.equal(first, again) and (first.reshape(4, 2, 4).sum(-1) == 2).all()


def test_nm_pattern_of_what_is_not_a_weight_matrix():
    assert nm_pattern(torch.ones(8, dtype=torch.bool)) is None
    assert nm_pattern(torch.zeros(0, 8, dtype=torch.bool)) is None
    assert nm_pattern(torch.zeros(40, 8, dtype=torch.bool)) is None  # nothing active: no structure to report
    assert nm_pattern(torch.ones(40, 6, dtype=torch.bool)) is None  # inputs in no groups of 4 or 8


def test_conv1d_as_linear_keeps_dtype_and_a_missing_bias():
    from topo.sparsity.structure import conv1d_as_linear

    conv = transformers.pytorch_utils.Conv1D(6, 4).to(torch.float64)
    conv.bias = None
    linear = conv1d_as_linear(conv)
    assert linear.bias is None and linear.weight.dtype == torch.float64 and linear.weight.shape == (6, 4)
    x = torch.randn(3, 4, dtype=torch.float64)
    assert torch.allclose(linear(x), x @ conv.weight)


def test_ties_go_to_the_lower_input_in_groups_wide_enough_for_an_unstable_sort_to_reorder_them():
    """torch's sort is stable by accident on short rows only: from 64 entries an unstable sort reorders ties."""
    from topo.sparsity.structure import grow_in_groups

    ties = torch.ones(4, 128)
    kept = nm_top(ties, 2, 64)
    assert kept.nonzero()[:, 1].reshape(4, -1).tolist() == [[0, 1, 64, 65]] * 4
    counts = torch.full((4, 2), 3)
    grown = grow_in_groups(ties, torch.ones(4, 128, dtype=torch.bool), counts, 64)
    assert grown.nonzero()[:, 1].reshape(4, -1).tolist() == [[0, 1, 2, 64, 65, 66]] * 4


def test_a_3_4_layer_is_not_exported_as_2_4():
    model = nn.Sequential(nn.Linear(16, 8, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([1.0, 1.0, 1.0, 0.0]).repeat(8, 4))
    with pytest.raises(ConfigError, match="no nn.Linear or Conv1D weight of the model fits 2:4"):
        ts.to_semi_structured(model)


def test_only_a_module_of_class_conv1d_is_read_in_out():
    """A module with an ``nf`` attribute that is not Hugging Face's Conv1D is not a layer the export takes."""

    class Odd(nn.Module):
        nf = 8

        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.tensor([1.0, 1.0, 0.0, 0.0]).repeat(8, 4).t().contiguous())

    with pytest.raises(ConfigError, match="no nn.Linear or Conv1D weight"):  # read (in, out) it would fit 2:4
        ts.to_semi_structured(nn.Sequential(Odd()))


def _groups_holding(counts: list[int], rows: int = 256) -> torch.Tensor:
    """A (rows, 4·len(counts)) mask whose i-th group of four inputs holds counts[i] active weights in every row."""
    mask = torch.zeros(rows, len(counts), 4, dtype=torch.bool)
    for group, count in enumerate(counts):
        mask[:, group, :count] = True
    return mask.reshape(rows, -1)


def test_n_m_needs_more_than_half_of_the_groups_full():
    # at most 2 of 4 everywhere, which chance would not give at these densities, but 2 in only 30 % or exactly
    # 50 % of the groups: not 2:4 (nor 4:8, whose groups of eight are full as rarely)
    assert nm_pattern(_groups_holding([2] * 3 + [1] * 7)) is None
    assert nm_pattern(_groups_holding([2, 2, 1, 1] * 3)) is None
    assert nm_pattern(_groups_holding([2, 2, 1] * 4)) == "2:4"  # two thirds full
