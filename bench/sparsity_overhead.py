"""Masked-step time / dense-step time for a CIFAR ResNet, and one adaptation pass as a fraction of an epoch.

Usage: python bench/sparsity_overhead.py [--depth 110] [--batch 128] [--dtype fp32|bf16] [--steps 30]
                                         [--methods random-fixed adaptive rigl set] [--json out.json]

Every variant runs the same model, data and Adam optimizer in one process. Rounds of ``--steps`` steps per variant
are interleaved (the order rotating from round to round), and a variant's ratio is the median over rounds of its
time over the dense time of the same round: drift in clocks or in the host's load affects both sides of each
ratio alike, which the ratio of two medians over the whole run does not achieve on a launch-bound model.

A sparse variant is a method at density 0.3: gradient masking in the
optimizer's pre-hook and weight masking after the step (``adaptive`` between its adaptations costs the same, plus
its due-check; ``rigl`` and ``set`` between their updates likewise). One update pass of ``adaptive``, ``rigl`` and
``set`` over every layer is timed on its own and compared with an epoch of CIFAR-10 (50,000 images: 391 steps at
batch 128) at the dense step time (the adaptive rule's presets run as one fused pass over all layers).

On CUDA, ``--graphs`` (the default there) also times the step captured in a CUDA graph and replayed, with CUDA
events around the replays: forward, backward, the method's gradient masking (its optimizer pre-hook) and
``Adam(capturable=True)``, then the weight masking. Host launch overhead and its noise are gone from both sides,
so the ratio says what masking costs on the device.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from topo.experiments.models import ResNet
from topo.sparsity import Adaptive, make_sparsifier


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def make(kind: str, device: torch.device, args: argparse.Namespace, seed: int = 0):
    torch.manual_seed(seed)
    model = ResNet(depth=args.depth).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    if kind == "dense":
        sp = make_sparsifier("dense", model)
    elif kind == "adaptive":
        sp = make_sparsifier("adaptive", model, opt, density=0.3, k=0.25, every=10**9)  # never adapts here
    elif kind == "rigl":
        sp = make_sparsifier("rigl", model, opt, density=0.3, delta_t=10**9, t_end=10**9)  # no update here
    else:
        sp = make_sparsifier(kind, model, opt, density=0.3)
    return model, opt, sp


def run_steps(model, opt, sp, x, y, steps, device, dtype: str) -> float:
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext()
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


def graph_step_ms(kind: str, device: torch.device, args: argparse.Namespace, x, y, replays: int = 20) -> float:
    """Milliseconds per replay of one training step captured in a CUDA graph (see the module docstring)."""
    torch.manual_seed(0)
    model = ResNet(depth=args.depth).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, capturable=True)
    sp = None if kind == "dense" else make_sparsifier(kind, model, opt, density=0.3,
                                                      **({"every": 10**9} if kind == "adaptive" else {}))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if args.dtype == "bf16" else contextlib.nullcontext()

    def step() -> None:
        with autocast:
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        if sp is not None:
            sp.masked.apply()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        step()
    graph.replay()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    stop.record()
    torch.cuda.synchronize()
    return start.elapsed_time(stop) / replays


def adaptation_pass(device: torch.device, args: argparse.Namespace, x, y, method: str) -> float:
    """Seconds for one mask update of ``method`` over every layer (gradients of one minibatch)."""
    model, opt, _ = make("dense", device, args)
    if method == "adaptive":
        sp = Adaptive(model, opt, density=0.3, k=0.25)
    else:
        sp = make_sparsifier(method, model, opt, density=0.3, **({"t_end": 10**9} if method == "rigl" else {}))
    F.cross_entropy(model(x), y).backward()
    grads = {n: p.grad.detach().float() for n, p in sp.weights.items()}
    update = {"adaptive": lambda: sp.adapt(grads), "rigl": lambda: sp.adapt(grads, 1), "set": sp.adapt}[method]
    update()
    sync(device)
    start = time.perf_counter()
    for _ in range(3):
        update()
    sync(device)
    return (time.perf_counter() - start) / 3


def main() -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=110 if cuda else 20)
    parser.add_argument("--batch", type=int, default=128 if cuda else 32)
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--steps", type=int, default=10 if cuda else 3)
    parser.add_argument("--blocks", type=int, default=15 if cuda else 5)
    parser.add_argument("--methods", nargs="+", default=["random-fixed", "adaptive", "rigl", "set"])
    parser.add_argument("--graphs", action=argparse.BooleanOptionalAction, default=cuda,
                        help="also time CUDA-graph-captured steps with CUDA events (CUDA only; default there)")
    parser.add_argument("--json", help="also write the measured figures to this JSON file")
    args = parser.parse_args()
    device = torch.device("cuda" if cuda else "cpu")
    x = torch.randn(args.batch, 3, 32, 32, device=device).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch,), device=device)
    variants = {kind: make(kind, device, args) for kind in ["dense", *args.methods]}
    for model, opt, sp in variants.values():
        run_steps(model, opt, sp, x, y, 3, device, args.dtype)
    times: dict[str, list[float]] = {kind: [] for kind in variants}
    kinds = list(variants)
    for block in range(args.blocks):
        for kind in kinds[block % len(kinds):] + kinds[: block % len(kinds)]:
            model, opt, sp = variants[kind]
            times[kind].append(run_steps(model, opt, sp, x, y, args.steps, device, args.dtype))
    median = {kind: statistics.median(t) for kind, t in times.items()}
    dense = median["dense"]
    ratio = {kind: statistics.median(t / d for t, d in zip(times[kind], times["dense"], strict=True))
             for kind in args.methods}
    passes = {m: adaptation_pass(device, args, x, y, m) for m in ("adaptive", "rigl", "set") if m in args.methods}
    adapt = passes.get("adaptive", math.nan)
    epoch = dense * 50_000 / args.batch
    name = torch.cuda.get_device_name() if cuda else platform.processor() or "cpu"

    print(f"# {' '.join(sys.argv)}")
    print(f"# device: {name}, torch {torch.__version__}, ResNet-{args.depth}, batch {args.batch}, {args.dtype}")
    print(f"dense step            {dense * 1e3:9.2f} ms  (spread over blocks {min(times['dense']) * 1e3:.2f}–"
          f"{max(times['dense']) * 1e3:.2f})")
    for kind in args.methods:
        spread = sorted(t / d for t, d in zip(times[kind], times["dense"], strict=True))
        print(f"{kind + ' step':<21} {median[kind] * 1e3:9.2f} ms   ratio to dense: {ratio[kind]:.3f} "
              f"(rounds {spread[0]:.3f}–{spread[-1]:.3f})")
    for method, seconds in passes.items():
        print(f"{method} update pass {seconds * 1e3:.1f} ms = {100 * seconds / epoch:.3f}% of a CIFAR-10 epoch")
    graphed = {}
    if args.graphs and cuda:
        rounds = {kind: [] for kind in ("dense", "random-fixed")}
        for _ in range(5):  # interleaved rounds again; each a fresh capture
            for kind in rounds:
                rounds[kind].append(graph_step_ms(kind, device, args, x, y))
        graphed = {kind: statistics.median(values) for kind, values in rounds.items()}
        graphed_ratio = statistics.median(s / d for s, d in zip(rounds["random-fixed"], rounds["dense"], strict=True))
        print(f"CUDA graph step: dense {graphed['dense']:.2f} ms, masked (random fixed) {graphed['random-fixed']:.2f} "
              f"ms, ratio {graphed_ratio:.3f} (rounds {min(rounds['random-fixed']):.2f}–"
              f"{max(rounds['random-fixed']):.2f} ms)")
        graphed["ratio"] = graphed_ratio
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"argv": sys.argv, "device": name, "torch": torch.__version__, "depth": args.depth,
                       "batch": args.batch, "dtype": args.dtype, "step_ms": {k: v * 1e3 for k, v in median.items()},
                       "ratio": ratio, "adaptation_ms": adapt * 1e3,
                       "adaptation_fraction_of_epoch": adapt / epoch,
                       "update_ms": {m: t * 1e3 for m, t in passes.items()}, "cuda_graph_ms": graphed}, handle,
                      indent=2)


if __name__ == "__main__":
    main()
