"""Time of topo's graph metrics against an igraph + scipy script and networkx, and of whole-run analysis, in one run.

Usage:
    python bench/graph_metrics.py [--sizes 512 2048 4096] [--densities 0.3 0.1 0.03 0.01]
                                  [--networkx-max-n 512] [--torch-sizes 512 2048 4096 8192]
                                  [--run-epochs 200 --run-units 1024 --cpu-epochs 10] [--json out.json]

1. **One graph, CPU.** Random square masks symmetrised as topo does for an LSTM gate block (n = 512 is one gate
   of a 512-unit LSTM; "density" is the edge density 2m/n²). For each graph, all four Figure-5 metrics by:
   topo's CPU backend (``summarize(graph, "cpu")``); the script an expert would write with igraph and scipy
   (build the igraph graph from the mask, ``transitivity_undirected``, ``average_path_length``, the Gini in
   numpy, λ2 by LAPACK ``eigh`` up to 512 nodes and ARPACK ``eigsh(which="SA")`` above, which was the faster
   of the two there on this script's development machine); and networkx (``algebraic_connectivity`` with
   method="lanczos", ``transitivity``, ``average_shortest_path_length``) up to ``--networkx-max-n`` nodes.
   The three must agree to 1e-6. Times are the fastest of ``--repeats`` calls (networkx: one call).
2. **One graph, torch backend** (on CUDA when present), sizes ``--torch-sizes`` at density 0.1: the four
   metrics alone (``metrics=…``), and every metric ``summarize`` reports (the spectral and Ramanujan gaps too).
3. **A whole run** (every metric): the four gate graphs of a ``--run-units`` LSTM's ``weight_hh`` (mask density
   0.1, 5 % of the active weights moved each epoch) over ``--run-epochs`` epochs, through ``metrics_table``: batched on
   the torch device (``device=…``), one graph at a time with the torch backend, and with the CPU backend on the
   first ``--cpu-epochs`` epochs (its time per graph × the run's graphs gives the CPU estimate). The batched
   and CPU tables must agree to 1e-6 on the epochs both ran.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
import warnings

import igraph
import networkx as nx
import numpy as np
import scipy.linalg
import scipy.sparse
import scipy.sparse.linalg
import torch

from topo.graph import Graph, metrics_table, summarize

METRICS = ("algebraic_connectivity", "degree_gini", "global_clustering", "mean_shortest_path")


def random_gate_graph(n: int, density: float, seed: int) -> Graph:
    """A symmetrised random mask with edge density about ``density``."""
    rng = np.random.default_rng(seed)
    p = 1 - math.sqrt(1 - density)  # an edge appears if either direction is active
    mask = rng.random((n, n)) < p
    adjacency = mask | mask.T
    np.fill_diagonal(adjacency, False)
    return Graph(adjacency, f"n={n}, d={density}")


def gini(degrees: np.ndarray) -> float:
    degrees = np.sort(degrees).astype(float)
    n = len(degrees)
    return float(2 * (np.arange(1, n + 1) * degrees).sum() / (n * degrees.sum()) - (n + 1) / n)


def igraph_scipy_metrics(adjacency: np.ndarray) -> dict[str, float]:
    """The expert's script: igraph for clustering and paths, LAPACK/ARPACK for λ2 (connected graphs)."""
    n = adjacency.shape[0]
    graph = igraph.Graph(n=n, edges=np.argwhere(np.triu(adjacency, 1)).tolist(), directed=False)
    degrees = adjacency.sum(1).astype(float)
    laplacian = scipy.sparse.diags_array(degrees) - scipy.sparse.csr_array(adjacency, dtype=float)
    if n <= 512:
        lam = scipy.linalg.eigh(laplacian.toarray(), eigvals_only=True, subset_by_index=[1, 1])[0]
    else:
        lam = max(scipy.sparse.linalg.eigsh(laplacian, k=2, which="SA", return_eigenvectors=False))
    return {
        "algebraic_connectivity": float(lam),
        "degree_gini": gini(degrees),
        "global_clustering": graph.transitivity_undirected(),
        "mean_shortest_path": graph.average_path_length(directed=False, unconn=True),
    }


def networkx_metrics(graph: nx.Graph) -> dict[str, float]:
    """networkx's metrics; on a disconnected graph λ2 = 0 and the path length is averaged over components."""
    connected = nx.is_connected(graph)
    total, pairs = 0.0, 0
    for nodes in nx.connected_components(graph):
        s = len(nodes)
        if s > 1:
            total += nx.average_shortest_path_length(graph.subgraph(nodes)) * s * (s - 1)
            pairs += s * (s - 1)
    return {
        "algebraic_connectivity": nx.algebraic_connectivity(graph, method="lanczos", tol=1e-10, seed=0)
        if connected else 0.0,
        "degree_gini": gini(np.array([d for _, d in graph.degree()])),
        "global_clustering": nx.transitivity(graph),
        "mean_shortest_path": total / pairs,
    }


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, *args, repeats: int = 1, **kwargs):
    """(value, fastest of ``repeats`` wall times)."""
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        value = fn(*args, **kwargs)
        sync()
        times.append(time.perf_counter() - start)
    return value, min(times)


