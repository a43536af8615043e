"""Time to analyse a Llama-2-7B-shaped checkpoint per head, as `topo analyze DIR --heads` does it, and how it grows.

Usage: python bench/analyze_llm.py [--blocks 1 2 4 32] [--variants 2:4 unstructured] [--hidden 4096]
                                   [--intermediate 11008] [--heads 32] [--executor local|processes]
                                   [--workers N] [--device cuda] [--null nm --null-samples 8] [--keep DIR]
                                   [--out DIR] [--json F] [--profile F]

Writes a synthetic Llama-shaped bfloat16 checkpoint of max(--blocks) decoder blocks (q, k, v, o of hidden ×
hidden; gate and up of intermediate × hidden; down of hidden × intermediate; random normal weights), one
safetensors shard per block with a ``model.safetensors.index.json`` and a ``config.json``, once per variant:
``2:4`` keeps the two largest |w| of every four inputs, ``unstructured`` the largest half of each matrix. For
each block count N a folder holds the first N shards (links) with its own index and config, and
``topo analyze FOLDER --heads --csv …`` runs on it in a fresh process (every metric; with ``--null``, the null
too), its peak resident memory summed over the process and its workers (psutil; sampled every 0.2 s).

Prints, per variant and block count: seconds, seconds per block, graphs, peak memory; and the 32-block time
extrapolated from the per-block cost of the largest run. ``--out DIR`` also keeps the largest run's table
(``<variant>.csv.gz``) and the figures (``analyze_llm.json``, with the command line and the machine).
``--profile F`` runs the largest analysis under cProfile (written to F) and prints its 40 costliest calls with
what they call and the 25 costliest without.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import pstats
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

PARTS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
         "mlp.up_proj", "mlp.down_proj")


def shapes(hidden: int, intermediate: int) -> dict[str, tuple[int, int]]:
    """Each projection's (out, in) shape in a Llama block."""
    return {part: (intermediate, hidden) if part in ("mlp.gate_proj", "mlp.up_proj") else
            (hidden, intermediate) if part == "mlp.down_proj" else (hidden, hidden) for part in PARTS}


def pruned(weight: torch.Tensor, variant: str) -> torch.Tensor:
    """``weight`` pruned as ``variant`` says: 2:4 by magnitude along the inputs, or its largest half."""
    if variant == "2:4":
        keep = weight.abs().reshape(weight.shape[0], -1, 4).topk(2, dim=-1).indices
        mask = torch.zeros(weight.shape[0], weight.shape[1] // 4, 4).scatter_(-1, keep, 1.0).reshape(weight.shape)
        return weight * mask
    threshold = weight.abs().flatten().kthvalue(weight.numel() // 2).values
    return weight * (weight.abs() > threshold)


def write_shards(folder: Path, blocks: int, hidden: int, intermediate: int, variant: str) -> list[str]:
    """One bfloat16 shard per block in ``folder``; returns the shard names in block order."""
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(0)
    names = []
    for block in range(blocks):
        tensors = {f"model.layers.{block}.{part}.weight":
                   pruned(torch.randn(shape, generator=generator), variant).to(torch.bfloat16)
                   for part, shape in shapes(hidden, intermediate).items()}
        names.append(f"model-{block + 1:05d}.safetensors")
        save_file(tensors, str(folder / names[-1]))
    return names


def checkpoint_of(shards: Path, names: list[str], blocks: int, hidden: int, heads: int, folder: Path) -> Path:
    """A checkpoint folder of the first ``blocks`` shards (links), with its index and ``config.json``."""
    folder.mkdir()
    weight_map = {}
    for block, name in enumerate(names[:blocks]):
        (folder / name).symlink_to(shards / name)
        weight_map.update({f"model.layers.{block}.{part}.weight": name for part in PARTS})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "num_attention_heads": heads,
                                                    "num_key_value_heads": heads, "hidden_size": hidden,
                                                    "num_hidden_layers": blocks, "tie_word_embeddings": False}))
    return folder


