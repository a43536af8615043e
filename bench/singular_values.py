"""The two largest singular values of a layer on a torch device: a full SVD against the Gram eigensolve topo uses.

Usage: python bench/singular_values.py [--shape 4096 11008] [--device cuda] [--repeats 3]

A 2:4-pruned random 0/1 matrix of ``--shape`` (Llama-2-7B's MLP by default) in float64: ``torch.linalg.svdvals``
against :func:`topo.graph.singular.top_singular_values_torch` (the product with its transpose on the smaller side,
then ``eigvalsh``), both timed in this run (fastest of ``--repeats``), with their largest relative difference.
"""

from __future__ import annotations

import argparse
import time

import torch

from topo.graph.singular import top_singular_values_torch


def fastest(fn, repeats: int, device: torch.device):
    times, value = [], None
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        value = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return value, min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=2, default=[4096, 11008])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    rows, cols = args.shape
    weights = torch.randn(rows, cols, generator=torch.Generator().manual_seed(0))
    keep = weights.abs().reshape(rows, -1, 4).topk(2, dim=-1).indices
    mask = torch.zeros(rows, cols // 4, 4).scatter_(-1, keep, 1.0).reshape(rows, cols)
    matrix = mask.to(device, torch.float64)
    svd, t_svd = fastest(lambda: torch.linalg.svdvals(matrix)[:2].tolist(), args.repeats, device)
    gram, t_gram = fastest(lambda: top_singular_values_torch(matrix), args.repeats, device)
    difference = max(abs(a - b) / abs(a) for a, b in zip(svd, gram, strict=True))
    print(f"# {rows} × {cols} 2:4 matrix, float64, on {device}")
    print(f"svdvals            {t_svd:8.3f} s   σ1, σ2 = {svd[0]:.10f}, {svd[1]:.10f}")
    print(f"Gram + eigvalsh    {t_gram:8.3f} s   σ1, σ2 = {gram[0]:.10f}, {gram[1]:.10f}")
    print(f"ratio {t_svd / t_gram:.1f}×, largest relative difference {difference:.1e}")


if __name__ == "__main__":
    main()
