"""The four graph metrics of Figure 5 (Section 5.2), small-world coefficients, and tidy metric tables.

All metrics take a :class:`~topo.graph.build.Graph` (or a square mask, read as :func:`square_graph`) and a
``backend``: ``"auto"`` (torch for CUDA tensors, else CPU), ``"cpu"`` or ``"torch"``. Conventions for graphs
where a metric is undefined are given in each docstring; such a value is NaN with an
:class:`~topo.errors.EmptyGraphWarning`, never an exception or a hang.
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import igraph
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from topo.errors import EmptyGraphWarning
from topo.graph.backends import CPUBackend, TorchBackend, pick_backend
from topo.graph.build import Graph, graph_label, layer_graphs, square_graph


def _as_graph(graph: Graph | Any) -> Graph:
    return graph if isinstance(graph, Graph) else square_graph(graph)


def _kernels(graph: Graph, backend: str) -> tuple[CPUBackend | TorchBackend, Any]:
    """The backend for ``graph`` and its adjacency in that backend's array type."""
    kernels = pick_backend(graph.adjacency, backend)
    adjacency = graph.torch().adjacency if isinstance(kernels, TorchBackend) else graph.numpy().adjacency
    return kernels, adjacency


def _undefined(graph: Graph, metric: str, why: str) -> float:
    warnings.warn(f"{metric} of graph {graph.name or '<unnamed>'} is undefined ({why}): NaN", EmptyGraphWarning,
                  stacklevel=3)
    return math.nan


def algebraic_connectivity(graph: Graph | Any, backend: str = "auto") -> float:
    """Second-smallest eigenvalue λ2 of the Laplacian L = D − A (Fiedler 1973; Chung 1997).

    Notes
    -----
    A disconnected graph (an edgeless one included) has λ2 = 0 exactly. A graph with fewer than two nodes has
    no λ2: NaN with a warning. Equals ``networkx.algebraic_connectivity(G, method="lanczos")``.
    """
    graph = _as_graph(graph)
    if graph.n_nodes < 2:
        return _undefined(graph, "algebraic connectivity", f"{graph.n_nodes} node(s)")
    kernels, adjacency = _kernels(graph, backend)
    if kernels.n_components(adjacency) > 1:
        return 0.0
    return kernels.lambda2(adjacency)


def degree_gini(graph: Graph | Any) -> float:
    """Gini coefficient of the node degrees (Gini 1921): G = Σᵢ Σⱼ |dᵢ − dⱼ| / (2 n Σᵢ dᵢ).

    0 when every node has the same degree, approaching 1 when one node holds every connection. Computed from
    the sorted degrees d₍₁₎ ≤ … ≤ d₍ₙ₎ as 2 Σᵢ i·d₍ᵢ₎ / (n Σ d) − (n + 1)/n. NaN with a warning for a graph
    with no nodes or no edges.
    """
    graph = _as_graph(graph)
    kernels, adjacency = _kernels(graph, "auto")
    degrees = np.sort(kernels.degrees(adjacency)).astype(np.float64)
    n, total = len(degrees), degrees.sum()
    if n == 0 or total == 0:
        return _undefined(graph, "degree Gini", "no edges")
    ranks = np.arange(1, n + 1, dtype=np.float64)
    return float(2.0 * (ranks * degrees).sum() / (n * total) - (n + 1) / n)


def global_clustering(graph: Graph | Any, backend: str = "auto") -> float:
    """Global clustering coefficient (transitivity): 3 × triangles / connected triples (Wasserman & Faust 1994).

    A graph without a connected triple has clustering 0, as in ``networkx.transitivity``; a graph without nodes
    gives NaN with a warning.
    """
    graph = _as_graph(graph)
    if graph.n_nodes == 0:
        return _undefined(graph, "global clustering", "no nodes")
    kernels, adjacency = _kernels(graph, backend)
    value = kernels.transitivity(adjacency)
    return 0.0 if math.isnan(value) else value


@dataclass(frozen=True)
class PathLength:
    """Mean shortest-path length over reachable pairs, and the fraction of ordered pairs that are reachable."""

    mean: float
    reachable_fraction: float


def mean_shortest_path(graph: Graph | Any, backend: str = "auto") -> PathLength:
    """Average shortest-path length (hops) over all ordered pairs u ≠ v with v reachable from u.

    For a connected graph this is ``networkx.average_shortest_path_length``. For a disconnected one it is the
    average of that quantity over components, weighted by each component's number of ordered pairs
    s(s − 1); ``reachable_fraction`` = Σ s(s − 1) / (n(n − 1)) says how much of the graph it covers. NaN with a
    warning when no pair is reachable (no edges).
    """
    graph = _as_graph(graph)
    n = graph.n_nodes
    if n < 2:
        return PathLength(_undefined(graph, "mean shortest path", f"{n} node(s)"), math.nan)
    kernels, adjacency = _kernels(graph, backend)
    counts = kernels.path_counts(adjacency)
    fraction = counts.reachable_pairs / (n * (n - 1))
    if counts.reachable_pairs == 0:
        return PathLength(_undefined(graph, "mean shortest path", "no reachable pair"), fraction)
    return PathLength(counts.distance_sum / counts.reachable_pairs, fraction)


