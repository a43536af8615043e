"""Turnover, exploration and the NNSTD distance on constructed cases with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from topo.families import Family
from topo.graph.compare import (
    degree_distributions,
    exploration_rate,
    jaccard_distance,
    mask_turnover,
    nnstd,
    nnstd_random,
    run_topology,
)
from topo.record import Recorder, RunReader
from topo.sparsity import SET, RandomFixed


def test_jaccard_turnover_by_hand():
    a = np.array([[1, 1, 0, 0]], bool)
    b = np.array([[0, 1, 1, 0]], bool)
    assert jaccard_distance(a, b) == pytest.approx(1 - 1 / 3)
    assert jaccard_distance(a, a) == 0.0 and jaccard_distance(np.zeros(3, bool), np.zeros(3, bool)) == 0.0
    assert mask_turnover({"w": a, "gone": a}, {"w": b}) == {"w": pytest.approx(2 / 3)}
    assert exploration_rate({"w": a | b}) == {"w": 0.75}


def test_nnstd_is_zero_for_a_neuron_permuted_copy():
    rng = np.random.default_rng(0)
    w1, w2, w3 = (rng.random(s) < 0.3 for s in ((20, 30), (15, 20), (4, 15)))
    p1, p2 = rng.permutation(20), rng.permutation(15)
    permuted = [w1[p1], w2[p2][:, p1], w3[:, p2]]
    assert nnstd([w1, w2, w3], permuted) == [0.0, 0.0, 0.0]
    other = [rng.random(s) < 0.3 for s in ((20, 30), (15, 20), (4, 15))]
    assert min(nnstd([w1, w2, w3], other)) > 0.3


def test_unchained_nnstd_takes_each_layers_inputs_as_they_are():
    """A transformer's q and k both read the residual stream: permuting q's outputs leaves k's inputs alone."""
    rng = np.random.default_rng(2)
    q, k = rng.random((16, 16)) < 0.3, rng.random((16, 16)) < 0.3
    permuted_q = q[rng.permutation(16)]
    assert nnstd([q, k], [permuted_q, k], chain=False) == [0.0, 0.0]
    assert nnstd([q, k], [permuted_q, k])[1] > 0.1  # chained, k's inputs are renamed by q's matching
    mean, std = nnstd_random([q, k], [permuted_q, k], samples=3, chain=False)
    assert len(mean) == 2 and min(mean) > 0.3 and min(std) >= 0


@pytest.mark.parametrize("density", [0.1, 0.3, 0.6])
def test_nnstd_of_independent_random_masks_follows_the_formula(density):
    rng = np.random.default_rng(1)
    a = [rng.random((30, 3000)) < density]
    b = [rng.random((30, 3000)) < density]
    assert nnstd(a, b)[0] == pytest.approx(1 - density / (2 - density), abs=0.02)


def test_run_topology_records_turnover_and_exploration(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 20, bias=False))
    fixed = RandomFixed(model, density=0.3)
    with Recorder(tmp_path / "fixed", fixed, checkpoint=False) as recorder:
        for epoch in range(3):
            recorder.snapshot(epoch)
    table = run_topology(RunReader(tmp_path / "fixed")).pivot_table(index="epoch", columns="metric", values="value")
    assert np.allclose(table["exploration"], 0.3) and (table["turnover"].dropna() == 0).all()

    model = nn.Sequential(nn.Linear(30, 20, bias=False))
    dynamic = SET(model, density=0.3, zeta=0.5)
    with Recorder(tmp_path / "set", dynamic, checkpoint=False) as recorder:
        recorder.snapshot(0)
        for epoch in range(1, 4):
            dynamic.adapt()
            dynamic.adapt()  # two adaptations between snapshots: exploration sees both
            recorder.snapshot(epoch)
    reader = RunReader(tmp_path / "set")
    table = run_topology(reader).pivot_table(index="epoch", columns="metric", values="value")
    assert table["exploration"].is_monotonic_increasing and table["exploration"].iloc[-1] > 0.5
    assert table["exploration"].iloc[-1] == pytest.approx(dynamic.exploration()["0.weight"])
    assert (table["turnover"].dropna() > 0).all()
    ever = reader.ever_active(3)["0.weight"]
    assert np.array_equal(ever, dynamic.ever_active["0.weight"].numpy())


