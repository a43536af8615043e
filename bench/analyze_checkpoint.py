"""Time to analyse a dense 100 M-parameter safetensors checkpoint through its magnitude backbone, in one run.

Usage: python bench/analyze_checkpoint.py [--params 100e6] [--width 4096] [--fraction 0.1] [--device cpu|cuda]
                                          [--json out.json]

Writes a dense checkpoint of square Linear layers (``width`` × ``width``, float32, random normal) totalling about
``--params`` parameters to a temporary ``model.safetensors``, then times ``topo.analyze.analyze_checkpoint`` on it
with ``backbone="magnitude:F"`` (per layer): reading each layer, the backbone, its bipartite graph and every
metric that applies (λ2, fan-in/fan-out Gini, Robins–Alexander clustering, mean shortest path). Prints the total
and per-layer time and the peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from topo.analyze import analyze_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=float, default=100e6)
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", help="also write the measured figures to this JSON file")
    args = parser.parse_args()
    layers = max(1, round(args.params / args.width**2))
    generator = torch.Generator().manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.safetensors"
        save_file({f"layers.{i}.weight": torch.randn(args.width, args.width, generator=generator)
                   for i in range(layers)}, path)
        size = path.stat().st_size
        start = time.perf_counter()
        result = analyze_checkpoint(path, backbone=f"magnitude:{args.fraction}", progress=False,
                                    device=None if args.device == "cpu" else args.device)
        seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    device = torch.cuda.get_device_name() if args.device != "cpu" else platform.processor() or platform.machine()
    print(f"# {' '.join(sys.argv)}")
    print(f"# {device}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{layers} layers of {args.width}×{args.width}: {layers * args.width**2 / 1e6:.0f} M parameters, "
          f"{size / 2**20:.0f} MiB on disk; backbone magnitude:{args.fraction}")
    print(f"analysis {seconds:.1f} s ({seconds / layers:.1f} s per layer); peak resident memory {peak:.0f} MiB")
    row = result.table.iloc[0]
    print(f"first layer: density {row['density']:.3f}, λ2 {row['algebraic_connectivity']:.4g}, "
          f"R-A clustering {row['bipartite_clustering']:.4g}, mean path {row['mean_shortest_path']:.4g}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"argv": sys.argv, "device": device, "layers": layers, "width": args.width,
                       "parameters": layers * args.width**2, "bytes": size, "seconds": seconds,
                       "peak_rss_mib": peak}, handle, indent=2)


if __name__ == "__main__":
    main()
