"""The four graph metrics of Figure 5 (Section 5.2), small-world coefficients, and tidy metric tables.

All metrics take a :class:`~topo.graph.build.Graph` (or a square mask, read as :func:`square_graph`) and a
``backend``: ``"auto"`` (torch for CUDA tensors, else CPU), ``"cpu"`` or ``"torch"``. Conventions for graphs
where a metric is undefined are given in each docstring; such a value is NaN with an
:class:`~topo.errors.EmptyGraphWarning`, never an exception or a hang.
"""

from __future__ import annotations

import functools
import math
import random
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import igraph
import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from topo.errors import ConfigError, EmptyGraphWarning
from topo.families import Family
from topo.graph import bitsets
from topo.graph.backends import CPUBackend, PathCounts, TorchBackend, pick_backend
from topo.graph.batched import batch_size, count_batch
from topo.graph.build import Graph, GraphSource, graph_sources, recurrent_gates, square_graph
from topo.graph.compare import run_topology
from topo.graph.null import NULLS, iter_null_masks, null_masks, z_scores
from topo.graph.products import sampled_bfs_by_products, sampled_bfs_by_products_torch
from topo.graph.singular import batch_spectra, graph_spectrum


def _as_graph(graph: Graph | Any) -> Graph:
    return graph if isinstance(graph, Graph) else square_graph(graph)


def _kernels(graph: Graph, backend: str) -> tuple[CPUBackend | TorchBackend, Any]:
    """The backend for ``graph`` and its adjacency in that backend's array type."""
    kernels = pick_backend(graph.adjacency, backend)
    adjacency = graph.torch().adjacency if isinstance(kernels, TorchBackend) else graph.numpy().adjacency
    return kernels, adjacency


def _undefined(graph: Graph, metric: str, why: str) -> float:
    warnings.warn(f"{metric} of graph {graph.name or '<unnamed>'} is undefined ({why}): NaN", EmptyGraphWarning,
                  stacklevel=4)
    return math.nan


# -- the conventions, shared by the per-graph functions and the batched tables --------------------------------
def _connectivity(graph: Graph, n_components: int, solve: Callable[[], float]) -> float:
    if graph.n_nodes < 2:
        return _undefined(graph, "algebraic connectivity", f"{graph.n_nodes} node(s)")
    return 0.0 if n_components > 1 else float(solve())


def _gini(graph: Graph, degrees: np.ndarray) -> float:
    degrees = np.sort(np.asarray(degrees)).astype(np.float64)
    n, total = len(degrees), degrees.sum()
    if n == 0 or total == 0:
        return _undefined(graph, "degree Gini", "no edges")
    ranks = np.arange(1, n + 1, dtype=np.float64)
    return float(2.0 * (ranks * degrees).sum() / (n * total) - (n + 1) / n)


def _clustering(graph: Graph, transitivity: Callable[[], float]) -> float:
    if graph.n_nodes == 0:
        return _undefined(graph, "global clustering", "no nodes")
    value = transitivity()
    return 0.0 if math.isnan(value) else float(value)


@dataclass(frozen=True)
class PathLength:
    """Mean shortest-path length over reachable pairs, and the fraction of ordered pairs that are reachable.

    ``standard_error`` is 0 for the exact value and the estimate's standard error when it comes from a sample of
    source nodes (:func:`sampled_shortest_path`).
    """

    mean: float
    reachable_fraction: float
    standard_error: float = 0.0


def _path(graph: Graph, counts: Callable[[], PathCounts]) -> PathLength:
    n = graph.n_nodes
    if n < 2:
        return PathLength(_undefined(graph, "mean shortest path", f"{n} node(s)"), math.nan)
    totals = counts()
    fraction = totals.reachable_pairs / (n * (n - 1))
    if totals.reachable_pairs == 0:
        return PathLength(_undefined(graph, "mean shortest path", "no reachable pair"), fraction)
    return PathLength(totals.distance_sum / totals.reachable_pairs, fraction)


def algebraic_connectivity(graph: Graph | Any, backend: str = "auto") -> float:
    """Second-smallest eigenvalue λ2 of the Laplacian L = D − A (Fiedler 1973; Chung 1997).

    Notes
    -----
    A disconnected graph (an edgeless one included) has λ2 = 0 exactly. A graph with fewer than two nodes has
    no λ2: NaN with a warning. Equals ``networkx.algebraic_connectivity(G, method="lanczos")``.
    """
    graph = _as_graph(graph)
    kernels, adjacency = _kernels(graph, backend)
    components = kernels.n_components(adjacency) if graph.n_nodes >= 2 else 0
    split = graph.parts[0] if graph.is_bipartite else None
    return _connectivity(graph, components, lambda: kernels.lambda2(adjacency, split))