class _Run:
    """The part of a run reader :func:`degree_distributions` reads: epochs, their masks, the model family."""

    def __init__(self, masks: dict, family: Family | None = None) -> None:
        self.epochs, self._masks, self.family = [0], masks, family

    def masks(self, epoch: int) -> dict:
        return self._masks


def test_degree_distributions_count_fan_in_and_fan_out_by_hand():
    mask = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 0, 0]], bool)  # 4 outputs, 3 inputs
    table = degree_distributions(_Run({"fc.weight": mask, "fc.bias": np.ones(4, bool)}), "r").set_index(
        ["side", "degree"])
    assert table.loc["in", "count"].to_dict() == {0: 1, 1: 1, 2: 1, 3: 1}  # fan-in of each output
    assert table.loc["out", "count"].to_dict() == {1: 1, 2: 1, 3: 1}  # fan-out of each input: 3, 2, 1
    assert set(table["n"].groupby("side").first().items()) == {("in", 3), ("out", 4)}
    assert (table["density"] == 6 / 12).all() and (table["run"] == "r").all() and (table["layer"] == "fc.weight").all()
    conv = np.zeros((2, 3, 2, 2), bool)
    conv[0, :, 0, 0] = True  # output channel 0 reads one tap of each of the 3 input channels
    kernels = degree_distributions(_Run({"conv.weight": conv})).set_index(["side", "degree"])
    assert kernels.loc["in", "count"].to_dict() == {0: 1, 3: 1} and kernels.loc["in", "n"].iloc[0] == 12


def test_degree_distributions_read_a_conv1d_weight_as_out_by_in():
    stored = np.array([[1, 1, 1, 1], [0, 0, 0, 1]], bool)  # Conv1D (in 2, out 4)
    family = Family(transposed=frozenset({"h.0.mlp.c_fc.weight"}))
    table = degree_distributions(_Run({"h.0.mlp.c_fc.weight": stored}, family)).set_index(["side", "degree"])
    assert table.loc["in", "count"].to_dict() == {1: 3, 2: 1}  # each of the 4 outputs reads 1 or 2 inputs
    assert table.loc["out", "count"].to_dict() == {1: 1, 4: 1}


def test_masks_are_read_from_torch_tensors_too_and_bad_ones_are_named():
    from topo.errors import MaskError

    a, b = torch.tensor([[True, True, False]]), torch.tensor([[False, True, True]])
    assert jaccard_distance(a, b) == pytest.approx(2 / 3)
    assert exploration_rate({"w": torch.tensor([True])}) == {"w": 1.0}  # one position, ever active
    with pytest.raises(MaskError, match="mask 'a' is not boolean"):
        jaccard_distance(np.array([[2, 0]]), np.array([[1, 0]]))
    with pytest.raises(MaskError, match="mask 'b' is not boolean"):
        jaccard_distance(np.array([[1, 0]]), np.array([[3, 0]]))
    with pytest.raises(MaskError, match="mask 'fc.weight' is not boolean"):
        exploration_rate({"fc.weight": np.array([[0.5]])})
    with pytest.raises(MaskError, match=r"mask 'b\[1\]' is not boolean"):
        nnstd([np.ones((2, 3), bool), np.ones((2, 2), bool)], [np.ones((2, 3), bool), np.full((2, 2), 2)])
    with pytest.raises(MaskError, match=r"mask 'a\[0\]' is not boolean"):
        nnstd_random([np.full((2, 2), 2)], [np.ones((2, 2), bool)])


