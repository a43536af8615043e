"""Time to analyse a Llama-shaped sharded safetensors checkpoint per head, through a magnitude backbone and as 2:4.

Usage: python bench/analyze_transformer.py [--hidden 2048] [--intermediate 5632] [--blocks 4] [--heads 16]
                                           [--fraction 0.1] [--json out.json]

Writes a synthetic bfloat16 checkpoint of ``--blocks`` Llama decoder blocks (q, k, v, o of hidden × hidden;
gate and up of intermediate × hidden; down of hidden × intermediate; random normal), sharded one block per file
with a ``model.safetensors.index.json`` and a ``config.json`` naming the heads, then times, each in a fresh
process so that its peak memory is its own:

1. ``topo analyze DIR --backbone magnitude:F --heads``: the dense model's backbone, q/k/v/o split per head;
2. the same weights pruned to 2:4 (the two largest |w| of every four inputs) and analysed as stored, ``--heads``.

Prints, for each: total time, time per matrix (the weights read: q, k, v, o, gate, up, down per block), graphs
analysed and peak resident memory, with the command line and machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

MEASURE = """
import json, resource, sys, time
from topo.analyze import analyze_checkpoint
start = time.perf_counter()
result = analyze_checkpoint(sys.argv[1], backbone=sys.argv[2] or None, heads=True, progress=False)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "graphs": len(result.table), "layers": result.table.layer.nunique(),
                  "n_m": sorted(set(result.table.get("n_m", []).dropna())) if "n_m" in result.table else [],
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def write_checkpoint(folder: Path, hidden: int, intermediate: int, blocks: int, heads: int, nm: bool) -> int:
    """The synthetic checkpoint (2:4-pruned when ``nm``); returns the number of parameters."""
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(0)
    shapes = {"self_attn.q_proj": (hidden, hidden), "self_attn.k_proj": (hidden, hidden),
              "self_attn.v_proj": (hidden, hidden), "self_attn.o_proj": (hidden, hidden),
              "mlp.gate_proj": (intermediate, hidden), "mlp.up_proj": (intermediate, hidden),
              "mlp.down_proj": (hidden, intermediate)}
    weight_map, parameters = {}, 0
    for block in range(blocks):
        tensors = {}
        for part, shape in shapes.items():
            weight = torch.randn(shape, generator=generator)
            if nm:
                keep = weight.abs().reshape(shape[0], -1, 4).topk(2, dim=-1).indices
                weight = weight * torch.zeros(shape[0], shape[1] // 4, 4).scatter_(-1, keep, 1.0).reshape(shape)
            tensors[f"model.layers.{block}.{part}.weight"] = weight.to(torch.bfloat16)
            parameters += weight.numel()
        file = f"model-{block + 1:05d}-of-{blocks:05d}.safetensors"
        save_file(tensors, str(folder / file))
        weight_map.update(dict.fromkeys(tensors, file))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "num_attention_heads": heads,
                                                    "num_key_value_heads": heads, "hidden_size": hidden,
                                                    "tie_word_embeddings": False}))
    return parameters


def measure(folder: Path, backbone: str) -> dict:
    output = subprocess.run([sys.executable, "-c", MEASURE, str(folder), backbone], capture_output=True, text=True,
                            check=True)
    return json.loads(output.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--intermediate", type=int, default=5632)
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--json", help="also write the measured figures to this JSON file")
    args = parser.parse_args()
    results = {}
    print(f"# {' '.join(sys.argv)}")
    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    for label, nm, backbone in (("magnitude backbone", False, f"magnitude:{args.fraction}"), ("2:4", True, "")):
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            parameters = write_checkpoint(Path(folder), args.hidden, args.intermediate, args.blocks, args.heads, nm)
            written = time.perf_counter() - start
            found = measure(Path(folder), backbone)
        matrices = 7 * args.blocks
        found.update(parameters=parameters, matrices=matrices, written_s=written)
        results[label] = found
        print(f"{label}: {parameters / 1e6:.0f} M bf16 parameters in {args.blocks} shards; {found['graphs']} graphs "
              f"from {matrices} matrices in {found['seconds']:.1f} s ({found['seconds'] / matrices:.2f} s per "
              f"matrix); peak resident memory {found['peak_rss_mib']:.0f} MiB"
              + (f"; N:M found: {', '.join(found['n_m'])}" if found["n_m"] else ""))
    if args.json:
        Path(args.json).write_text(json.dumps({"argv": sys.argv, **results}, indent=2))


if __name__ == "__main__":
    main()