def degree_gini(graph: Graph | Any) -> float:
    """Gini coefficient of the node degrees (Gini 1921): G = Σᵢ Σⱼ |dᵢ − dⱼ| / (2 n Σᵢ dᵢ).

    0 when every node has the same degree, approaching 1 when one node holds every connection. Computed from
    the sorted degrees d₍₁₎ ≤ … ≤ d₍ₙ₎ as 2 Σᵢ i·d₍ᵢ₎ / (n Σ d) − (n + 1)/n. NaN with a warning for a graph
    with no nodes or no edges.
    """
    graph = _as_graph(graph)
    kernels, adjacency = _kernels(graph, "auto")
    return _gini(graph, kernels.degrees(adjacency))


def global_clustering(graph: Graph | Any, backend: str = "auto") -> float:
    """Global clustering coefficient (transitivity): 3 × triangles / connected triples (Wasserman & Faust 1994).

    A graph without a connected triple has clustering 0, as in ``networkx.transitivity``; a graph without nodes
    gives NaN with a warning.
    """
    graph = _as_graph(graph)
    kernels, adjacency = _kernels(graph, backend)
    return _clustering(graph, lambda: kernels.transitivity(adjacency))


def mean_shortest_path(graph: Graph | Any, backend: str = "auto") -> PathLength:
    """Average shortest-path length (hops) over all ordered pairs u ≠ v with v reachable from u.

    For a connected graph this is ``networkx.average_shortest_path_length``. For a disconnected one it is the
    average of that quantity over components, weighted by each component's number of ordered pairs
    s(s − 1); ``reachable_fraction`` = Σ s(s − 1) / (n(n − 1)) says how much of the graph it covers. NaN with a
    warning when no pair is reachable (no edges).
    """
    graph = _as_graph(graph)
    kernels, adjacency = _kernels(graph, backend)
    return _path(graph, lambda: kernels.path_counts(adjacency))


def _require_bipartite(graph: Graph, metric: str) -> None:
    if not graph.is_bipartite:
        raise ConfigError(f"{metric} of graph {graph.name or '<unnamed>'}: defined for bipartite graphs (two parts), "
                          f"this one is {graph.kind} with parts {graph.parts}")


def _robins_alexander(counts: Callable[[], tuple[float, float]]) -> float:
    cycles, paths = counts()
    return 4.0 * cycles / paths if paths > 0 else 0.0


def bipartite_clustering(graph: Graph, backend: str = "auto") -> float:
    """Robins–Alexander clustering of a bipartite graph: 4 × (number of 4-cycles) / (number of 3-paths).

    The bipartite analogue of transitivity (Robins & Alexander 2004), which is 0 for every bipartite graph: the
    fraction of paths of three edges closed into a 4-cycle. 0 for a graph without a 3-path, as in
    ``networkx.bipartite.robins_alexander_clustering``, which it equals. Raises :class:`ConfigError` for a graph
    that is not bipartite.
    """
    _require_bipartite(graph, "bipartite clustering")
    kernels, adjacency = _kernels(graph, backend)
    return _robins_alexander(lambda: kernels.bipartite_cycles(adjacency, graph.parts[0]))


def fan_in_gini(graph: Graph) -> float:
    """Gini coefficient of the fan-in (active inputs) of a bipartite layer's output neurons; see :func:`degree_gini`."""
    _require_bipartite(graph, "fan-in Gini")
    kernels, adjacency = _kernels(graph, "auto")
    return _gini(graph, kernels.degrees(adjacency)[graph.parts[0]:])


def fan_out_gini(graph: Graph) -> float:
    """Gini coefficient of the fan-out (active outputs) of a bipartite layer's input neurons."""
    _require_bipartite(graph, "fan-out Gini")
    kernels, adjacency = _kernels(graph, "auto")
    return _gini(graph, kernels.degrees(adjacency)[: graph.parts[0]])