def test_edit_distance_of_neurons_by_hand():
    from topo.graph.compare import _edit_distances

    a = np.array([[1, 0, 0], [0, 0, 0], [1, 1, 0]], bool)
    b = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 1]], bool)
    # |A Δ B| / |A ∪ B|: {0} vs {} → 1; {} vs {} → 0; {0, 1} vs {1, 2} → 2/3
    distances = _edit_distances(a, b)
    assert distances[0, 0] == 1.0 and distances[1, 0] == 0.0 and distances[0, 1] == 0.0
    assert distances[2, 2] == pytest.approx(2 / 3) and distances[1, 1] == 1.0


def test_run_topology_rows_for_every_layer_and_epoch():
    class Run:
        epochs = [0, 1, 2]
        _masks = {0: {"a": np.array([1, 1, 0, 0], bool), "b": np.array([1, 0], bool)},
                  1: {"a": np.array([0, 1, 1, 0], bool), "b": np.array([1, 0], bool)},
                  2: {"a": np.array([0, 1, 1, 0], bool), "b": np.array([0, 1], bool)}}

        def masks(self, epoch):
            return self._masks[epoch]

        def ever_active(self, epoch):
            seen = {}
            for e in range(epoch + 1):
                for layer, mask in self._masks[e].items():
                    seen[layer] = seen.get(layer, np.zeros_like(mask)) | mask
            return seen

    table = run_topology(Run(), "r")
    assert list(table.columns) == ["run", "epoch", "layer", "graph", "metric", "value"]
    turnover = table[table.metric == "turnover"].set_index(["epoch", "layer"])["value"].to_dict()
    assert turnover == {(1, "a"): pytest.approx(2 / 3), (1, "b"): 0.0, (2, "a"): 0.0, (2, "b"): 1.0}
    explored = table[table.metric == "exploration"].set_index(["epoch", "layer"])["value"].to_dict()
    assert explored == {(0, "a"): 0.5, (0, "b"): 0.5, (1, "a"): 0.75, (1, "b"): 0.5, (2, "a"): 0.75, (2, "b"): 1.0}
    assert (table["graph"] == table["layer"]).all() and (table["run"] == "r").all()


def test_nnstd_reads_convolutions_as_channel_masks():
    conv = np.zeros((3, 2, 3, 3), bool)
    conv[0, 0, 1, 1] = conv[1, 1, 0, 2] = conv[2, :, 2, 2] = True  # channel mask [[1,0],[0,1],[1,1]]
    taps_moved = np.zeros_like(conv)
    taps_moved[0, 0, 0, 0] = taps_moved[1, 1, 2, 2] = taps_moved[2, :, 1, 0] = True  # same channels, other taps
    assert nnstd([conv], [taps_moved]) == [0.0]
    mean, std = nnstd_random([conv], [taps_moved], samples=4, seed=1)
    assert len(mean) == 1 and 0 < mean[0] <= 1 and std[0] >= 0


def test_nnstd_random_is_nnstd_of_seeded_shuffles_with_its_sample_spread():
    rng_masks = np.random.default_rng(5)
    a = [rng_masks.random((6, 8)) < 0.4, rng_masks.random((3, 6)) < 0.5]
    b = [rng_masks.random((6, 8)) < 0.2, rng_masks.random((3, 6)) < 0.3]
    rng = np.random.default_rng(0)

    def shuffled(block):
        flat = np.zeros(block.size, dtype=bool)
        flat[rng.choice(block.size, int(block.sum()), replace=False)] = True
        return flat.reshape(block.shape)

    draws = np.array([nnstd([shuffled(x) for x in a], [shuffled(y) for y in b]) for _ in range(2)])
    mean, std = nnstd_random(a, b, samples=2)
    assert mean == pytest.approx(draws.mean(0).tolist()) and std == pytest.approx(draws.std(0, ddof=1).tolist())
    assert nnstd_random(a, b, samples=2) == nnstd_random(a, b, samples=2, seed=0)
    assert nnstd_random(a, b, samples=2, seed=1) != nnstd_random(a, b, samples=2, seed=0)
    assert nnstd_random(a, b) == nnstd_random(a, b, samples=20)  # the documented default
    # without chain the second layer's inputs are not renamed by the first layer's matching (the draws are the same)
    unchained, chained = nnstd_random(a, b, samples=2, chain=False), nnstd_random(a, b, samples=2)
    assert unchained[0][0] == chained[0][0] and unchained[0][1] != chained[0][1]
    from topo.errors import MaskError

    with pytest.raises(MaskError, match="at least 2 samples"):
        nnstd_random(a, b, samples=1)