def check(name: str, ours: dict, theirs: dict) -> None:
    for key in METRICS:
        if not np.isclose(ours[key], theirs[key], rtol=1e-6, atol=1e-9):
            raise SystemExit(f"disagreement on {key} for {name}: {ours[key]} vs {theirs[key]}")


def one_graph_cpu(args: argparse.Namespace, results: dict) -> None:
    print(f"{'n':>6} {'density':>8} {'edges':>9} {'topo cpu s':>11} {'igraph+scipy s':>15} {'ratio':>7} "
          f"{'networkx s':>11} {'ratio':>7}")
    rows = []
    for n in args.sizes:
        for density in args.densities:
            graph = random_gate_graph(n, density, seed=n)
            ours, t_topo = timed(summarize, graph, "cpu", metrics=METRICS, repeats=args.repeats)
            expert, t_expert = timed(igraph_scipy_metrics, graph.adjacency, repeats=args.repeats)
            check(graph.name, ours, expert)
            t_nx = math.nan
            if n <= args.networkx_max_n:
                theirs, t_nx = timed(networkx_metrics, graph.to_networkx())
                check(graph.name, ours, theirs)
            rows.append({"n": n, "density": density, "edges": graph.n_edges, "topo_cpu_s": t_topo,
                         "igraph_scipy_s": t_expert, "networkx_s": t_nx})
            print(f"{n:>6} {density:>8} {graph.n_edges:>9} {t_topo:>11.4f} {t_expert:>15.4f} "
                  f"{t_expert / t_topo:>7.2f} {t_nx:>11.3f} {t_nx / t_topo:>7.1f}", flush=True)
    results["one_graph_cpu"] = rows


def one_graph_torch(args: argparse.Namespace, device: str, results: dict) -> None:
    print(f"\n{'n':>6} {'density':>8} {'edges':>10} {'four metrics s':>15} {'all metrics s':>14}   ({device})")
    rows = []
    for n in args.torch_sizes:
        graph = random_gate_graph(n, 0.1, seed=n).torch(device)
        _, t_four = timed(summarize, graph, "torch", metrics=METRICS, repeats=args.repeats)
        _, t_all = timed(summarize, graph, "torch", repeats=args.repeats)
        rows.append({"n": n, "density": 0.1, "edges": graph.n_edges, "torch_s": t_four, "torch_all_s": t_all})
        print(f"{n:>6} {0.1:>8} {graph.n_edges:>10} {t_four:>15.4f} {t_all:>14.4f}", flush=True)
    results["one_graph_torch"] = rows


def lstm_run(epochs: int, units: int, density: float = 0.1, turnover: float = 0.05, seed: int = 0,
             device: str = "cpu"):
    """(epoch, {"lstm.weight_hh_l0": mask}) over ``epochs``: a random mask whose active set drifts each epoch.

    Generated on ``device`` (fast), returned on the host, as a run directory's masks would be.
    """
    generator = torch.Generator(device=device).manual_seed(seed)
    total = 4 * units * units
    active = torch.randperm(total, generator=generator, device=device)[: round(density * total)]
    snapshots = []
    for epoch in range(epochs):
        mask = torch.zeros(total, dtype=torch.bool, device=device)
        mask[active] = True
        snapshots.append((epoch, {"lstm.weight_hh_l0": mask.view(4 * units, units).cpu()}))
        moved = round(turnover * len(active))
        inactive = torch.nonzero(~mask).flatten()
        keep = torch.randperm(len(active), generator=generator, device=device)[moved:]
        fresh = inactive[torch.randperm(len(inactive), generator=generator, device=device)[:moved]]
        active = torch.cat([active[keep], fresh])
    return snapshots


