"""(Epoch time with the recorder) / (epoch time without) for a CIFAR ResNet, measured in one run.

Usage: python bench/recorder_overhead.py [--depth 110] [--batch 128] [--steps 391] [--json out.json]

One "epoch" is ``--steps`` training steps (391 = CIFAR-10's 50,000 images at batch 128) of an adaptive sparse
ResNet on random CIFAR-sized inputs. The recorded variant ends each epoch with ``Recorder.snapshot`` (masks,
stats, checkpoint.pt; the files are written on the recorder's background thread while the next epoch trains).
Epochs alternate between the variants (recorded first) after a short warm-up, so each unrecorded epoch also
carries whatever the writer thread still does for the epoch before it; the recorder's final flush is added to
the recorded total. The ratio is total recorded time / total unrecorded time over ``--epochs`` pairs. Also
timed: one snapshot on the calling thread, and the same snapshot written synchronously
(``background=False``), i.e. what the recorder costs without its writer thread.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

from topo.experiments.models import ResNet
from topo.record import Recorder
from topo.sparsity import Adaptive


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cuda = torch.cuda.is_available()
    parser.add_argument("--depth", type=int, default=110 if cuda else 20)
    parser.add_argument("--batch", type=int, default=128 if cuda else 32)
    parser.add_argument("--steps", type=int, default=391 if cuda else 10)
    parser.add_argument("--epochs", type=int, default=2, help="pairs of epochs (recorded, unrecorded)")
    parser.add_argument("--json", help="also write the measured figures to this JSON file")
    args = parser.parse_args()
    device = torch.device("cuda" if cuda else "cpu")
    torch.manual_seed(0)
    model = ResNet(depth=args.depth).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sparsifier = Adaptive(model, opt, density=0.3, k=0.25, every=1)
    x = torch.randn(args.batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    run_dir = tempfile.mkdtemp(prefix="topo-bench-")
    recorder = Recorder(f"{run_dir}/run", sparsifier)

    def epoch(index: int, record: bool) -> float:
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(args.steps):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sparsifier.step()
        if record:
            recorder.snapshot(index, {"train_loss": loss.item()})
        else:
            loss.item()
        sparsifier.end_epoch(index)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    steps = args.steps
    args.steps = min(steps, 20)
    epoch(0, True)  # warm-up: kernels, cuDNN's choices, the first write
    args.steps = steps
    totals = {True: 0.0, False: 0.0}
    seconds = []
    for index in range(1, 2 * args.epochs + 1):
        record = index % 2 == 1
        seconds.append(epoch(index, record))
        totals[record] += seconds[-1]
    start = time.perf_counter()
    recorder.flush()
    totals[True] += time.perf_counter() - start
    with_rec, without = totals[True] / args.epochs, totals[False] / args.epochs
    snapshot_start = time.perf_counter()
    recorder.snapshot(10_000)
    snapshot_time = time.perf_counter() - snapshot_start
    recorder.flush()
    recorder.close()
    synchronous = Recorder(f"{run_dir}/sync", sparsifier, background=False)
    sync_start = time.perf_counter()
    synchronous.snapshot(10_001)
    sync_time = time.perf_counter() - sync_start
    print(f"# {' '.join(sys.argv)}")
    print(f"# device: {torch.cuda.get_device_name() if cuda else platform.machine()}, torch {torch.__version__}, "
          f"ResNet-{args.depth}, batch {args.batch}, {args.steps} steps per epoch")
    print(f"epoch without recorder {without:8.3f} s")
    print(f"epoch with recorder    {with_rec:8.3f} s   (one snapshot on the training thread: {snapshot_time:.3f} s; "
          f"written synchronously: {sync_time:.3f} s)")
    print("each pair (recorded, unrecorded): " + ", ".join(
        f"({seconds[i]:.3f}, {seconds[i + 1]:.3f})" for i in range(0, len(seconds), 2)))
    print(f"ratio with/without: {with_rec / without:.4f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"argv": sys.argv, "device": torch.cuda.get_device_name() if cuda else platform.machine(),
                       "depth": args.depth, "batch": args.batch, "steps": args.steps, "epoch_s": without,
                       "epoch_recorded_s": with_rec, "snapshot_s": snapshot_time, "snapshot_synchronous_s": sync_time,
                       "epochs_s": seconds,
                       "ratio": with_rec / without},
                      handle, indent=2)


if __name__ == "__main__":
    main()
