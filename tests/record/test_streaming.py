"""A checkpoint larger than the memory the analysis may use is analysed layer by layer."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import save_file

LAYERS, ROWS, COLS = 8, 2048, 4096  # 8 layers of 32 MiB: 256 MiB in all
LAYER_MB = ROWS * COLS * 4 / 2**20
LIMIT_MB = 3 * LAYER_MB + 40  # about two layers' worth, plus the graph of one layer and some slack

MEASURE = textwrap.dedent("""
    import json, resource, sys
    import torch
    from topo.analyze import analyze_checkpoint
    torch.set_num_threads(1)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = analyze_checkpoint(sys.argv[1], backbone="magnitude:0.0002", progress=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"grew_mb": peak - before, "graphs": len(result.table)}))
""")


@pytest.mark.slow
def test_sharded_checkpoint_beyond_the_memory_limit_is_analysed_layer_by_layer(tmp_path):
    generator = torch.Generator().manual_seed(0)
    weight_map = {}
    for index in range(LAYERS):
        file = f"model-{index // 2 + 1:05d}-of-{LAYERS // 2:05d}.safetensors"
        name = f"layers.{index}.weight"
        tensors = {name: torch.randn(ROWS, COLS, generator=generator)}
        if index % 2:
            tensors.update(torch.load(tmp_path / "pending.pt"))
        if index % 2 == 0:
            torch.save(tensors, tmp_path / "pending.pt")
            weight_map[name] = file
            continue
        save_file(tensors, tmp_path / file)
        weight_map[name] = file
    (tmp_path / "pending.pt").unlink()
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    total_mb = sum(f.stat().st_size for f in tmp_path.glob("*.safetensors")) / 2**20
    assert total_mb > LIMIT_MB + 60
    done = subprocess.run([sys.executable, "-c", MEASURE, str(tmp_path)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    assert measured["graphs"] == LAYERS
    assert measured["grew_mb"] < LIMIT_MB, f"peak memory grew by {measured['grew_mb']:.0f} MiB of {total_mb:.0f}"
