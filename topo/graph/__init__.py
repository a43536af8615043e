"""Masks as graphs (Section 5.2): builders, the four Figure-5 metrics, and tidy metric tables."""

from topo.graph.build import (
    GRU_GATES,
    LSTM_GATES,
    Graph,
    as_mask,
    bipartite_graph,
    channel_graph,
    layer_graphs,
    layered_graph,
    recurrent_gate_graphs,
    square_graph,
)
from topo.graph.metrics import (
    PathLength,
    algebraic_connectivity,
    degree_gini,
    global_clustering,
    mean_shortest_path,
    metrics_table,
    small_world,
    summarize,
)

__all__ = [
    "GRU_GATES",
    "LSTM_GATES",
    "Graph",
    "PathLength",
    "algebraic_connectivity",
    "as_mask",
    "bipartite_graph",
    "channel_graph",
    "degree_gini",
    "global_clustering",
    "layer_graphs",
    "layered_graph",
    "mean_shortest_path",
    "metrics_table",
    "recurrent_gate_graphs",
    "small_world",
    "square_graph",
    "summarize",
]
