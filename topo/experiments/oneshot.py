"""One-shot pruning of a trained run (beyond the paper): prune once, score as pruned, fine-tune with the mask fixed.

The arm the Wanda and SparseGPT papers study, asked of a model topo trained itself: the dense run's final weights
(its ``checkpoint.pt``) are pruned by :func:`topo.sparsity.prune_oneshot` with calibration sequences drawn from
the training split, the pruned network is scored on the validation and test splits as it is, and then trained
for a few epochs with its mask held fixed (:class:`topo.sparsity.FixedMask`, as a transplant is, but starting
from the pruned weights), recorded like any run. ``oneshot.json`` in that run's directory keeps what the
fine-tuning run cannot: the dense and the pruned scores before any fine-tuning. :func:`continued_run` trains the
dense weights for the same epochs unpruned: the control a fine-tuned arm is compared with.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from topo.errors import CheckpointError, ConfigError
from topo.experiments.data import Dataset, load_dataset, shaped_for
from topo.experiments.models import get_model_spec
from topo.experiments.train import (
    TrainConfig,
    TrainResult,
    evaluate,
    model_factory,
    pick_device,
    recorded_result,
    train,
)
from topo.options import check_oneshot_options
from topo.record import RunReader
from topo.record.store import write_json
from topo.record.training_state import read_checkpoint
from topo.sparsity.oneshot import prune_oneshot

log = logging.getLogger(__name__)

#: The file beside a fine-tuning run that holds its one-shot pruning's scores.
ONESHOT_FILE = "oneshot.json"


@dataclass(frozen=True)
class OneShotResult:
    """A one-shot arm: the scores before fine-tuning (``dense_*`` of the weights pruned, ``pruned_*`` of the pruned
    network; validation and test loss, and accuracy for classifiers) and the fine-tuning run."""

    scores: dict[str, float]
    finetuned: TrainResult

    @property
    def run_dir(self) -> Path:
        return self.finetuned.run_dir


def target_name(density: float | None, structure: str | None) -> str:
    """How runs and tables name a pruning target: ``"2:4"`` or ``"d0.5"``."""
    return structure if structure is not None else f"d{density:g}"


def calibration_sequences(data: Dataset, samples: int, seed: int) -> list[torch.Tensor]:
    """``samples`` training sequences, drawn without replacement (seeded), each as a (1, length) ``input_ids``
    tensor: the calibration set the Wanda and SparseGPT authors draw from their training corpus."""
    if samples < 1:
        raise ConfigError(f"calibration samples must be >= 1, got {samples}")
    if not data.vocabulary:
        raise ConfigError(f"one-shot pruning calibrates a language model; dataset {data.name!r} is not text")
    count = min(samples, len(data.train_x))
    order = torch.randperm(len(data.train_x), generator=torch.Generator().manual_seed(seed))[:count]
    return [data.train_x[i].unsqueeze(0) for i in order.sort().values]


def _scores(prefix: str, config: TrainConfig, model: torch.nn.Module, data: Dataset,
            device: torch.device) -> dict[str, float]:
    spec = get_model_spec(config.model)
    scores = {}
    for split, x, y in (("val", data.val_x, data.val_y), ("test", data.test_x, data.test_y)):
        loss, accuracy = evaluate(spec, model, x, y, device, max_batches=config.val_max_batches)
        scores[f"{prefix}_{split}_loss"] = loss
        if spec.task == "classify":
            scores[f"{prefix}_{split}_acc"] = accuracy
    return scores


def _continuation(dense_dir: str | os.PathLike, epochs: int, lr: float | None
                  ) -> tuple[RunReader, dict[str, Any], TrainConfig]:
    """The finished dense run at ``dense_dir`` (its reader and recorded configuration) and the configuration that
    continues it for ``epochs`` epochs at ``lr`` (default a tenth of its own)."""
    if epochs < 1:
        raise ConfigError(f"fine-tuning epochs must be >= 1, got {epochs}")
    reader = RunReader(dense_dir)
    recorded = reader.meta.get("config", {})
    if "train" not in recorded:
        raise CheckpointError(f"{reader.path / 'run.json'}: not recorded by topo.experiments.train (no 'train')")
    if not reader.meta.get("finished"):
        raise CheckpointError(f"{reader.path}: the dense run has not finished; train it to the end first")
    parent_config = TrainConfig(**recorded["train"])
    if parent_config.method != "dense":
        raise ConfigError(f"{reader.path}: one-shot pruning starts from a dense run, this one is "
                          f"{parent_config.method}")
    return reader, recorded, replace(parent_config, epochs=epochs, lr=lr if lr is not None else parent_config.lr / 10)


def continued_run(dense_dir: str | os.PathLike, out_dir: str | os.PathLike, *, epochs: int = 5,
                  lr: float | None = None, progress: bool = False) -> TrainResult:
    """The control of every fine-tuned arm: the finished dense run's final weights trained ``epochs`` more epochs
    at ``lr`` (default a tenth of the run's), dense, as :func:`oneshot_run` fine-tunes a pruned copy. A fine-tuned
    arm that beats the dense run may only be training longer; against this it cannot. Read back or resumed from
    ``out_dir`` as any run."""
    reader, recorded, config = _continuation(dense_dir, epochs, lr)
    parent = f"{reader.path}@{recorded['epochs'] - 1} continued"
    finished = recorded_result(config, out_dir)
    if finished is not None:
        return finished
    state = read_checkpoint(reader.path / "checkpoint.pt")["model"]
    return train(config, out_dir, widths=recorded["widths"], parent=parent, resume=True, progress=progress,
                 initial_state=state)


def oneshot_run(
    dense_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    method: str,
    density: float | None = None,
    structure: str | None = None,
    samples: int = 64,
    finetune_epochs: int = 5,
    lr: float | None = None,
    progress: bool = False,
) -> OneShotResult:
    """Prune the final weights of the finished dense run ``dense_dir`` by ``method`` at ``density`` (or N:M
    ``structure``), score them, and fine-tune them with the mask fixed into ``out_dir``.

    Calibration: ``samples`` training sequences drawn with the dense run's seed. Fine-tuning: the dense run's
    settings for ``finetune_epochs`` epochs at learning rate ``lr`` (default a tenth of the run's), the mask of
    every pruned weight fixed; the fine-tuning run's ``parent`` names the dense run, the method and the target.
    A finished arm in ``out_dir`` is read back, not pruned again; an interrupted fine-tuning resumes.
    """
    check_oneshot_options(method, density, structure)
    reader, recorded, config = _continuation(dense_dir, finetune_epochs, lr)
    out_dir = Path(out_dir)
    parent = f"{reader.path}@{recorded['epochs'] - 1} {method} {target_name(density, structure)}"
    finished = recorded_result(config, out_dir)
    if finished is not None and (out_dir / ONESHOT_FILE).exists():
        stored = json.loads((out_dir / ONESHOT_FILE).read_text())
        if stored.get("parent") == parent:
            return OneShotResult(stored["scores"], finished)

    spec = get_model_spec(config.model)
    data = shaped_for(load_dataset(config.dataset or spec.dataset, config.data_dir), spec.inputs, spec.name,
                      spec.image_size)
    device = pick_device(config.device)
    torch.manual_seed(config.seed)
    model = model_factory(spec, data)(recorded["widths"])
    model.load_state_dict(read_checkpoint(reader.path / "checkpoint.pt")["model"])
    model = model.to(device)
    scores = _scores("dense", config, model, data, device)
    calibration = calibration_sequences(data, samples, config.seed)
    masks = prune_oneshot(model, method, calibration, density=density, structure=structure, progress=progress)
    scores.update(_scores("pruned", config, model, data, device))
    log.info("%s %s: test loss %.4g dense, %.4g pruned", method, target_name(density, structure),
             scores["dense_test_loss"], scores["pruned_test_loss"])
    pruned_state = {name: value.detach().cpu() for name, value in model.state_dict().items()}
    result = train(config, out_dir, masks=masks, widths=recorded["widths"], parent=parent, resume=True,
                   progress=progress, initial_state=pruned_state)
    details: dict[str, Any] = {"parent": parent, "method": method, "density": density, "structure": structure,
                               "calibration_samples": len(calibration), "scores": scores}
    write_json(out_dir / ONESHOT_FILE, details)
    return OneShotResult(scores, result)