def test_degree_distributions_per_epoch_of_a_run_without_a_family():
    class Run:
        epochs = [0, 1]

        def masks(self, epoch):
            return {"b": np.ones(3, bool), "w": np.eye(3, dtype=bool) if epoch == 0 else np.ones((3, 3), bool)}

    table = degree_distributions(Run(), "r")
    assert list(table.columns) == ["run", "epoch", "layer", "side", "degree", "count", "n", "density"]
    assert table.groupby("epoch")["degree"].max().to_dict() == {0: 1, 1: 3} and set(table.layer) == {"w"}
    conv = np.zeros((2, 3, 2, 2), bool)
    conv[:, 0, 0, 0] = True
    out = degree_distributions(_Run({"c": conv})).set_index(["side", "degree"])
    assert out.loc["out", "n"].iloc[0] == 2 * 4 and out.loc["out", "count"].to_dict() == {0: 2, 2: 1}


def test_nnstd_random_refuses_networks_of_different_depths():
    from topo.errors import MaskError

    with pytest.raises(MaskError, match="networks of 2 and 1 layers"):
        nnstd_random([np.ones((2, 2), bool)] * 2, [np.ones((2, 2), bool)], samples=2)


def test_run_topology_of_a_run_recorded_without_ever_active_positions():
    from topo.errors import CheckpointError

    class OldRun:
        epochs = [0, 1]

        def masks(self, epoch):
            return {"w": np.array([True, epoch == 1])}

        def ever_active(self, epoch):
            raise CheckpointError("recorded before ever-active positions were kept")

    table = run_topology(OldRun(), "old")
    assert table.metric.tolist() == ["turnover"] and table.value.tolist() == [0.5]


def test_nnstd_names_bad_masks_reads_conv1d_channels_and_takes_empty_layers():
    from topo.errors import MaskError

    with pytest.raises(MaskError, match=r"mask 'a\[0\]' is not boolean"):
        nnstd([np.full((2, 2), 2)], [np.ones((2, 2), bool)])
    assert nnstd([np.zeros((0, 3), bool)], [np.zeros((0, 3), bool)]) == [0.0]
    assert nnstd([np.zeros((3, 0), bool), np.ones((2, 3), bool)], [np.zeros((3, 0), bool), np.ones((2, 3), bool)]) \
        == [0.0, 0.0]  # a first layer without inputs
    taps = np.zeros((3, 2, 4), bool)
    taps[0, 0, 1] = taps[1, 1, 3] = taps[2, :, 0] = True
    moved = np.zeros_like(taps)
    moved[0, 0, 2] = moved[1, 1, 0] = moved[2, :, 3] = True  # same channels, other taps
    assert nnstd([taps], [moved]) == [0.0]


def test_a_run_directorys_table_numbers_its_graph_and_topology_rows_once(tmp_path):
    from topo.graph import metrics_table

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 20, bias=False))
    with Recorder(tmp_path / "run", RandomFixed(model, density=0.3), checkpoint=False) as recorder:
        for epoch in range(2):
            recorder.snapshot(epoch)
    table = metrics_table(RunReader(tmp_path / "run"), progress=False)
    assert {"turnover", "exploration", "algebraic_connectivity"} <= set(table["metric"])
    assert table.index.equals(pd.RangeIndex(len(table)))