#: The sampled search multiplies matrices (:func:`topo.graph.products.sampled_bfs_by_products`) from this many edges
#: (counted both ways) per entry of the block it multiplies: a bipartite layer of density 0.15 or more. The two
#: searches took the same time at about 0.2 (density 0.1) on the development machine, and the products 3.9× less
#: at density 0.5 (a 4096² layer, 1,024 sources).
PRODUCTS_FROM = 0.3


def sampled_shortest_path(graph: Graph | Any, sources: int, seed: int = 0) -> PathLength:
    """Mean shortest path estimated from breadth-first searches out of ``sources`` random nodes (seeded).

    With dᵢ the total distance and rᵢ the number of nodes reachable from sampled source i, the estimate is the
    ratio Σdᵢ / Σrᵢ, its standard error the ratio estimator's, √(Σ(dᵢ − m·rᵢ)² / (s(s − 1))) / r̄ with the finite
    population correction √(1 − s/n); it is exact (error 0) when every node is a source. Cost: s searches
    instead of n, for graphs too large for the exact all-pairs search, all of them at once: by the bit-parallel
    search of :func:`topo.graph.bitsets.sampled_bfs`, whose cost grows with the edges, or, for graphs with at least
    :data:`PRODUCTS_FROM` edges per entry of the block multiplied (the biadjacency of a bipartite graph), by the
    matrix products of :func:`topo.graph.products.sampled_bfs_by_products`, whose cost does not (the same
    distances either way). A graph on a CUDA device is searched there, by products
    (:func:`topo.graph.products.sampled_bfs_by_products_torch`).
    """
    graph = _as_graph(graph)
    graph = graph if graph.is_torch and graph.adjacency.is_cuda else graph.numpy()
    n = graph.n_nodes
    if n < 2:
        return PathLength(_undefined(graph, "mean shortest path", f"{n} node(s)"), math.nan, math.nan)
    chosen = np.sort(np.random.default_rng(seed).choice(n, size=min(sources, n), replace=False))
    split = graph.parts[0] if graph.is_bipartite else None
    block = split * (n - split) if split else n * n
    if graph.is_torch:
        d, r = sampled_bfs_by_products_torch(graph.adjacency, chosen, split)
    elif np.count_nonzero(graph.adjacency) >= PRODUCTS_FROM * block:
        d, r = sampled_bfs_by_products(graph.adjacency, chosen, split)
    else:
        d, r = bitsets.sampled_bfs(graph.adjacency, chosen)
    d, r = d.astype(np.float64), r.astype(np.float64)
    fraction = float(r.sum() / (len(chosen) * (n - 1)))
    if r.sum() == 0:
        return PathLength(_undefined(graph, "mean shortest path", "no reachable pair"), fraction, math.nan)
    mean = float(d.sum() / r.sum())
    s = len(chosen)
    if s < 2 or s == n:
        return PathLength(mean, fraction, 0.0 if s == n else math.nan)
    variance = ((d - mean * r) ** 2).sum() / (s * (s - 1)) / r.mean() ** 2 * (1 - s / n)
    return PathLength(mean, fraction, float(math.sqrt(variance)))


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


#: The metrics :func:`summarize` reports for each graph structure (a metric that does not apply is absent).
METRICS = {
    "square": ("n_nodes", "n_edges", "density", "algebraic_connectivity", "degree_gini", "global_clustering",
               "mean_shortest_path", "reachable_fraction", "spectral_gap", "ramanujan_gap"),
    "bipartite": ("n_nodes", "n_edges", "density", "algebraic_connectivity", "fan_in_gini", "fan_out_gini",
                  "bipartite_clustering", "mean_shortest_path", "reachable_fraction", "spectral_gap",
                  "ramanujan_gap", "dead_inputs", "dead_outputs"),
    "layered": ("n_nodes", "n_edges", "density", "algebraic_connectivity", "degree_gini", "mean_shortest_path",
                "reachable_fraction"),
}


def structure(graph: Graph) -> str:
    """``"square"``, ``"bipartite"`` (two parts) or ``"layered"`` (more): which :data:`METRICS` apply."""
    if graph.parts is None:
        return "square"
    return "bipartite" if graph.is_bipartite else "layered"


@dataclass(frozen=True)
class RawCounts:
    """A graph's raw quantities, each computed only when its metric applies (thunks)."""

    degrees: np.ndarray
    n_components: int
    lambda2: Callable[[], float]
    transitivity: Callable[[], float]
    bipartite_cycles: Callable[[], tuple[float, float]]
    path_length: Callable[[], PathLength]
    sampled_paths: bool = False
    spectrum: Callable[[], dict[str, float]] | None = None


