"""One training loop for every Table 1 model and every method, recorded into a run directory.

Defaults follow Section 4: Adam, learning rate 0.001, batch 128 (the VAE: RMSProp, batch 256), adaptation every
N epochs as in Table 1, g = s = ∞, β = 1, Cg = 0, r = 2kW̄. Sparse methods run on budget-matched widths (the
non-zero count of the dense baseline, :func:`topo.sparsity.match_budget`); ``wide-dense`` is the dense method
on those same widths. Under ``torchrun`` the loop uses DistributedDataParallel: each rank trains on its shard
of every epoch's permutation, masks are rank 0's, and only rank 0 records.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from topo.errors import ConfigError
from topo.experiments.data import DATASETS, Dataset, load_dataset, shaped_for
from topo.experiments.models import MODELS, VAE, ModelSpec, get_model_spec
from topo.record import Recorder, RunReader, restore_checkpoint
from topo.sparsity import FixedMask, make_sparsifier, match_budget
from topo.sparsity.base import Sparsifier

log = logging.getLogger(__name__)

TRAIN_METHODS = ("dense", "wide-dense", "random-fixed", "random-channelwise", "adaptive", "pruning")


@dataclass
class TrainConfig:
    """Everything that defines a training run (serialised into ``run.json``).

    ``log_alpha`` is −log10 α as in Table 2 (0.5 → α ≈ 0.316). ``None`` fields take the Table 1 value of the
    model. ``max_batches`` caps the training batches per epoch and ``val_max_batches`` the validation batches
    (of 1024 examples), for quick trials and for long corpora on slow machines.
    """

    model: str = "mlp"
    method: str = "adaptive"
    dataset: str | None = None
    log_alpha: float = 0.5
    k: float = 0.5
    epochs: int | None = None
    batch_size: int | None = None
    lr: float = 1e-3
    adapt_every: int | None = None
    prune_after: list[int] | None = None
    seed: int = 0
    widths: list[int] | None = None
    device: str = "auto"
    bf16: bool = False
    patience: int | None = None
    data_dir: str | None = None
    max_batches: int | None = None
    val_max_batches: int | None = None
    adaptive: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Accept Table 1's "model-dataset" names (``mlp-mnist``, ``cnn-cifar10``, ``mlp-fashion-mnist``)."""
        name, _, dataset = self.model.partition("-")
        if self.model not in MODELS and name in MODELS and dataset in DATASETS:
            if self.dataset not in (None, dataset):
                raise ConfigError(f"--model {self.model} names dataset {dataset!r} but --dataset is {self.dataset!r}")
            self.model, self.dataset = name, dataset

    def validate(self) -> None:
        spec = get_model_spec(self.model)
        if self.method not in TRAIN_METHODS:
            raise ConfigError(f"unknown method {self.method!r}; valid: {', '.join(TRAIN_METHODS)}")
        if not self.log_alpha > 0 and self.method not in ("dense",):
            raise ConfigError(f"--log-alpha must be > 0 (α = 10^-log_alpha < 1), got {self.log_alpha}")
        if self.method == "random-channelwise" and not spec.convolutional:
            raise ConfigError("random-channelwise is the convolutional control: use it with cnn or resnet110")
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        for name in ("batch_size", "max_batches", "val_max_batches", "patience", "adapt_every"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if not self.lr > 0:
            raise ConfigError(f"--lr must be > 0, got {self.lr}")

    @property
    def density(self) -> float:
        return 1.0 if self.method == "dense" else 10 ** -self.log_alpha

    def run_name(self) -> str:
        if self.method == "dense":
            return f"{self.model}-dense-s{self.seed}"
        k = f"-k{self.k:g}" if self.method == "adaptive" else ""
        return f"{self.model}-{self.method}-la{self.log_alpha:g}{k}-s{self.seed}"


@dataclass
class TrainResult:
    """Where a run was recorded and its per-epoch history (train/validation loss and accuracy)."""

    run_dir: Path
    history: pd.DataFrame
    widths: list[int]

    @property
    def final(self) -> dict[str, float]:
        return self.history.iloc[-1].to_dict()


def pick_device(name: str = "auto") -> torch.device:
    """CUDA when present (for ``"auto"``), else the CPU; or the device named, checked to exist here.

    Raises :class:`ConfigError` naming the device for a name torch does not know, or a device this machine or
    PyTorch build does not have.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device {name!r} is not a device; valid: auto, cpu, cuda, cuda:N, mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r}: this PyTorch build ({torch.__version__}) or machine has no CUDA; "
                              "use cpu, or install a CUDA build of PyTorch")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {name!r}: MPS is not available on this machine")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device {name!r}: topo runs on cpu, cuda or mps")
    return device


def _factory(spec: ModelSpec, data: Dataset):
    if spec.name == "vae":
        latent = 10
        return lambda widths: VAE([widths[0], latent, widths[-1]], n_in=data.n_in, n_out=data.n_in)
    if spec.name == "cnn":
        return lambda widths: spec.build(list(widths), n_in=data.n_in, n_out=data.n_out,
                                         image_size=data.image_shape[1:])
    return lambda widths: spec.build(list(widths), n_in=data.n_in, n_out=data.n_out)


def resolve_widths(config: TrainConfig, spec: ModelSpec, data: Dataset) -> list[int]:
    """Base widths for the dense baseline; budget-matched widths for every other method (Section 4)."""
    base = list(config.widths or spec.widths)
    if spec.name == "vae":
        base = [base[0], base[-1]]
    if config.method == "dense":
        widths = base
    else:
        widths = match_budget(_factory(spec, data), base, config.density).widths
    return [widths[0], 10, widths[-1]] if spec.name == "vae" else widths


def _make_optimizer(spec: ModelSpec, model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if spec.optimizer == "rmsprop":
        return torch.optim.RMSprop(model.parameters(), lr=config.lr, weight_decay=spec.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=spec.weight_decay)


def make_sparsifier_for(
    config: TrainConfig, spec: ModelSpec, model: nn.Module, optimizer: torch.optim.Optimizer, epochs: int,
    masks: Mapping[str, torch.Tensor] | None = None,
) -> Sparsifier:
    """The method object of ``config`` (or a :class:`FixedMask` of ``masks``, for a transplant)."""
    if masks is not None:
        return FixedMask(model, optimizer, masks=dict(masks), seed=config.seed)
    if config.method in ("dense", "wide-dense"):
        return make_sparsifier("dense", model, optimizer, seed=config.seed)
    kwargs: dict[str, Any] = {"density": config.density, "seed": config.seed}
    if config.method == "adaptive":
        kwargs.update({"k": config.k, "every": config.adapt_every or spec.adapt_every, **config.adaptive})
    if config.method == "pruning":
        kwargs["prune_after"] = config.prune_after or [max(0, (2 * epochs) // 3 - 1)]
    return make_sparsifier(config.method, model, optimizer, **kwargs)


def _loss_and_correct(spec: ModelSpec, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    if spec.task == "vae":
        return model(x).mean(), None
    logits = model(x)
    if spec.task == "language":
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)), None
    return F.cross_entropy(logits, y), (logits.argmax(1) == y).sum()


@torch.no_grad()
def evaluate(spec: ModelSpec, model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device,
             batch_size: int = 1024, max_batches: int | None = None) -> tuple[float, float]:
    """(mean loss, accuracy or NaN) over a dataset split (its first ``max_batches`` batches when given)."""
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    for start in list(range(0, len(x), batch_size))[:max_batches]:
        xb, yb = x[start : start + batch_size].to(device), y[start : start + batch_size].to(device)
        loss, right = _loss_and_correct(spec, model, xb, yb)
        total_loss += float(loss) * len(xb)
        correct += int(right) if right is not None else 0
        count += len(xb)
    model.train()
    accuracy = correct / count if spec.task == "classify" else math.nan
    return total_loss / count, accuracy


def _distributed() -> tuple[int, int]:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def train(
    config: TrainConfig,
    run_dir: str | os.PathLike,
    *,
    masks: Mapping[str, torch.Tensor] | None = None,
    widths: list[int] | None = None,
    parent: str | None = None,
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train ``config`` and record it into ``run_dir``; returns the history.

    ``masks`` and ``widths`` fix the topology and sizes (the transplant experiment); ``parent`` is stored in
    ``run.json``. With ``resume``, an interrupted run continues from its last checkpoint and a finished run
    (``run.json`` has ``finished``) is returned as recorded, without training.
    """
    config.validate()
    spec = get_model_spec(config.model)
    data = shaped_for(load_dataset(config.dataset or spec.dataset, config.data_dir), spec.inputs, spec.name)
    rank, world = _distributed()
    device = pick_device(config.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
    epochs = config.epochs or spec.epochs
    batch_size = config.batch_size or spec.batch_size
    widths = widths or resolve_widths(config, spec, data)

    torch.manual_seed(config.seed)
    model = _factory(spec, data)(widths).to(device)
    net: nn.Module = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    optimizer = _make_optimizer(spec, net, config)
    sparsifier = make_sparsifier_for(config, spec, model, optimizer, epochs, masks)
    record_config = {"train": asdict(config), "widths": widths, "dataset": data.name, "parent": parent,
                     "epochs": epochs, "batch_size": batch_size}
    recorder = Recorder(run_dir, sparsifier, config=record_config, resume=resume) if rank == 0 else None
    start = 0
    if resume:
        start = recorder.resume() if recorder is not None else restore_checkpoint(run_dir, sparsifier)
    finished = resume and (Path(run_dir) / "run.json").exists() and bool(RunReader(run_dir).meta.get("finished"))
    if finished:
        start = epochs
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if config.bf16 else contextlib.nullcontext())

    best, since_best, stopped_early = math.inf, 0, False
    if start and not finished:  # early stopping picks up where the interrupted run was
        losses = RunReader(run_dir).stats.groupby("epoch")["val_loss"].first().loc[: start - 1].tolist()
        best = min(losses)
        since_best = len(losses) - 1 - losses.index(best)
    bar = tqdm(range(start, epochs), desc=Path(run_dir).name, unit="epoch", disable=not progress or rank != 0)
    for epoch in bar:
        order = torch.randperm(len(data.train_x))[rank::world]
        batches = order.split(batch_size)[: config.max_batches]
        loss_sum, correct, seen = 0.0, 0, 0
        for batch in batches:
            x, y = data.train_x[batch].to(device), data.train_y[batch].to(device)
            with autocast:
                loss, right = _loss_and_correct(spec, net, x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sparsifier.step()
            loss_sum += loss.detach() * len(batch)
            correct += right.detach() if right is not None else 0
            seen += len(batch)
        sparsifier.end_epoch(epoch)
        val_loss, val_acc = evaluate(spec, model, data.val_x, data.val_y, device,
                                     max_batches=config.val_max_batches)
        metrics = {"train_loss": float(loss_sum) / seen, "val_loss": val_loss}
        if spec.task == "classify":
            metrics.update(train_acc=float(correct) / seen, val_acc=val_acc)
        if recorder is not None:
            recorder.snapshot(epoch, metrics, force=True)
        bar.set_postfix({k: f"{v:.4f}" for k, v in metrics.items()})
        if config.patience is not None:
            best, since_best = (val_loss, 0) if val_loss < best else (best, since_best + 1)
            if since_best >= config.patience:
                log.info("early stopping after epoch %d (no improvement for %d epochs)", epoch, config.patience)
                stopped_early = True
                break
    if recorder is not None and not finished:
        recorder.flush()
        recorder.finish(epochs=int(RunReader(run_dir).epochs[-1]) + 1,
                        reason="early stopping" if stopped_early else "epochs done")
    history = (RunReader(run_dir).stats.groupby("epoch").first().reset_index()
               .drop(columns=["layer", "active", "total", "density", "mean_abs", "low_0.1", "low_0.25", "low_0.5",
                              "pruned", "grown"]))
    return TrainResult(Path(run_dir), history, widths)
