"""Turnover, exploration and the NNSTD distance on constructed cases with known answers."""

from __future__ import annotations

import numpy as np
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