def _summary(graph: Graph, raw: RawCounts, only: Sequence[str] | None = None) -> dict[str, float]:
    """The summary dict of :func:`summarize` from a graph's raw quantities (each metric's conventions applied);
    ``only`` restricts it to those metrics (the others are not computed)."""
    kind = structure(graph)
    path = functools.cache(raw.path_length)
    split = graph.parts[0] if graph.is_bipartite else 0
    spectrum = functools.cache(raw.spectrum or (lambda: graph_spectrum(graph)))
    values: dict[str, Callable[[], float]] = {
        "n_nodes": lambda: graph.n_nodes,
        "n_edges": lambda: int(np.asarray(raw.degrees).sum()) // 2,
        "density": lambda: graph.density,
        "algebraic_connectivity": lambda: _connectivity(graph, raw.n_components, raw.lambda2),
        "degree_gini": lambda: _gini(graph, raw.degrees),
        "fan_in_gini": lambda: _gini(graph, raw.degrees[split:]),
        "fan_out_gini": lambda: _gini(graph, raw.degrees[:split]),
        "global_clustering": lambda: _clustering(graph, raw.transitivity),
        "bipartite_clustering": lambda: _robins_alexander(raw.bipartite_cycles),
        "mean_shortest_path": lambda: path().mean,
        "reachable_fraction": lambda: path().reachable_fraction,
        **{name: (lambda name=name: spectrum()[name])
           for name in ("spectral_gap", "ramanujan_gap", "dead_inputs", "dead_outputs")},
    }
    result = {metric: values[metric]() for metric in METRICS[kind] if only is None or metric in only}
    if only is not None:
        return result
    if graph.mask_density is not None:
        result["mask_density"] = graph.mask_density
    if raw.sampled_paths:
        result["mean_shortest_path_se"] = path().standard_error
    return result


def summarize(graph: Graph | Any, backend: str = "auto", *, small_world_graphs: int = 0, seed: int = 0,
              path_sources: int | None = None, metrics: Sequence[str] | None = None) -> dict:
    """Every metric that applies to a graph, as a dict (:data:`METRICS` by the graph's structure).

    Square graphs (recurrent gate blocks: the paper's Figure 5) get algebraic connectivity, degree Gini, global
    clustering and mean shortest path. Bipartite graphs (Linear layers, convolution channel graphs, gates of a
    recurrent input weight), where transitivity is always 0, get λ2 and path length too, with the Robins–Alexander
    :func:`bipartite_clustering` and the Gini of fan-in and of fan-out instead. Layered graphs get λ2, degree Gini
    and path length. All report nodes, edges, ``density`` (:attr:`Graph.density`: edges over the edges the
    graph's kind allows; a full Linear layer has density 1) and the reachable fraction; graphs built from a mask
    also its ``mask_density`` (active weights over weights of the block), which differs from ``density`` for
    square graphs (an edge joins two entries) and convolution channel graphs (an edge is any active tap).

    With ``small_world_graphs > 0`` also σ and ω (:func:`small_world`) against that many random graphs, for square
    graphs only: both compare clustering with a ring lattice's, and a bipartite graph's transitivity is 0 by
    construction, so they are absent elsewhere, as other metrics are. With
    ``path_sources`` below the number of nodes, the mean shortest path is estimated from that many sources
    (:func:`sampled_shortest_path`, seeded by ``seed``) and reported with ``mean_shortest_path_se``. ``metrics``
    computes only those (e.g. the paper's four), and nothing else.
    """
    graph = _as_graph(graph)
    kernels, adjacency = _kernels(graph, backend)
    components = kernels.n_components(adjacency) if graph.n_nodes >= 2 else 0
    split = graph.parts[0] if graph.is_bipartite else 0
    sampled = bool(path_sources) and path_sources < graph.n_nodes
    degrees = kernels.degrees(adjacency)
    spectrum = None
    if isinstance(kernels, TorchBackend) and structure(graph) != "layered":
        spectrum = lambda: batch_spectra(  # noqa: E731
            adjacency[None], split if graph.is_bipartite else None, degrees[None], np.array([components]))[0]
    result = _summary(graph, RawCounts(
        degrees, components, lambda: kernels.lambda2(adjacency, split or None),
        lambda: kernels.transitivity(adjacency), lambda: kernels.bipartite_cycles(adjacency, split),
        (lambda: sampled_shortest_path(graph, path_sources, seed)) if sampled
        else (lambda: _path(graph, lambda: kernels.path_counts(adjacency))), sampled, spectrum), metrics)
    if small_world_graphs and structure(graph) == "square":  # σ and ω compare with a lattice: square graphs only
        result.update(small_world(graph, small_world_graphs, seed))
    return result


