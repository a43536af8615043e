"""Masks → graphs: symmetrisation, LSTM gate split, layered and channel graphs, tables, bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from topo.errors import MaskError
from topo.graph import (
    Graph,
    bipartite_graph,
    channel_graph,
    layer_graphs,
    layered_graph,
    metrics_table,
    recurrent_gate_graphs,
    square_graph,
    summarize,
)


def test_square_graph_is_symmetric_without_self_loops():
    mask = np.array([[1, 1, 0], [0, 1, 0], [1, 0, 0]], dtype=bool)
    g = square_graph(mask, "w")
    assert g.adjacency.tolist() == [[False, True, True], [True, False, False], [True, False, False]]
    assert g.n_edges == 2
    nxg = g.to_networkx()
    assert sorted(nxg.edges) == [(0, 1), (0, 2)]
    assert g.to_igraph().ecount() == 2


def test_lstm_weight_hh_splits_into_gates_in_pytorch_order():
    hidden = 5
    lstm = nn.LSTM(3, hidden)
    mask = torch.zeros(4 * hidden, hidden, dtype=torch.bool)
    for gate in range(4):  # gate k gets edges 0-(k+1)
        mask[gate * hidden + 0, gate + 1] = True
    assert lstm.weight_hh_l0.shape == mask.shape
    graphs = recurrent_gate_graphs(mask, "lstm.weight_hh_l0")
    assert list(graphs) == [f"lstm.weight_hh_l0[{g}]" for g in "ifgo"]
    for k, graph in enumerate(graphs.values()):
        assert graph.n_nodes == hidden and graph.n_edges == 1
        assert bool(graph.adjacency[0, k + 1])


def test_gru_weight_hh_has_three_gates():
    assert list(recurrent_gate_graphs(np.ones((12, 4), bool), "gru")) == ["gru[r]", "gru[z]", "gru[n]"]


def test_layered_graph_of_an_mlp():
    m1 = np.array([[1, 0], [0, 1], [1, 1]], dtype=bool)  # 2 inputs → 3 hidden
    m2 = np.array([[1, 0, 1]], dtype=bool)  # 3 hidden → 1 output
    g = layered_graph([m1, m2])
    assert g.n_nodes == 6 and g.n_edges == 6
    assert g.adjacency[2, 0] and g.adjacency[5, 2] and g.adjacency[5, 4] and not g.adjacency[5, 3]
    assert (g.adjacency == g.adjacency.T).all()
    with pytest.raises(MaskError, match="takes 2 inputs"):
        layered_graph([m1, np.ones((1, 2), bool)])


def test_channel_graph_edges_where_any_kernel_tap_is_active():
    mask = torch.zeros(2, 3, 3, 3, dtype=torch.bool)
    mask[0, 1, 2, 2] = True
    mask[1, 2] = True
    g = channel_graph(mask, "conv")
    assert g.n_nodes == 5 and g.n_edges == 2
    assert bool(g.adjacency[3, 1]) and bool(g.adjacency[4, 2])


def test_layer_graphs_dispatch_by_kind():
    model = nn.ModuleDict({"lstm": nn.LSTM(4, 6), "conv": nn.Conv2d(2, 3, 3), "fc": nn.Linear(6, 2)})
    masks = {n: p.detach() != 0 for n, p in model.named_parameters()}
    graphs = layer_graphs(masks)
    gates = [f"lstm.weight_{w}_l0[{g}]" for w in ("hh", "ih") for g in "ifgo"]
    assert set(graphs) == {*gates, "conv.weight", "fc.weight"}
    assert graphs["fc.weight"].n_nodes == 8 and graphs["fc.weight"].kind == "bipartite"
    assert graphs["lstm.weight_hh_l0[f]"].kind == "recurrent" and graphs["conv.weight"].kind == "channel"
    assert graphs["lstm.weight_ih_l0[g]"].kind == "recurrent-input" and graphs["lstm.weight_ih_l0[g]"].parts == (4, 6)


@pytest.mark.parametrize("name,shape,expected", [
    ("rnn.weight_hh_l0", (5, 5), ["rnn.weight_hh_l0"]),
    ("lstm.layers.0.weight_hh", (8, 2), [f"lstm.layers.0.weight_hh[{g}]" for g in "ifgo"]),
    ("encoder.lstm.weight_hh_l1_reverse", (12, 3), [f"encoder.lstm.weight_hh_l1_reverse[{g}]" for g in "ifgo"]),
    ("gru.weight_hh_l0", (9, 3), [f"gru.weight_hh_l0[{g}]" for g in "rzn"]),
    ("cell.weight_hh", (9, 3), [f"cell.weight_hh[{g}]" for g in "rzn"]),
    ("lstm.weight_hh_l0", (12, 5), ["lstm.weight_hh_l0"]),  # projections (4h × p): no square blocks, bipartite
    ("fc.weight_hh_not", (4, 4), ["fc.weight_hh_not"]),
])
def test_recurrent_weights_recognised_in_the_forms_real_code_uses(name, shape, expected):
    graphs = layer_graphs({name: np.ones(shape, bool)})
    assert sorted(graphs) == sorted(expected)
    kinds = {g.kind for g in graphs.values()}
    assert kinds == ({"recurrent"} if len(shape) == 2 and shape[0] % shape[1] == 0 and "not" not in name
                     else {"bipartite"})


def test_input_weights_split_per_gate_beside_their_hidden_weight():
    masks = {"enc.lstm.weight_ih_l0_reverse": np.ones((16, 7), bool),
             "enc.lstm.weight_hh_l0_reverse": np.ones((16, 4), bool)}
    graphs = layer_graphs(masks)
    assert sorted(n for n in graphs if "weight_ih" in n) == [f"enc.lstm.weight_ih_l0_reverse[{g}]" for g in "fgio"]
    assert graphs["enc.lstm.weight_ih_l0_reverse[o]"].parts == (7, 4)
    alone = layer_graphs({"enc.lstm.weight_ih_l0_reverse": np.ones((16, 7), bool)})
    assert list(alone) == ["enc.lstm.weight_ih_l0_reverse"]  # no hidden weight: one bipartite layer


@pytest.mark.parametrize(
    "mask,match",
    [(np.ones((3, 4), bool), "square"), (np.array([[0.5, 1], [0, 1]]), "not boolean"),
     (np.array([[np.nan, 1], [0, 1]]), "NaN"), (torch.tensor([[2.0, 0], [0, 1]]), "not boolean")],
)
def test_bad_masks_name_the_layer(mask, match):
    with pytest.raises(MaskError, match=match) as info:
        square_graph(mask, "rnn.weight_hh_l0")
    assert "rnn.weight_hh_l0" in str(info.value)


def test_numeric_zero_one_masks_are_accepted():
    assert square_graph(np.eye(3) + np.eye(3, k=1)).n_edges == 2
    assert bipartite_graph(torch.ones(2, 3)).n_edges == 6


def test_metrics_table_is_tidy_and_matches_summarize():
    rng = np.random.default_rng(0)
    snapshots = [(epoch, {"rnn.weight_hh_l0": rng.random((24, 8)) < 0.3, "fc.weight": rng.random((3, 8)) < 0.5})
                 for epoch in range(3)]
    table = metrics_table(snapshots, run="r1", progress=False)
    assert list(table.columns) == ["run", "epoch", "layer", "graph", "metric", "value"]
    # (3h, h) hidden-to-hidden: GRU gates; every graph has its own label
    assert set(table["graph"]) == {"rnn.weight_hh_l0[r]", "rnn.weight_hh_l0[z]", "rnn.weight_hh_l0[n]", "fc.weight"}
    row = table[(table.epoch == 1) & (table.graph == "rnn.weight_hh_l0[r]") & (table.metric == "degree_gini")]
    expected = summarize(recurrent_gate_graphs(snapshots[1][1]["rnn.weight_hh_l0"], "x")["x[r]"])
    assert row["value"].item() == pytest.approx(expected["degree_gini"])
    # gates: 10 metrics and their mask density; fc: 13 and its mask density
    assert isinstance(table, pd.DataFrame) and len(table) == 3 * (3 * 11 + 14)
    density = table[(table.epoch == 1) & (table.graph == "fc.weight") & (table.metric == "mask_density")]
    assert density.value.item() == pytest.approx(snapshots[1][1]["fc.weight"].mean())


def test_graph_names_are_unique_and_name_the_layer_and_gate():
    graphs = layer_graphs({"lstm.weight_hh_l0": np.ones((8, 2), bool), "fc.weight": np.ones((3, 4), bool),
                           "out.weight": np.ones((2, 3), bool)})
    assert sorted(graphs) == ["fc.weight", "lstm.weight_hh_l0[f]", "lstm.weight_hh_l0[g]", "lstm.weight_hh_l0[i]",
                              "lstm.weight_hh_l0[o]", "out.weight"]


@pytest.mark.parametrize("adjacency,match", [
    (np.array([[0, 1], [0, 0]], bool), "not symmetric"),
    (np.array([[1, 0], [0, 0]], bool), "self-loops"),
    (np.array([[0, 1], [1, 0]], np.int8), "boolean"),
    (np.zeros((2, 3), bool), "square"),
])
def test_graph_refuses_what_is_not_an_undirected_simple_graph(adjacency, match):
    with pytest.raises(MaskError, match=match):
        Graph(adjacency, "g")
    with pytest.raises(MaskError, match=match):
        Graph(torch.from_numpy(adjacency), "g")


def test_density_is_defined_per_graph_kind():
    full_layer = bipartite_graph(np.ones((64, 64), bool), "fc.weight")
    assert full_layer.density == 1.0 and summarize(full_layer)["density"] == 1.0
    assert layered_graph([np.ones((4, 3), bool), np.ones((2, 4), bool)]).density == 1.0
    assert square_graph(np.ones((5, 5), bool)).density == 1.0
    assert square_graph(np.eye(5, dtype=bool)).density == 0.0


def test_gate_graphs_are_named_and_kinded_by_their_gate():
    from topo.graph import recurrent_gate_graphs

    rnn = recurrent_gate_graphs(np.eye(4, dtype=bool)[::-1], "rnn.weight_hh_l0")
    assert list(rnn) == ["rnn.weight_hh_l0"] and rnn["rnn.weight_hh_l0"].name == "rnn.weight_hh_l0"
    gru = recurrent_gate_graphs(np.ones((12, 4), bool), "gru.weight_hh_l0")
    assert list(gru) == [f"gru.weight_hh_l0[{g}]" for g in "rzn"]
    assert all(graph.name == label and graph.kind == "recurrent" for label, graph in gru.items())
    with pytest.raises(MaskError, match="mask 'bad' is not boolean"):
        recurrent_gate_graphs(np.full((4, 4), 2), "bad")


def test_layer_graphs_passes_gates_heads_and_conv_view_on():
    from topo.families import Family

    gates = layer_graphs({"rnn.weight_ih_l0": np.ones((8, 3), bool)}, {"rnn.weight_ih_l0": ["i", "f"]})
    assert sorted(gates) == ["rnn.weight_ih_l0[f]", "rnn.weight_ih_l0[i]"]
    family = Family(model_type="llama", heads=2, kv_heads=2)
    heads = layer_graphs({"layers.0.self_attn.q_proj.weight": np.ones((8, 8), bool)}, family=family, heads=True)
    assert sorted(heads) == ["layers.0.self_attn.q_proj.weight[q.h0]", "layers.0.self_attn.q_proj.weight[q.h1]"]
    conv = np.zeros((4, 3, 3, 3), bool)
    conv[:, :, 1, 1] = True  # every channel pair linked through the kernel's centre only
    assert layer_graphs({"c.weight": conv})["c.weight"].n_nodes != 3 + 4  # "auto" reads its kernels
    assert layer_graphs({"c.weight": conv}, conv="channel")["c.weight"].n_nodes == 3 + 4


def test_igraph_copy_keeps_isolated_nodes_and_is_undirected():
    graph = Graph(np.array([[0, 1, 0], [1, 0, 0], [0, 0, 0]], bool), "g")
    copy = graph.to_igraph()
    assert copy.vcount() == 3 and copy.ecount() == 1 and not copy.is_directed()


def test_a_graph_moved_to_torch_and_back_keeps_what_it_is():
    from topo.graph import bipartite_graph

    graph = bipartite_graph(np.random.default_rng(0).random((3, 5)) < 0.5, name="fc.weight")
    for copy in (graph.torch(), graph.torch("cpu"), graph.torch().numpy()):
        assert (copy.name, copy.parts, copy.kind, copy.mask_density) == ("fc.weight", (5, 3), "bipartite",
                                                                        graph.mask_density)
        assert np.array_equal(np.asarray(copy.numpy().adjacency), np.asarray(graph.numpy().adjacency))
    assert graph.torch().is_torch and not graph.torch().numpy().is_torch


def test_gate_graphs_without_a_name_are_named_by_their_gate():
    from topo.graph import recurrent_gate_graphs

    assert list(recurrent_gate_graphs(torch.rand(12, 4) < 0.5)) == ["[r]", "[z]", "[n]"]
