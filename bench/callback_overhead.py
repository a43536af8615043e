"""Step-time overhead of topo in Lightning (the callback) and in a hand-written loop, measured in one run.

Usage: python bench/callback_overhead.py [--width 1024] [--batch 128] [--steps 200] [--rounds 3] [--fused]
                                        [--json out.json]

An MLP (784-W-W-10) trains on random MNIST-sized batches with Adam, adaptive sparsity at density 0.1 adapting
once per epoch. Five variants, each one epoch of ``--steps`` optimizer steps (timed from the epoch's start to its
end, after every callback's epoch-end work: fit set-up and tear-down are not counted), alternated in
``--rounds`` rounds after a warm-up: a hand-written loop dense and with the sparsifier, a Lightning fit dense and with
``TopoCallback`` (sparsity only), and with ``TopoCallback`` recording every epoch (snapshots written on the
recorder's thread). Reported: each variant's seconds per step (median over rounds) and the ratios
(hand loop + topo) / (hand loop) and (Lightning + callback) / (Lightning), so the callback's own cost is read
beside what topo costs in a loop without a framework.

``--fused`` gives every variant torch's fused Adam (``fused=True``) instead of the default multi-tensor one. On a
CPU the default Adam is slower on sparse gradients than on dense ones (the square root of the zero second
moments of inactive weights costs about three times that of other numbers on the development machine's AMD
EPYC), which the fused kernel does not suffer: compare the two to see what of the masked step's cost is topo's.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
import warnings

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def _model(width: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(784, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10))


def adam(parameters, fused: bool) -> torch.optim.Optimizer:
    """Adam at lr 1e-3, fused or torch's default implementation."""
    return torch.optim.Adam(parameters, lr=1e-3, fused=True) if fused else torch.optim.Adam(parameters, lr=1e-3)


def hand_loop(width: int, data: DataLoader, sparse: bool, fused: bool = False) -> float:
    from topo.sparsity import Adaptive

    model = _model(width)
    optimizer = adam(model.parameters(), fused)
    sparsifier = Adaptive(model, optimizer, density=0.1, k=0.5, every=1) if sparse else None
    start = time.perf_counter()
    for x, y in data:
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if sparsifier is not None:
            sparsifier.step()
    if sparsifier is not None:
        sparsifier.end_epoch(0)
    return (time.perf_counter() - start) / len(data)


def lightning_fit(width: int, data: DataLoader, mode: str, run_dir: str, fused: bool = False) -> float:
    import lightning.pytorch as pl

    from topo.integrations.lightning import TopoCallback

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = _model(width)

        def training_step(self, batch, batch_idx):
            loss = nn.functional.cross_entropy(self.net(batch[0]), batch[1])
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self):
            return adam(self.parameters(), fused)

    class Clock(pl.Callback):
        """First in the list: starts at epoch start; last: stops at epoch end, after the other callbacks."""

        def __init__(self, times: dict[str, float], key: str) -> None:
            self.times, self.key = times, key

        def on_train_epoch_start(self, trainer, pl_module):
            if self.key == "start":
                self.times["start"] = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module):
            if self.key == "stop":
                self.times["stop"] = time.perf_counter()

    topo = [] if mode == "dense" else [TopoCallback(
        "adaptive", density=0.1, k=0.5, every=1, record_dir=f"{run_dir}/{time.monotonic_ns()}" if mode == "record"
        else None)]
    times: dict[str, float] = {}
    trainer = pl.Trainer(max_epochs=1, callbacks=[Clock(times, "start"), *topo, Clock(times, "stop")], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu")
    trainer.fit(Module(), data)
    if topo and topo[0].recorder is not None:
        start = time.perf_counter()
        topo[0].recorder.flush()
        times["stop"] += time.perf_counter() - start
    return (times["stop"] - times["start"]) / len(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fused", action="store_true", help="torch's fused Adam in every variant")
    parser.add_argument("--json", help="also write the measured figures to this JSON file")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch * args.steps, 784, generator=generator)
    y = torch.randint(0, 10, (len(x),), generator=generator)
    data = DataLoader(TensorDataset(x, y), batch_size=args.batch)
    run_dir = tempfile.mkdtemp(prefix="topo-bench-")
    variants = {
        "hand loop, dense": lambda: hand_loop(args.width, data, False, args.fused),
        "hand loop, topo": lambda: hand_loop(args.width, data, True, args.fused),
        "lightning, dense": lambda: lightning_fit(args.width, data, "dense", run_dir, args.fused),
        "lightning, TopoCallback": lambda: lightning_fit(args.width, data, "sparse", run_dir, args.fused),
        "lightning, TopoCallback + recorder": lambda: lightning_fit(args.width, data, "record", run_dir, args.fused),
    }
    for run in variants.values():  # warm-up
        run()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, run in variants.items():
            times[name].append(run())
    step = {name: statistics.median(values) for name, values in times.items()}
    figures = {
        "device": "cpu", "torch": torch.__version__, "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "width": args.width, "batch": args.batch, "steps": args.steps, "rounds": args.rounds, "fused": args.fused,
        "seconds_per_step": step,
        "hand_loop_ratio": step["hand loop, topo"] / step["hand loop, dense"],
        "callback_ratio": step["lightning, TopoCallback"] / step["lightning, dense"],
        "callback_with_recorder_ratio": step["lightning, TopoCallback + recorder"] / step["lightning, dense"],
        "lightning_vs_hand_loop_dense": step["lightning, dense"] / step["hand loop, dense"],
    }
    for name, seconds in step.items():
        print(f"{name:36s} {1e3 * seconds:8.2f} ms/step")
    print(f"hand loop: topo / dense                 {figures['hand_loop_ratio']:.3f}x")
    print(f"lightning: TopoCallback / dense         {figures['callback_ratio']:.3f}x")
    print(f"lightning: callback + recorder / dense  {figures['callback_with_recorder_ratio']:.3f}x")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(figures, handle, indent=2)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
