"""Time of topo's graph metrics against networkx, all four Figure-5 metrics, in one run.

Usage: python bench/graph_metrics.py [--sizes 512 2048] [--densities 0.3 0.1 0.03] [--torch-sizes 8192]

Graphs are random square masks symmetrised as topo does for an LSTM gate block (n = 512 is one gate of a
512-unit LSTM). For each graph the script times topo's CPU backend (igraph + scipy), networkx
(algebraic_connectivity with method="lanczos", transitivity, average_shortest_path_length, and the degree Gini
in numpy), and topo's torch backend (on CUDA when present), checks that the numbers agree, and prints the
ratio networkx / topo. topo's times are the fastest of 5 calls (the first warms BLAS threads and CUDA kernels);
networkx runs once. networkx's default algebraic_connectivity method (tracemin_pcg) is not used: it did not
finish in 200 s on a 512-node graph of density 0.1.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import networkx as nx
import numpy as np
import torch

from topo.graph import Graph, summarize


def random_gate_graph(n: int, density: float, seed: int) -> Graph:
    rng = np.random.default_rng(seed)
    mask = rng.random((n, n)) < density
    adjacency = mask | mask.T
    np.fill_diagonal(adjacency, False)
    return Graph(adjacency, f"n={n}, d={density}")


def networkx_metrics(graph: nx.Graph) -> dict[str, float]:
    degrees = np.sort([d for _, d in graph.degree()]).astype(float)
    n = len(degrees)
    gini = 2 * (np.arange(1, n + 1) * degrees).sum() / (n * degrees.sum()) - (n + 1) / n
    return {
        "algebraic_connectivity": nx.algebraic_connectivity(graph, method="lanczos", tol=1e-10, seed=0),
        "degree_gini": gini,
        "global_clustering": nx.transitivity(graph),
        "mean_shortest_path": nx.average_shortest_path_length(graph),
    }


def timed(fn, *args, repeats: int = 1):
    """(value, fastest of ``repeats`` wall times)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn(*args)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return value, min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--densities", type=float, nargs="+", default=[0.3, 0.1, 0.03])
    parser.add_argument("--torch-sizes", type=int, nargs="*", default=[],
                        help="extra sizes timed with the torch backend only (e.g. 8192 on a GPU)")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"# {' '.join(sys.argv)}")
    print(f"# machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, torch device {device}"
          + (f" ({torch.cuda.get_device_name()})" if device == "cuda" else ""))
    print(f"{'n':>6} {'density':>8} {'edges':>9} {'topo cpu s':>11} {'networkx s':>11} {'nx/topo':>8} "
          f"{'torch s':>9}")
    for n in args.sizes:
        for density in args.densities:
            graph = random_gate_graph(n, density / 2, seed=n)
            ours, t_cpu = timed(summarize, graph, "cpu", repeats=5)
            on_device = graph.torch(device)
            theirs_torch, t_torch = timed(summarize, on_device, "torch", repeats=5)
            theirs, t_nx = timed(networkx_metrics, graph.to_networkx())
            for key, value in theirs.items():
                for result in (ours, theirs_torch):
                    if not np.isclose(result[key], value, rtol=1e-6):
                        raise SystemExit(f"disagreement on {key} for {graph.name}: {result[key]} vs {value}")
            print(f"{n:>6} {density:>8} {graph.n_edges:>9} {t_cpu:>11.3f} {t_nx:>11.3f} {t_nx / t_cpu:>8.1f} "
                  f"{t_torch:>9.3f}")
    for n in args.torch_sizes:
        graph = random_gate_graph(n, 0.05, seed=n).torch(device)
        _, t_torch = timed(summarize, graph, "torch", repeats=3)
        print(f"{n:>6} {0.1:>8} {graph.n_edges:>9} {'-':>11} {'-':>11} {'-':>8} {t_torch:>9.3f}")


if __name__ == "__main__":
    main()
