"""One checkpoint's matrices analysed here and on a local Ray cluster of 1 and of 2 CPUs, in one run.

Usage: python bench/analyze_ray.py [--matrices 8] [--size 1024] [--density 0.1] [--json out.json]

Writes a synthetic checkpoint of ``--matrices`` random ``--size``² masks at ``--density`` (float32, safetensors),
then times ``analyze_checkpoint`` with the local executor and with ``executor="ray"`` on a fresh local cluster of
``num_cpus`` 1 and 2 (one task per matrix, one CPU each), checks that every table equals the local one, and
prints the seconds and the speed-up of 2 workers over 1. Ray's start-up is timed apart from the analysis.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch


def write_checkpoint(folder: Path, matrices: int, size: int, density: float) -> Path:
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(0)
    state = {f"blocks.{i}.weight": torch.randn(size, size, generator=generator)
             * (torch.rand(size, size, generator=generator) < density) for i in range(matrices)}
    path = folder / "model.safetensors"
    save_file(state, path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--matrices", type=int, default=8)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--density", type=float, default=0.1)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()

    import ray

    from topo.analyze import analyze_checkpoint
    from topo.executors import RayOptions

    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder:
        path = write_checkpoint(Path(folder), args.matrices, args.size, args.density)
        torch.set_num_threads(1)  # each Ray task computes with one thread: so does the local run
        start = time.perf_counter()
        local = analyze_checkpoint(path, progress=False).table
        figures["local_s"] = time.perf_counter() - start
        for cpus in (1, 2):
            start = time.perf_counter()
            ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
            figures[f"ray_start_{cpus}_s"] = time.perf_counter() - start
            options = RayOptions(cpus_per_run=1)
            # warm every worker on one matrix each: a worker imports torch and topo once, on its first task
            analyze_checkpoint(path, progress=False, executor="ray", ray_options=options,
                               layers=f"blocks.[0-{cpus - 1}].weight")
            start = time.perf_counter()
            table = analyze_checkpoint(path, progress=False, executor="ray", ray_options=options).table
            figures[f"ray_{cpus}_s"] = time.perf_counter() - start
            ray.shutdown()
            pd.testing.assert_frame_equal(table, local)
    figures["speedup_2_over_1"] = figures["ray_1_s"] / figures["ray_2_s"]
    print(f"{args.matrices} matrices of {args.size}² at density {args.density}, every table equal to the local one")
    print(f"local executor (1 thread)   {figures['local_s']:.1f} s")
    for cpus in (1, 2):
        print(f"ray, {cpus} CPU(s)              {figures[f'ray_{cpus}_s']:.1f} s "
              f"(cluster start {figures[f'ray_start_{cpus}_s']:.1f} s, every worker warmed first)")
    print(f"2 workers / 1 worker: {figures['speedup_2_over_1']:.2f}× faster")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