def whole_run(args: argparse.Namespace, device: str, results: dict) -> None:
    snapshots = lstm_run(args.run_epochs, args.run_units, device=device)
    graphs = 4 * len(snapshots)
    print(f"\nwhole run: {graphs} gate graphs ({args.run_epochs} epochs × 4 gates) of a {args.run_units}-unit LSTM")
    metrics_table(snapshots[:2], device=device, progress=False)  # warm-up: kernels, cuBLAS handles
    batched, t_batched = timed(metrics_table, snapshots, device=device, progress=False)
    print(f"  batched on {device:<6} {t_batched:9.3f} s  ({1e3 * t_batched / graphs:.2f} ms/graph)", flush=True)
    per_graph_epochs = snapshots[: args.cpu_epochs]
    _, t_unbatched = timed(metrics_table, [(e, {k: m.to(device) for k, m in s.items()}) for e, s in per_graph_epochs],
                           backend="torch", progress=False)
    per_graph_torch = t_unbatched / (4 * len(per_graph_epochs))
    print(f"  unbatched torch      {per_graph_torch * 1e3:9.2f} ms/graph (first {len(per_graph_epochs)} epochs)")
    cpu_table, t_cpu = timed(metrics_table, [(e, {k: m.numpy() for k, m in s.items()}) for e, s in per_graph_epochs],
                             backend="cpu", progress=False)
    per_graph_cpu = t_cpu / (4 * len(per_graph_epochs))
    head = batched[batched.epoch < len(per_graph_epochs)].reset_index(drop=True)
    if not np.allclose(head["value"], cpu_table["value"], rtol=1e-6, atol=1e-9, equal_nan=True):
        raise SystemExit("batched and CPU tables disagree")
    estimate = per_graph_cpu * graphs
    print(f"  CPU backend          {per_graph_cpu * 1e3:9.2f} ms/graph (first {len(per_graph_epochs)} epochs); "
          f"whole run ≈ {estimate:.1f} s")
    print(f"  batched speed-up: {per_graph_torch * graphs / t_batched:.1f}× unbatched torch, "
          f"{estimate / t_batched:.1f}× the CPU backend")
    results["whole_run"] = {"graphs": graphs, "units": args.run_units, "epochs": args.run_epochs,
                            "batched_s": t_batched, "unbatched_torch_ms_per_graph": per_graph_torch * 1e3,
                            "cpu_ms_per_graph": per_graph_cpu * 1e3, "cpu_estimate_s": estimate,
                            "cpu_threads": torch.get_num_threads()}


def spectral(args: argparse.Namespace, results: dict) -> None:
    """The spectral measures of one bipartite layer, and of ``--spectral-nulls`` ER nulls of it (generated in one
    batch), beside numpy's full SVD of the layer."""
    from topo.graph.null import null_masks
    from topo.graph.singular import bipartite_spectrum

    n, density = args.spectral_size, args.spectral_density
    mask = np.random.default_rng(0).random((n, n)) < density
    ours, t_ours = timed(bipartite_spectrum, mask)
    sigma, t_numpy = timed(np.linalg.svd, mask.astype(np.float64), compute_uv=False)
    if not np.isclose(ours["spectral_gap"], sigma[0] - sigma[1], rtol=1e-9):
        raise SystemExit(f"spectral gap {ours['spectral_gap']} differs from numpy's {sigma[0] - sigma[1]}")
    nulls, t_nulls = timed(lambda: [bipartite_spectrum(m.numpy()) for m in
                                    null_masks("er", mask, args.spectral_nulls, seed=0)])
    gaps = np.array([row["ramanujan_gap"] for row in nulls])
    print(f"\nspectral measures of a {n}×{n} layer at density {density}: topo {t_ours:.2f} s, numpy full SVD "
          f"{t_numpy:.2f} s ({t_numpy / t_ours:.1f}×); {args.spectral_nulls} ER nulls {t_nulls:.1f} s "
          f"({t_nulls / args.spectral_nulls:.2f} s each); Ramanujan gap {ours['ramanujan_gap']:.4f}, "
          f"null {gaps.mean():.4f} ± {gaps.std(ddof=1):.4f}")
    results["spectral"] = {"n": n, "density": density, "topo_s": t_ours, "numpy_svd_s": t_numpy,
                           "nulls": args.spectral_nulls, "nulls_s": t_nulls, **ours}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[512, 2048, 4096])
    parser.add_argument("--densities", type=float, nargs="+", default=[0.3, 0.1, 0.03, 0.01])
    parser.add_argument("--networkx-max-n", type=int, default=512)
    parser.add_argument("--torch-sizes", type=int, nargs="*", default=[])
    parser.add_argument("--run-epochs", type=int, default=0, help="whole-run case: epochs (0: skip)")
    parser.add_argument("--run-units", type=int, default=1024)
    parser.add_argument("--cpu-epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--spectral-size", type=int, default=0, help="spectral part: layer size (0: skip)")
    parser.add_argument("--spectral-density", type=float, default=0.1)
    parser.add_argument("--spectral-nulls", type=int, default=20)
    parser.add_argument("--json", help="also write the measured figures to this JSON file")
    args = parser.parse_args()
    warnings.simplefilter("ignore", UserWarning)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    results: dict = {"argv": sys.argv, "torch": torch.__version__, "device": device,
                     "device_name": torch.cuda.get_device_name() if device == "cuda" else platform.processor(),
                     "cpu_threads": torch.get_num_threads()}
    print(f"# {' '.join(sys.argv)}")
    print(f"# machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, igraph {igraph.__version__}, torch device {device}"
          + (f" ({results['device_name']})" if device == "cuda" else ""))
    if args.sizes:
        one_graph_cpu(args, results)
    if args.torch_sizes:
        one_graph_torch(args, device, results)
    if args.run_epochs:
        whole_run(args, device, results)
    if args.spectral_size:
        spectral(args, results)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
