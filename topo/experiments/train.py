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
from collections.abc import Callable, Mapping, Sequence
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
from topo.experiments import TRAIN_METHODS
from topo.experiments.data import DATASETS, Dataset, load_dataset, shaped_for
from topo.experiments.models import MODELS, VAE, ModelSpec, get_model_spec
from topo.record import Recorder, RunReader, restore_checkpoint
from topo.record.lock import run_lock
from topo.sparsity import DISTRIBUTIONS, FixedMask, make_sparsifier, match_budget
from topo.sparsity.base import Sparsifier

log = logging.getLogger(__name__)



def default_prune_epoch(epochs: int) -> int:
    """Magnitude pruning's default: after two thirds of the epochs (0-based index), then fine-tune the rest."""
    return max(0, (2 * epochs) // 3 - 1)


#: Why random-channelwise fails on a model without convolutions, naming the models that have them.
CHANNELWISE_NEEDS_CONV = ("random-channelwise is the convolutional control: use it with "
                          + ", ".join(name for name, spec in MODELS.items() if spec.convolutional))


@dataclass
class TrainConfig:
    """Everything that defines a training run (serialised into ``run.json``).

    ``log_alpha`` is −log10 α as in Table 2 (0.5 → α ≈ 0.316). ``None`` fields take the Table 1 value of the
    model. ``max_batches`` caps the training batches per epoch and ``val_max_batches`` the validation batches
    (of 1024 examples), for quick trials and for long corpora on slow machines. ``keep_weights`` also stores every
    snapshot's weights (float16), which weighted measures over training need; it changes nothing trained.
    ``match_budget=False`` trains a sparse method on the dense baseline's own widths (same neurons, fewer
    weights: the comparison one-shot pruning makes) instead of Section 4's budget-matched wider ones.
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
    distribution: str = "uniform"
    dense_first_last: bool = False
    method_options: dict[str, Any] = field(default_factory=dict)
    keep_weights: bool = False
    match_budget: bool = True

    def __post_init__(self) -> None:
        """Accept Table 1's "model-dataset" names (``mlp-mnist``, ``cnn-cifar10``, ``mlp-fashion-mnist``)."""
        name, _, dataset = self.model.partition("-")
        if self.model not in MODELS and name in MODELS and dataset in DATASETS:
            if self.dataset not in (None, dataset):
                raise ConfigError(f"--model {self.model} names dataset {dataset!r} but --dataset is {self.dataset!r}")
            self.model, self.dataset = name, dataset

    def validate(self) -> None:
        """Raise a :class:`~topo.errors.ConfigError` naming the first invalid field: an unknown method or
        distribution, −log α not positive, channel-wise sparsity of a model without convolutions, budget matching
        of a model whose heads cannot split, epochs, patience or learning rate out of range, a pruning schedule that
        leaves no epoch to fine-tune."""
        spec = get_model_spec(self.model)
        if self.method not in TRAIN_METHODS:
            raise ConfigError(f"unknown method {self.method!r}; valid: {', '.join(TRAIN_METHODS)}")
        if not self.log_alpha > 0 and self.method not in ("dense",):
            raise ConfigError(f"--log-alpha must be > 0 (α = 10^-log_alpha < 1), got {self.log_alpha}")
        if self.method == "random-channelwise" and not spec.convolutional:
            raise ConfigError(CHANNELWISE_NEEDS_CONV)
        if not spec.matchable and self.match_budget and self.method != "dense":
            raise ConfigError(f"{self.model}: budget matching would give widths its attention heads cannot split; "
                              "train its sparse methods on the dense widths (--same-widths, match_budget=False)")
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        for name in ("batch_size", "max_batches", "val_max_batches", "patience", "adapt_every"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if not self.lr > 0:
            raise ConfigError(f"--lr must be > 0, got {self.lr}")
        if self.distribution not in DISTRIBUTIONS:
            raise ConfigError(f"unknown --distribution {self.distribution!r}; valid: {', '.join(DISTRIBUTIONS)}")
        if self.method == "pruning":
            epochs = self.epochs or spec.epochs
            last = max(self.prune_after or [default_prune_epoch(epochs)])
            if last >= epochs - 1:
                raise ConfigError(f"pruning after epoch {last} of {epochs} leaves no epoch to fine-tune and score "
                                  "(no topology changes after the last epoch): train 2 epochs or more, or prune "
                                  "earlier")
        pick_device(self.device)

    @property
    def density(self) -> float:
        return 1.0 if self.method == "dense" else 10 ** -self.log_alpha

    def run_name(self) -> str:
        """The run directory's name: model, method, −log α, k for the adaptive rule, seed
        (``mlp-adaptive-la1-k0.25-s0``)."""
        if self.method == "dense":
            return f"{self.model}-dense-s{self.seed}"
        k = f"-k{self.k:g}" if self.method == "adaptive" else ""
        spread = "" if self.distribution == "uniform" else f"-{self.distribution}"
        ends = "-dfl" if self.dense_first_last else ""
        same = "" if self.match_budget else "-same"
        return f"{self.model}-{self.method}-la{self.log_alpha:g}{k}{spread}{ends}{same}-s{self.seed}"


@dataclass
class TrainResult:
    """Where a run was recorded and its per-epoch history (train, validation and test loss and accuracy)."""

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


def model_factory(spec: ModelSpec, data: Dataset) -> Callable[[Sequence[int]], nn.Module]:
    """``build(widths)``: the model of ``spec`` for ``data``'s input and output sizes, at the given hidden widths."""
    if spec.name == "vae":
        latent = 10
        return lambda widths: VAE([widths[0], latent, widths[-1]], n_in=data.n_in, n_out=data.n_in)
    if spec.name == "cnn":
        return lambda widths: spec.build(list(widths), n_in=data.n_in, n_out=data.n_out,
                                         image_size=data.image_shape[1:])
    return lambda widths: spec.build(list(widths), n_in=data.n_in, n_out=data.n_out)


def resolve_widths(config: TrainConfig, spec: ModelSpec, data: Dataset) -> list[int]:
    """Base widths for the dense baseline (and with ``match_budget`` off); budget-matched widths for every other
    method (Section 4)."""
    base = list(config.widths or spec.widths)
    if spec.name == "vae":
        base = [base[0], base[-1]]
    if config.method == "dense" or not config.match_budget:
        widths = base
    else:
        widths = match_budget(model_factory(spec, data), base, config.density,
                              dense_first_last=config.dense_first_last).widths
    return [widths[0], 10, widths[-1]] if spec.name == "vae" else widths


def _make_optimizer(spec: ModelSpec, model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if spec.optimizer == "rmsprop":
        return torch.optim.RMSprop(model.parameters(), lr=config.lr, weight_decay=spec.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=spec.weight_decay)


def make_sparsifier_for(
    config: TrainConfig, spec: ModelSpec, model: nn.Module, optimizer: torch.optim.Optimizer, epochs: int,
    masks: Mapping[str, torch.Tensor] | None = None, *, steps_per_epoch: int = 1,
    first_batch: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> Sparsifier:
    """The method object of ``config`` (or a :class:`FixedMask` of ``masks``, for a transplant).

    RigL's T_end is 75 % of ``epochs`` × ``steps_per_epoch``; SNIP scores connections on ``first_batch`` with the
    model's own loss. ``config.method_options`` reaches the method (ζ, α_drop, ΔT, …).
    """
    if masks is not None:
        return FixedMask(model, optimizer, masks=dict(masks), seed=config.seed)
    if config.method in ("dense", "wide-dense"):
        return make_sparsifier("dense", model, optimizer, seed=config.seed)
    kwargs: dict[str, Any] = {"density": config.density, "seed": config.seed, "distribution": config.distribution,
                              "dense_first_last": config.dense_first_last}
    if config.method == "adaptive":
        kwargs.update({"k": config.k, "every": config.adapt_every or spec.adapt_every, **config.adaptive})
    if config.method == "pruning":
        kwargs["prune_after"] = config.prune_after or [default_prune_epoch(epochs)]
    if config.method == "set":
        kwargs["every"] = config.adapt_every or 1
    if config.method in ("rigl", "srigl"):
        kwargs["total_steps"] = epochs * steps_per_epoch
    if config.method == "snip":
        kwargs.update(batch=first_batch, loss=lambda net, batch: _loss_and_correct(spec, net, *batch)[0])
    return make_sparsifier(config.method, model, optimizer, **{**kwargs, **config.method_options})


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


#: Version of the evaluation protocol recorded in ``run.json``: 3 = each epoch is scored and snapshotted with the
#: weights the optimizer trained, before that epoch's topology change, and no topology change follows the last
#: epoch; 2 = validation held out from training (scores taken after the epoch's change); 1 = the test split was
#: the validation split.
PROTOCOL = 3
#: Per-layer columns of ``stats.csv`` (the rest are per run: losses and accuracies).
LAYER_COLUMNS = ("layer", "active", "total", "density", "mean_abs", "low_0.1", "low_0.25", "low_0.5", "pruned",
                 "grown")
#: ``TrainConfig`` fields that do not change what a run computes: where data and devices are.
NOT_DEFINING = ("device", "data_dir", "keep_weights")


@dataclass
class Session:
    """Everything one training run is made of, built from its configuration (:func:`setup`)."""

    config: TrainConfig
    spec: ModelSpec
    data: Dataset
    device: torch.device
    rank: int
    world: int
    epochs: int
    batch_size: int
    widths: list[int]
    model: nn.Module
    net: nn.Module
    optimizer: torch.optim.Optimizer
    sparsifier: Sparsifier

    def record_config(self, parent: str | None) -> dict[str, Any]:
        """What ``run.json`` stores under ``config``: the configuration and the values it resolved to."""
        return {"train": asdict(self.config), "widths": self.widths, "dataset": self.data.name, "parent": parent,
                "epochs": self.epochs, "batch_size": self.batch_size, "protocol": PROTOCOL,
                "splits": {"train": len(self.data.train_y), "val": len(self.data.val_y),
                           "test": len(self.data.test_y)}}


def setup(config: TrainConfig, masks: Mapping[str, torch.Tensor] | None = None,
          widths: list[int] | None = None, initial_state: Mapping[str, torch.Tensor] | None = None) -> Session:
    """Data, device (and DDP rank), widths, model, optimizer and method of ``config``; the model starts from
    ``initial_state`` when given (a rewound transplant), else from its seeded initialisation."""
    config.validate()
    spec = get_model_spec(config.model)
    data = shaped_for(load_dataset(config.dataset or spec.dataset, config.data_dir), spec.inputs, spec.name,
                      spec.image_size)
    rank, world = _distributed()
    device = pick_device(config.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
    epochs = config.epochs or spec.epochs
    widths = widths or resolve_widths(config, spec, data)
    torch.manual_seed(config.seed)
    model = model_factory(spec, data)(widths)
    if initial_state is not None:
        model.load_state_dict(initial_state)
    model = model.to(device)
    net: nn.Module = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    optimizer = _make_optimizer(spec, net, config)
    batch_size = config.batch_size or spec.batch_size
    shard = math.ceil(len(data.train_x) / world)
    steps_per_epoch = min(math.ceil(shard / batch_size), config.max_batches or math.inf)
    first = (data.train_x[:batch_size].to(device), data.train_y[:batch_size].to(device))
    sparsifier = make_sparsifier_for(config, spec, model, optimizer, epochs, masks, steps_per_epoch=steps_per_epoch,
                                     first_batch=first if config.method == "snip" and masks is None else None)
    return Session(config, spec, data, device, rank, world, epochs, batch_size, widths, model, net, optimizer,
                   sparsifier)


def configuration_differences(recorded: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    """The fields that define a run's result on which ``recorded`` (a ``run.json`` config) and ``wanted`` differ.

    Every ``TrainConfig`` field counts except :data:`NOT_DEFINING`, as do the resolved widths, dataset, batch
    size and evaluation protocol; the number of epochs is left to :func:`train` (a finished run may be extended).
    Each difference reads ``"field: recorded → wanted"``.
    """
    differences = []
    old, new = dict(recorded.get("train", {})), dict(wanted["train"])
    for key in sorted(set(old) | set(new)):
        if key not in NOT_DEFINING and key != "epochs" and old.get(key) != new.get(key):
            differences.append(f"{key}: {old.get(key)!r} → {new.get(key)!r}")
    for key in ("widths", "dataset", "batch_size", "protocol", "parent"):
        if recorded.get(key) != wanted.get(key):
            differences.append(f"{key}: {recorded.get(key)!r} → {wanted.get(key)!r}")
    return differences


def _resumable(run_dir: Path, wanted: Mapping[str, Any]) -> tuple[bool, bool]:
    """Whether ``run_dir`` holds a run of this configuration, and whether it is to be extended by more epochs.

    Raises :class:`ConfigError` naming every differing field when it holds a run of another configuration, or
    when it was recorded for more epochs than asked.
    """
    if not (run_dir / "run.json").exists():
        return False, False
    meta = RunReader(run_dir).meta
    recorded = meta.get("config", {})
    differences = configuration_differences(recorded, wanted)
    recorded_epochs = int(recorded.get("epochs", 0))
    if wanted["epochs"] < recorded_epochs:
        differences.append(f"epochs: {recorded_epochs} → {wanted['epochs']}")
    if differences:
        raise ConfigError(f"{run_dir} holds a run of another configuration ({'; '.join(differences)}); choose "
                          "another name, or --fresh-dir to train this configuration into a new directory")
    extend = wanted["epochs"] > recorded_epochs
    train_config = wanted["train"]
    scheduled = train_config["method"] in ("rigl", "srigl") or (train_config["method"] == "pruning"
                                                                and train_config.get("prune_after") is None)
    if extend and scheduled:
        what = "RigL's T_end" if train_config["method"] in ("rigl", "srigl") else "the pruning epoch"
        raise ConfigError(f"{run_dir}: cannot extend from {recorded_epochs} to {wanted['epochs']} epochs: {what} "
                          "is set from the number of epochs, so the longer run would follow another schedule; "
                          "train it into a new directory")
    return True, bool(meta.get("finished")) and extend


def _defining(train_config: Mapping[str, Any], *also_ignored: str) -> dict[str, Any]:
    """The fields of a ``TrainConfig`` dict that define a run's result: all but :data:`NOT_DEFINING` (and
    ``also_ignored``)."""
    return {k: v for k, v in train_config.items() if k not in NOT_DEFINING + also_ignored}


def fresh_run_dir(run_dir: str | os.PathLike, config: TrainConfig) -> Path:
    """``run_dir`` unless it holds a run of another configuration; then the first of ``run_dir-2``, ``-3``, …
    that holds a run of exactly this configuration, or nothing."""
    run_dir = Path(run_dir)
    wanted = _defining(asdict(config))
    candidate, number = run_dir, 1
    while (candidate / "run.json").exists():
        if _defining(RunReader(candidate).meta.get("config", {}).get("train", {})) == wanted:
            return candidate
        number += 1
        candidate = run_dir.with_name(f"{run_dir.name}-{number}")
    return candidate


class EarlyStopping:
    """Stop after ``patience`` epochs without a lower validation loss (never stops with ``patience=None``)."""

    def __init__(self, patience: int | None, history: list[float] | None = None) -> None:
        self.patience = patience
        self.best, self.since_best = math.inf, 0
        for loss in history or []:
            self.update(loss)

    def update(self, val_loss: float) -> bool:
        """Record one epoch's validation loss; True when training should stop."""
        self.best, self.since_best = (val_loss, 0) if val_loss < self.best else (self.best, self.since_best + 1)
        return self.patience is not None and self.since_best >= self.patience


def train_epoch(session: Session, epoch: int, autocast: Any) -> dict[str, float]:
    """One epoch over this rank's shard of a fresh permutation; returns the training loss (and accuracy).

    The epoch's topology change (``end_epoch``) is not part of it: :func:`train` scores and records the epoch
    first."""
    s = session
    order = torch.randperm(len(s.data.train_x))[s.rank::s.world]
    loss_sum, correct, seen = 0.0, 0, 0
    for batch in order.split(s.batch_size)[: s.config.max_batches]:
        x, y = s.data.train_x[batch].to(s.device), s.data.train_y[batch].to(s.device)
        with autocast:
            loss, right = _loss_and_correct(s.spec, s.net, x, y)
        s.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        s.optimizer.step()
        s.sparsifier.step()
        loss_sum += loss.detach() * len(batch)
        correct += right.detach() if right is not None else 0
        seen += len(batch)
    metrics = {"train_loss": float(loss_sum) / seen}
    if s.spec.task == "classify":
        metrics["train_acc"] = float(correct) / seen
    return metrics


def evaluate_splits(session: Session) -> dict[str, float]:
    """Loss (and accuracy) on the validation and the test split."""
    s = session
    metrics = {}
    for split in ("val", "test"):
        loss, accuracy = evaluate(s.spec, s.model, getattr(s.data, f"{split}_x"), getattr(s.data, f"{split}_y"),
                                  s.device, max_batches=s.config.val_max_batches)
        metrics[f"{split}_loss"] = loss
        if s.spec.task == "classify":
            metrics[f"{split}_acc"] = accuracy
    return metrics


def train(
    config: TrainConfig,
    run_dir: str | os.PathLike,
    *,
    masks: Mapping[str, torch.Tensor] | None = None,
    widths: list[int] | None = None,
    parent: str | None = None,
    resume: bool = False,
    progress: bool = True,
    initial_state: Mapping[str, torch.Tensor] | None = None,
) -> TrainResult:
    """Train ``config`` and record it into ``run_dir``; returns the history.

    ``masks`` and ``widths`` fix the topology and sizes (the transplant experiment); ``parent`` is stored in
    ``run.json``. With ``resume``, a run already in ``run_dir`` continues from its last checkpoint only when its
    recorded configuration is the same (else :class:`ConfigError` names the differing fields); a finished run is
    returned as recorded, or continued when ``config`` asks for more epochs than it has. Early stopping and the
    choice of epoch use the validation split; the test split is evaluated every epoch and never selects.

    The protocol (:data:`PROTOCOL`): each epoch trains, is scored on validation and test and snapshotted (masks,
    statistics, checkpoint) with the weights the optimizer trained, and only then changes its topology
    (``end_epoch``); the last epoch changes nothing, as the SET authors' code does. A checkpoint holds the state
    before its epoch's change, which resuming makes first (:func:`topo.record.restore_checkpoint`).
    """
    session = setup(config, masks, widths, initial_state)
    run_dir = Path(run_dir)
    with run_lock(run_dir) if session.rank == 0 else contextlib.nullcontext():
        return _train_session(session, run_dir, parent, resume, progress)


def _train_session(session: Session, run_dir: Path, parent: str | None, resume: bool, progress: bool) -> TrainResult:
    config = session.config
    wanted = session.record_config(parent)
    existing, extend = _resumable(run_dir, wanted) if resume else (False, False)
    done = existing and not extend and bool(RunReader(run_dir).meta.get("finished"))
    recorder = None
    if session.rank == 0:
        recorder = Recorder(run_dir, session.sparsifier, config=wanted, resume=existing,
                            keep_weights=config.keep_weights)
        if existing:
            recorder.update_config(wanted)
    start = 0
    if existing:
        start = recorder.resume() if recorder is not None else restore_checkpoint(run_dir, session.sparsifier)
    if done:
        start = session.epochs
    autocast = (torch.autocast(session.device.type, dtype=torch.bfloat16) if config.bf16
                else contextlib.nullcontext())
    losses = RunReader(run_dir).stats.groupby("epoch")["val_loss"].first().loc[: start - 1].tolist() if start else []
    stopping = EarlyStopping(config.patience, losses)
    stopped_early = False
    bar = tqdm(range(start, session.epochs), desc=run_dir.name, unit="epoch",
               disable=not progress or session.rank != 0)
    for epoch in bar:
        metrics = {**train_epoch(session, epoch, autocast), **evaluate_splits(session),
                   "at_target": float(session.sparsifier.at_target)}
        if recorder is not None:
            recorder.snapshot(epoch, metrics, force=True)
        bar.set_postfix({k: f"{v:.4f}" for k, v in metrics.items() if k in ("train_loss", "val_loss", "val_acc")})
        if stopping.update(metrics["val_loss"]):
            log.info("early stopping after epoch %d (no improvement for %d epochs)", epoch, config.patience)
            stopped_early = True
            break
        if epoch + 1 < session.epochs:
            session.sparsifier.end_epoch(epoch)
    if recorder is not None and not done:
        recorder.flush()
        recorder.finish(epochs=int(RunReader(run_dir).epochs[-1]) + 1,
                        reason="early stopping" if stopped_early else "epochs done")
    return TrainResult(run_dir, run_history(run_dir), session.widths)


def run_history(run_dir: str | os.PathLike) -> pd.DataFrame:
    """A run's per-epoch history: one row per epoch, the run-level columns of ``stats.csv`` (losses, accuracies)."""
    stats = RunReader(run_dir).stats.groupby("epoch").first().reset_index()
    return stats.drop(columns=[c for c in LAYER_COLUMNS if c in stats])


def recorded_result(config: TrainConfig, run_dir: str | os.PathLike) -> TrainResult | None:
    """The result of ``config`` when ``run_dir`` holds it finished, without loading data or models; else None.

    A finished run counts when its recorded configuration equals ``config`` in every field that defines the
    result (:data:`NOT_DEFINING` aside) and it was trained for the epochs asked (early stopping may have ended
    it sooner).
    """
    run_dir = Path(run_dir)
    if not (run_dir / "run.json").exists():
        return None
    meta = RunReader(run_dir).meta
    recorded = meta.get("config", {})
    same = _defining(recorded.get("train", {}), "epochs") == _defining(asdict(config), "epochs")
    wanted_epochs = config.epochs or get_model_spec(config.model).epochs
    complete = bool(meta.get("finished")) and recorded.get("epochs") == wanted_epochs
    if not (same and complete and recorded.get("protocol") == PROTOCOL):
        return None
    return TrainResult(run_dir, run_history(run_dir), list(recorded.get("widths", [])))
