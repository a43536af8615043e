"""A small recorded training run used by the crash test: python crash_train.py RUN_DIR EPOCHS DELAY [--resume]."""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
from torch import nn

from topo.experiments.data import bundled
from topo.record import Recorder
from topo.sparsity import Adaptive


def main() -> None:
    run_dir, epochs, delay = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    resume = "--resume" in sys.argv
    with np.load(bundled("digits.npz")) as f:
        x = torch.from_numpy(f["images"].reshape(-1, 64).astype(np.float32) / 16)
        y = torch.from_numpy(f["labels"].astype(np.int64))
    torch.set_num_threads(1)  # one thread: no run-to-run variation from how the work is split
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sparsifier = Adaptive(model, opt, density=0.3, k=0.5, every=1, seed=1)
    recorder = Recorder(run_dir, sparsifier, resume=resume, delta=True)
    start = recorder.resume() if resume else 0
    for epoch in range(start, epochs):
        for batch in torch.randperm(len(y)).split(128):
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sparsifier.step()
        recorder.snapshot(epoch, {"train_loss": loss.item()})  # the masks trained, before the epoch's change
        if epoch + 1 < epochs:
            sparsifier.end_epoch(epoch)
        time.sleep(delay)
    recorder.close()


if __name__ == "__main__":
    main()
