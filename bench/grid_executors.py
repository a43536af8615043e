"""Wall time of one Table 2 grid with the local executor and with Ray on the same machine, measured in one run.

Usage: python bench/grid_executors.py [--dataset fashion-mnist] [--seeds 3] [--epochs 20]
                                      [--methods dense random-fixed adaptive set rigl snip pruning wide-dense]
                                      [--gpus-per-run 0.2] [--cpus-per-run 1] [--out DIR] [--json out.json]

The grid (the MLP of Table 1 at −log α = 1, k = 0.25) is trained twice into fresh directories: by
``topo reproduce``'s local executor (runs one after the other, each with all of torch's threads) and by
``--executor ray`` (a local Ray cluster started for the grid, its start-up included; each run a task with
``--cpus-per-run`` CPUs, so torch uses that many threads, and ``--gpus-per-run`` of a GPU). Reported: both wall
times, their ratio, whether the two tables are equal and their largest difference. On the CPU they are equal
when a Ray run has as many threads as a local one (``--cpus-per-run`` = torch's threads here); with fewer,
floating-point sums run in another order and the runs drift apart (on a GPU, nondeterministic kernels may too).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from topo.executors import RayOptions
from topo.experiments.table import reproduce_table2
from topo.experiments.train import TrainConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--data-dir")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--methods", nargs="+",
                        default=["dense", "random-fixed", "adaptive", "set", "rigl", "snip", "pruning", "wide-dense"])
    parser.add_argument("--max-batches", type=int)
    parser.add_argument("--cpus-per-run", type=float, default=1.0)
    parser.add_argument("--gpus-per-run", type=float)
    parser.add_argument("--out", help="parent of the two output roots (default: a temporary folder)")
    parser.add_argument("--json", help="also write the measured figures to this JSON file")
    args = parser.parse_args()
    root = Path(args.out or tempfile.mkdtemp(prefix="topo-grid-"))
    base = TrainConfig(model="mlp", dataset=args.dataset, data_dir=args.data_dir, epochs=args.epochs, log_alpha=1.0,
                       k=0.25, max_batches=args.max_batches)
    grid = {"log_alphas": [1.0], "ks": [0.25], "seeds": args.seeds, "methods": args.methods, "progress": False}
    times, tables = {}, {}
    for executor in ("local", "ray"):
        options = RayOptions(cpus_per_run=args.cpus_per_run, gpus_per_run=args.gpus_per_run) \
            if executor == "ray" else None
        start = time.perf_counter()
        tables[executor] = reproduce_table2(base, **grid, out_dir=root / executor, executor=executor,
                                            ray_options=options)
        times[executor] = time.perf_counter() - start
    columns = ["method", "seed", "score"]
    equal = tables["local"][columns].equals(tables["ray"][columns])
    figures = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
        "dataset": args.dataset, "methods": args.methods, "seeds": args.seeds, "epochs": args.epochs,
        "runs": len(tables["local"]), "cpus_per_run": args.cpus_per_run, "gpus_per_run": args.gpus_per_run,
        "local_s": times["local"], "ray_s": times["ray"], "speedup": times["local"] / times["ray"],
        "tables_equal": bool(equal),
        "largest_score_difference": float((tables["local"].score - tables["ray"].score).abs().max()),
    }
    print(f"{figures['runs']} runs on {figures['device']} ({figures['cpus']} CPUs): local {times['local']:.1f} s, "
          f"ray {times['ray']:.1f} s, local / ray = {figures['speedup']:.2f}x; tables equal: {equal}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