def measure(command: list[str]) -> tuple[float, float]:
    """Run ``command``; its wall seconds and the peak of its processes' summed resident memory (MiB)."""
    import psutil

    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = [0]

    def sample() -> None:
        root = psutil.Process(process.pid)
        while process.poll() is None:
            try:
                tree = [root, *root.children(recursive=True)]
                peak[0] = max(peak[0], sum(p.memory_info().rss for p in tree if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.2)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    _, errors = process.communicate()
    seconds = time.perf_counter() - start
    watcher.join()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{errors}")
    return seconds, peak[0] / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, nargs="+", default=[1, 2, 4, 32])
    parser.add_argument("--variants", nargs="+", choices=["2:4", "unstructured"], default=["2:4", "unstructured"])
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--intermediate", type=int, default=11008)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--executor", choices=["local", "processes"], default="local")
    parser.add_argument("--workers", type=int)
    parser.add_argument("--device", default="cpu", help="where topo analyze computes (cuda: on the GPU)")
    parser.add_argument("--null", choices=["er", "degree", "nm"])
    parser.add_argument("--null-samples", type=int, default=8)
    parser.add_argument("--keep", help="write the shards here (and keep them) instead of a temporary folder")
    parser.add_argument("--out", help="keep the largest run's table and the figures in this folder")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--profile", help="profile the largest analysis with cProfile into this file")
    args = parser.parse_args()
    counts = sorted(set(args.blocks))
    extra = ["--executor", args.executor, "--device", args.device] + (
        ["--workers", str(args.workers)] if args.workers else [])
    if args.null:
        extra += ["--null", args.null, "--null-samples", str(args.null_samples)]
    print(f"# {' '.join(sys.argv)}")
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}")
    figures: dict = {"argv": sys.argv, "cores": os.cpu_count(), "runs": []}
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="analyze-llm-"))
    try:
        for variant in args.variants:
            shards = root / f"shards-{variant.replace(':', 'of')}"
            shards.mkdir(parents=True, exist_ok=True)
            start = time.perf_counter()
            names = write_shards(shards, max(counts), args.hidden, args.intermediate, variant)
            print(f"{variant}: {max(counts)} blocks written in {time.perf_counter() - start:.0f} s")
            for blocks in counts:
                with tempfile.TemporaryDirectory(dir=root) as work:
                    folder = checkpoint_of(shards, names, blocks, args.hidden, args.heads, Path(work) / "model")
                    table = Path(work) / "table.csv"
                    profiled = args.profile and blocks == max(counts)
                    command = [sys.executable, *(["-m", "cProfile", "-o", args.profile] if profiled else []),
                               "-m", "topo.cli", "analyze", str(folder), "--heads", "--quiet", "--csv", str(table),
                               *extra]
                    seconds, peak = measure(command)
                    if profiled:
                        stats = pstats.Stats(args.profile, stream=sys.stdout)
                        stats.sort_stats("cumulative").print_stats(40)
                        stats.sort_stats("tottime").print_stats(25)
                    graphs = sum(1 for _ in table.open()) - 1
                    run = {"variant": variant, "blocks": blocks, "seconds": seconds, "graphs": graphs,
                           "peak_rss_mib": peak}
                    figures["runs"].append(run)
                    print(f"{variant}, {blocks} block(s): {seconds:.1f} s ({seconds / blocks:.1f} s a block), "
                          f"{graphs} graphs, peak memory {peak / 1024:.2f} GiB")
                    if args.out and blocks == max(counts):
                        out = Path(args.out)
                        out.mkdir(parents=True, exist_ok=True)
                        (out / f"{variant.replace(':', 'of')}.csv.gz").write_bytes(gzip.compress(table.read_bytes()))
            largest = figures["runs"][-1]
            figures[f"{variant}_seconds"] = largest["seconds"]
            per_block = largest["seconds"] / largest["blocks"]
            print(f"{variant}: 32 blocks at {per_block:.1f} s a block: {32 * per_block / 60:.1f} min")
            if not args.keep:
                shutil.rmtree(shards)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    if args.out:
        (Path(args.out) / "analyze_llm.json").write_text(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