Snapshot = Mapping[str, Any]
Row = tuple[int | None, str, str, dict[str, float]]


def _snapshots(source: Any) -> tuple[Iterable[tuple[int | None, Snapshot]], int | None]:
    """The (epoch, masks) pairs of ``source``, lazily, and how many there are when known."""
    if hasattr(source, "iter_masks"):
        return source.iter_masks(), len(source.epochs) if hasattr(source, "epochs") else None
    if isinstance(source, Mapping):
        return [(None, source)], 1
    return source, len(source) if hasattr(source, "__len__") else None


#: On the CPU a null draws its masks in batches of at most this many bytes of working memory …
NULL_BATCH_BYTES = 256 * 2**20
#: … counting this many a weight of a sample: the degree null's keys (4 bytes) and its double argsort's indices
#: (8 + 8), the largest of the three nulls.
NULL_BYTES_PER_WEIGHT = 24


def null_rows(source: GraphSource, observed: Mapping[str, float], null: str, samples: int, seed: int,
              device: torch.device | None = None, path_sources: int | None = None) -> dict[str, float]:
    """``<metric>_null_mean``, ``_null_std`` and ``_z`` of one graph against ``samples`` graphs built by its
    ``source``'s builder from null masks of its block (:mod:`topo.graph.null`): on ``device`` when given, generated
    and measured in one batch; else by the CPU kernels, generated in batches of :data:`NULL_BATCH_BYTES` and
    built and measured one at a time, so a null takes the memory of one graph more than the observed one (eight
    ``nm`` samples of a 4096 × 11008 matrix at once took 10.4 GiB), their mean shortest path estimated from
    ``path_sources`` sampled sources when given, as the observed graph's was (:func:`summarize`; an exact
    all-pairs search of every null graph of a 15,104-node layer took minutes each). Empty where the null does not
    apply."""
    block, build = source.block, source.build
    if device is not None:
        masks = null_masks(null, torch.as_tensor(block).to(device), samples, seed, source.layer_shape)
        return {} if masks is None else z_scores(observed, _batch_summaries([build(mask) for mask in masks], 0, seed))
    block = torch.as_tensor(np.asarray(block))
    per_batch = max(1, NULL_BATCH_BYTES // (NULL_BYTES_PER_WEIGHT * max(1, block.numel())))
    batches = iter_null_masks(null, block, samples, seed, source.layer_shape, per_batch)
    if batches is None:
        return {}
    summaries = [summarize(build(mask.numpy()), path_sources=path_sources) for batch in batches for mask in batch]
    return z_scores(observed, summaries)


def _null_seed(seed: int, epoch: int | None, graph: str) -> int:
    """A null's seed: the table's seed, the epoch and the graph, so every graph of every epoch gets its own."""
    return zlib.crc32(f"{seed}/{epoch}/{graph}".encode())


def _rows_per_graph(
    snapshots: Iterable[tuple[int | None, Snapshot]], backend: str, small_world_graphs: int, seed: int,
    reading: Mapping[str, Any], null: tuple[str, int] | None,
) -> Iterator[Row]:
    for epoch, masks in snapshots:
        gates = recurrent_gates({layer: tuple(np.shape(mask)) for layer, mask in masks.items()})
        for layer, mask in masks.items():
            for graph_name, source in graph_sources({layer: mask}, gates, **reading).items():
                summary = summarize(source.build(source.block), backend, small_world_graphs=small_world_graphs,
                                    seed=seed)
                if null is not None:
                    summary.update(null_rows(source, summary, null[0], null[1], _null_seed(seed, epoch, graph_name)))
                yield epoch, layer, graph_name, summary


def _batch_summaries(graphs: list[Graph], small_world_graphs: int, seed: int) -> list[dict[str, float]]:
    adjacency = torch.stack([g.adjacency for g in graphs])
    counts = count_batch(adjacency, parts=graphs[0].parts)
    split = graphs[0].parts[0] if graphs[0].is_bipartite else None
    spectra = functools.cache(lambda: batch_spectra(adjacency, split, counts.degrees, counts.n_components))
    summaries = []
    for i, graph in enumerate(graphs):
        summaries.append(_summary(graph, RawCounts(
            counts.degrees[i], int(counts.n_components[i]),
            lambda i=i: counts.lambda2[i],
            lambda i=i: _ratio(counts.closed_walks[i], counts.degrees[i]),
            lambda i=i: (float(counts.four_cycles[i]), float(counts.three_paths[i])),
            lambda i=i, graph=graph: _path(graph, lambda: PathCounts(float(counts.distance_sum[i]),
                                                                     int(counts.reachable_pairs[i]))),
            spectrum=lambda i=i: spectra()[i],
        )))
        if small_world_graphs and structure(graph) == "square":
            summaries[-1].update(small_world(graph, small_world_graphs, seed))
    return summaries


def summarize_many(graphs: Sequence[Graph], *, small_world_graphs: int = 0, seed: int = 0,
                   batch_bytes: int | None = None) -> list[dict]:
    """:func:`summarize` of each of ``graphs`` (torch graphs on one device), computed in batches of equal-size
    graphs there: the heads of a projection, or the gates of a recurrent layer, in one batch each.

    The same values as :func:`summarize` with the torch backend, graph by graph (exact shortest paths: on a
    device, the all-pairs search that counts the components gives them at no further cost). ``batch_bytes``: the
    memory one batch may use (default :func:`default_batch_bytes` of the device).
    """
    if not graphs:
        return []
    device = graphs[0].adjacency.device
    budget = batch_bytes or default_batch_bytes(device)
    groups: dict[tuple[int, tuple[int, ...] | None], list[int]] = {}
    for index, graph in enumerate(graphs):
        groups.setdefault((graph.n_nodes, graph.parts), []).append(index)
    summaries: list[dict | None] = [None] * len(graphs)
    for (n, _), indices in groups.items():
        step = batch_size(n, budget)
        for start in range(0, len(indices), step):
            chunk = indices[start : start + step]
            for index, summary in zip(chunk, _batch_summaries([graphs[i] for i in chunk], small_world_graphs, seed),
                                      strict=True):
                summaries[index] = summary
    return summaries


def _ratio(closed_walks: float, degrees: np.ndarray) -> float:
    """trace(A³) / Σ d(d − 1): the transitivity, NaN without a connected triple."""
    d = degrees.astype(np.float64)
    triples = float((d * (d - 1)).sum())
    return float(closed_walks) / triples if triples > 0 else math.nan


def _rows_batched(
    snapshots: Iterable[tuple[int | None, Snapshot]], device: torch.device, batch_bytes: int,
    small_world_graphs: int, seed: int, reading: Mapping[str, Any], null: tuple[str, int] | None,
) -> Iterator[Row]:
    """Rows of every graph, computed in batches of equal-size graphs on ``device``.

    Each snapshot's masks move to the device once; a batch is computed as soon as it is full, so memory stays
    bounded by ``batch_bytes`` per graph size whatever the run's length. Rows come out in snapshot order.
    """
    pending: dict[tuple[int, tuple[int, ...] | None], list[int]] = {}
    keys: list[tuple[int | None, str, str]] = []
    graphs: dict[int, Graph] = {}
    sources: dict[int, GraphSource] = {}
    done: dict[int, dict[str, float]] = {}
    emitted = 0

    def flush(group: tuple[int, tuple[int, ...] | None]) -> None:
        indices = pending.pop(group)
        summaries = _batch_summaries([graphs.pop(i) for i in indices], small_world_graphs, seed)
        for index, summary in zip(indices, summaries, strict=True):
            source = sources.pop(index)
            if null is not None:
                summary.update(null_rows(source, summary, null[0], null[1],
                                         _null_seed(seed, keys[index][0], keys[index][2]), device))
            done[index] = summary

    def ready() -> Iterator[Row]:
        nonlocal emitted
        while emitted in done:
            yield (*keys[emitted], done.pop(emitted))
            emitted += 1

    for epoch, masks in snapshots:
        on_device = {layer: torch.as_tensor(mask).to(device) for layer, mask in masks.items()}
        gates = recurrent_gates({layer: tuple(mask.shape) for layer, mask in on_device.items()})
        for layer, mask in on_device.items():
            for graph_name, source in graph_sources({layer: mask}, gates, **reading).items():
                graph = source.build(source.block)
                index = len(keys)
                keys.append((epoch, layer, graph_name))
                graphs[index] = graph
                sources[index] = source
                group = (graph.n_nodes, graph.parts)  # equal size and layout: one batch
                pending.setdefault(group, []).append(index)
                if len(pending[group]) >= batch_size(graph.n_nodes, batch_bytes):
                    flush(group)
        yield from ready()
    for group in list(pending):
        flush(group)
    yield from ready()


def default_batch_bytes(device: torch.device) -> int:
    """Memory one batch may use: a quarter of the free CUDA memory (at most 8 GiB), or 512 MiB on the CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(min(free // 4, 8 << 30))
    return 512 << 20


def metrics_table(
    source: Snapshot | Iterable[tuple[int | None, Snapshot]] | Any,
    *,
    run: str = "",
    backend: str = "auto",
    device: str | torch.device | None = None,
    batch_bytes: int | None = None,
    small_world_graphs: int = 0,
    seed: int = 0,
    progress: bool = True,
    family: Family | None = None,
    heads: bool = False,
    conv: str = "auto",
    null: str | None = None,
    null_samples: int = 20,
) -> pd.DataFrame:
    """Tidy table of :func:`summarize` over every graph of every snapshot.

    Parameters
    ----------
    source:
        One snapshot (layer name → mask), an iterable of ``(epoch, snapshot)`` pairs, or any object with an
        ``iter_masks()`` method yielding them (e.g. :class:`topo.record.RunReader`). Read lazily.
    run:
        Value of the ``run`` column.
    backend:
        Per-graph backend (``"auto"``, ``"cpu"``, ``"torch"``) when no ``device`` is given.
    device:
        Analyse the whole source in batches of equal-size graphs with the torch kernels on this device
        (``"cuda"``, ``"cpu"``; see :mod:`topo.graph.batched`). Same numbers as the per-graph backends.
    batch_bytes:
        Memory one batch may use on ``device`` (default: :func:`default_batch_bytes`).
    small_world_graphs:
        With N > 0, also σ and ω against N random graphs (on the CPU, per graph).
    family, heads, conv:
        How weights are read into graphs (:func:`topo.graph.layer_graphs`); ``family`` defaults to the source's own
        (a run directory records its model's, :attr:`topo.record.RunReader.family`).
    null, null_samples:
        Also measure ``null_samples`` graphs of the null model ``null`` (``"er"``, ``"degree"``, ``"nm"``,
        :mod:`topo.graph.null`) per graph, giving ``<metric>_null_mean``, ``<metric>_null_std`` and ``<metric>_z``
        rows (the z-score absent where the null cannot vary).

    Returns
    -------
    DataFrame with columns run, epoch, layer, graph, metric, value; one row per metric. For a run directory
    (a :class:`~topo.record.RunReader`) also, per layer (``graph`` = the layer), ``turnover`` since the previous
    snapshot and ``exploration`` (:mod:`topo.graph.compare`).
    """
    reading = {"family": family or getattr(source, "family", None), "heads": heads, "conv": conv}
    if null is not None and null not in NULLS:
        raise ConfigError(f"unknown null model {null!r}; valid: {', '.join(NULLS)}")
    nulls = (null, int(null_samples)) if null is not None else None
    snapshots, total = _snapshots(source)
    snapshots = tqdm(snapshots, total=total, desc="graph metrics", unit="snapshot", disable=not progress)
    if device is None:
        rows = _rows_per_graph(snapshots, backend, small_world_graphs, seed, reading, nulls)
    else:
        device = torch.device(device)
        rows = _rows_batched(snapshots, device, batch_bytes or default_batch_bytes(device), small_world_graphs, seed,
                             reading, nulls)
    table = []
    for epoch, layer, graph_name, metrics in rows:
        table.extend((run, epoch, layer, graph_name, metric, float(value)) for metric, value in metrics.items())
    frame = pd.DataFrame(table, columns=["run", "epoch", "layer", "graph", "metric", "value"])
    if hasattr(source, "ever_active") and hasattr(source, "epochs"):
        frame = pd.concat([frame, run_topology(source, run)], ignore_index=True)
    return frame