def small_world(graph: Graph | Any, n_random: int = 10, seed: int = 0) -> dict[str, float]:
    """Small-world coefficients σ and ω against degree-preserving random graphs (beyond the paper).

    σ = (C / C_r) / (L / L_r) (Humphries & Gurney 2008) and ω = L_r / L − C / C_ℓ (Telesford et al. 2011),
    where C is :func:`global_clustering`, L is :func:`mean_shortest_path`, C_r and L_r their means over
    ``n_random`` random graphs with the same degree sequence (igraph's edge-swap rewiring, 10 swaps per edge), and
    C_ℓ = 3(K − 2) / (4(K − 1)) the clustering of a ring lattice of the same mean degree K (rounded to an even
    number ≥ 4; Watts & Strogatz 1998). σ > 1 and ω near 0 indicate a small world.
    """
    graph = _as_graph(graph).numpy()
    clustering = global_clustering(graph, "cpu")
    path = mean_shortest_path(graph, "cpu").mean
    base = graph.to_igraph()
    rng = random.Random(seed)
    igraph.set_random_number_generator(rng)
    try:
        random_c, random_l = [], []
        for _ in range(n_random):
            copy = base.copy()
            # Positional: the keyword is "mode" in igraph 0.11 and "allowed_edge_types" in 1.0.
            copy.rewire(10 * max(1, copy.ecount()), "simple")
            random_c.append(copy.transitivity_undirected(mode="zero"))
            random_l.append(copy.average_path_length(directed=False, unconn=True))
    finally:
        igraph.set_random_number_generator(random)
    c_r, l_r = float(np.mean(random_c)), float(np.mean(random_l))
    mean_degree = 2 * graph.n_edges / max(1, graph.n_nodes)
    k = max(4, 2 * round(mean_degree / 2))
    c_lattice = 3 * (k - 2) / (4 * (k - 1))
    sigma = (clustering / c_r) / (path / l_r) if c_r > 0 and path > 0 else math.nan
    omega = l_r / path - clustering / c_lattice if path > 0 else math.nan
    return {"sigma": sigma, "omega": omega}


def summarize(graph: Graph | Any, backend: str = "auto", *, small_world_graphs: int = 0, seed: int = 0) -> dict:
    """Every metric of a graph as a dict: nodes, edges, density, the four Figure-5 metrics, reachability.

    With ``small_world_graphs > 0`` also σ and ω (:func:`small_world`) against that many random graphs.
    """
    graph = _as_graph(graph)
    n = graph.n_nodes
    path = mean_shortest_path(graph, backend)
    result = {
        "n_nodes": n,
        "n_edges": graph.n_edges,
        "density": graph.n_edges / (n * (n - 1) / 2) if n > 1 else math.nan,
        "algebraic_connectivity": algebraic_connectivity(graph, backend),
        "degree_gini": degree_gini(graph),
        "global_clustering": global_clustering(graph, backend),
        "mean_shortest_path": path.mean,
        "reachable_fraction": path.reachable_fraction,
    }
    if small_world_graphs:
        result.update(small_world(graph, small_world_graphs, seed))
    return result


Snapshot = Mapping[str, Any]


def _snapshots(source: Any) -> list[tuple[int | None, Snapshot]]:
    if hasattr(source, "iter_masks"):
        return list(source.iter_masks())
    if isinstance(source, Mapping):
        return [(None, source)]
    return list(source)


def metrics_table(
    source: Snapshot | Iterable[tuple[int | None, Snapshot]] | Any,
    *,
    run: str = "",
    backend: str = "auto",
    small_world_graphs: int = 0,
    seed: int = 0,
    progress: bool = True,
) -> pd.DataFrame:
    """Tidy table of :func:`summarize` over every graph of every snapshot.

    Parameters
    ----------
    source:
        One snapshot (layer name → mask), an iterable of ``(epoch, snapshot)`` pairs, or any object with an
        ``iter_masks()`` method yielding them (e.g. :class:`topo.record.RunReader`).
    run:
        Value of the ``run`` column.

    Returns
    -------
    DataFrame with columns run, epoch, layer, graph, metric, value; one row per metric.
    """
    rows = []
    snapshots = _snapshots(source)
    for epoch, masks in tqdm(snapshots, desc="graph metrics", unit="snapshot", disable=not progress):
        for layer, mask in masks.items():
            for graph_name, graph in layer_graphs({layer: mask}).items():
                metrics = summarize(graph, backend, small_world_graphs=small_world_graphs, seed=seed)
                gate = graph_label(graph_name, layer)
                rows.extend((run, epoch, layer, gate, metric, float(value)) for metric, value in metrics.items())
    return pd.DataFrame(rows, columns=["run", "epoch", "layer", "graph", "metric", "value"])
