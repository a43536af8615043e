"""Masked-step time / dense-step time for a CIFAR ResNet, and one adaptation pass as a fraction of an epoch.

Usage: python bench/sparsity_overhead.py [--depth 110] [--batch 128] [--dtype fp32|bf16] [--steps 30]

Both variants run the same model, data and Adam optimizer in one process, in alternating blocks, so that clock
drift and warm-up affect them alike. "Masked" is a RandomFixed sparsifier at density 0.3: gradient masking in the
optimizer's pre-hook and weight masking after the step. The adaptation pass is Adaptive.adapt on every layer,
compared with an epoch of CIFAR-10 (50,000 images) at this step time.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from topo.experiments.models import ResNet
from topo.sparsity import Adaptive, Dense, RandomFixed


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def make(kind: str, device: torch.device, seed: int = 0):
    torch.manual_seed(seed)
    model = ResNet(depth=ARGS.depth).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sp = Dense(model, opt) if kind == "dense" else RandomFixed(model, opt, density=0.3)
    return model, opt, sp


def run_steps(model, opt, sp, x, y, steps, device) -> float:
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if ARGS.dtype == "bf16" else contextlib.nullcontext()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        with autocast:
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sp.step()
    sync(device)
    return (time.perf_counter() - start) / steps


def main() -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    x = torch.randn(ARGS.batch, 3, 32, 32, device=device).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (ARGS.batch,), device=device)
    variants = {kind: make(kind, device) for kind in ("dense", "masked")}
    for model, opt, sp in variants.values():
        run_steps(model, opt, sp, x, y, 3, device)
    times: dict[str, list[float]] = {"dense": [], "masked": []}
    for _ in range(ARGS.blocks):
        for kind, (model, opt, sp) in variants.items():
            times[kind].append(run_steps(model, opt, sp, x, y, ARGS.steps, device))
    dense, masked = statistics.median(times["dense"]), statistics.median(times["masked"])

    model, opt, _ = make("dense", device)
    adaptive = Adaptive(model, opt, density=0.3, k=0.25)
    F.cross_entropy(model(x), y).backward()
    grads = {n: p.grad.detach().clone() for n, p in adaptive.weights.items()}
    adaptive.adapt(grads)
    sync(device)
    start = time.perf_counter()
    for _ in range(3):
        adaptive.adapt(grads)
    sync(device)
    adapt = (time.perf_counter() - start) / 3
    epoch = dense * 50_000 / ARGS.batch

    print(f"# {' '.join(sys.argv)}")
    print(f"# device: {torch.cuda.get_device_name() if device.type == 'cuda' else platform.processor() or 'cpu'}, "
          f"torch {torch.__version__}, ResNet-{ARGS.depth}, batch {ARGS.batch}, {ARGS.dtype}")
    print(f"dense step   {dense * 1e3:9.2f} ms")
    print(f"masked step  {masked * 1e3:9.2f} ms")
    print(f"ratio masked/dense: {masked / dense:.3f}")
    print(f"adaptation pass {adapt * 1e3:.1f} ms = {100 * adapt / epoch:.3f}% of a CIFAR-10 epoch")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=110 if torch.cuda.is_available() else 20)
    parser.add_argument("--batch", type=int, default=128 if torch.cuda.is_available() else 32)
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--steps", type=int, default=30 if torch.cuda.is_available() else 3)
    parser.add_argument("--blocks", type=int, default=5)
    ARGS = parser.parse_args()
    main()
