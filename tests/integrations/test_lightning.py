"""The Lightning callback: precisions, accumulation, clipping, exact resume from Lightning checkpoints, bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from topo.cli import main as cli_main
from topo.errors import ConfigError
from topo.integrations.attach import unwrap
from topo.record import RunReader

pl = pytest.importorskip("lightning.pytorch", reason="the test extra installs lightning")
from topo.integrations.lightning import TopoCallback  # noqa: E402

warnings.filterwarnings("ignore", module="lightning")


class Classifier(pl.LightningModule):
    """A small MLP on the bundled digits; records what gradient clipping saw."""

    def __init__(self, optimizer: str = "adam") -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10))
        self.optimizer = optimizer
        self.clipped_inactive: list[float] = []
        self.topo: TopoCallback | None = None

    def training_step(self, batch, batch_idx):
        loss = nn.functional.cross_entropy(self.net(batch[0]), batch[1])
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", nn.functional.cross_entropy(self.net(batch[0]), batch[1]))

    def configure_optimizers(self):
        if self.optimizer == "lbfgs":
            return torch.optim.LBFGS(self.parameters())
        return torch.optim.Adam(self.parameters(), lr=1e-2, weight_decay=1e-4)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        if self.topo is not None:
            sparsifier = self.topo.sparsifier
            self.clipped_inactive.append(max(float(p.grad[~sparsifier.masks[n]].abs().sum())
                                             for n, p in sparsifier.weights.items()))
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)


class InactiveStayZero(pl.Callback):
    """After every optimizer step, checks that every inactive weight is exactly zero."""

    def __init__(self, topo: TopoCallback) -> None:
        self.topo, self.steps, self.violations = topo, 0, []

    def on_fit_start(self, trainer, pl_module):
        def check(optimizer, args, kwargs):
            self.steps += 1
            for name, weight in self.topo.sparsifier.weights.items():
                if torch.count_nonzero(weight.detach()[~self.topo.sparsifier.masks[name]]):
                    self.violations.append((self.steps, name))

        unwrap(trainer.optimizers[0]).register_step_post_hook(check)


def _data(digits, validation: bool = False):
    x, y = digits
    train = DataLoader(TensorDataset(x[:1024], y[:1024]), batch_size=64)
    return (train, DataLoader(TensorDataset(x[1024:1280], y[1024:1280]), batch_size=256)) if validation else (train,)


def _trainer(callbacks, **kwargs):
    options = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
               "enable_model_summary": False, "accelerator": "cpu", "devices": 1}
    return pl.Trainer(callbacks=callbacks, **{**options, **kwargs})


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "16-mixed"])
def test_fit_records_a_run_keeps_inactive_weights_zero_and_clips_masked_gradients(digits, tmp_path, precision):
    module = Classifier()
    topo = TopoCallback("adaptive", density=0.3, record_dir=tmp_path / "run", k=0.5, every=1)
    module.topo = topo
    checker = InactiveStayZero(topo)
    _trainer([topo, checker], max_epochs=3, precision=precision, accumulate_grad_batches=2,
             gradient_clip_val=0.5).fit(module, *_data(digits))
    assert checker.steps == 3 * 8  # 16 batches an epoch, accumulated in pairs
    assert checker.violations == []
    assert module.clipped_inactive and max(module.clipped_inactive) == 0.0
    reader = RunReader(tmp_path / "run")
    assert reader.epochs == [0, 1, 2] and reader.meta["finished"]["epochs"] == 3
    assert topo.sparsifier.step_count == 24
    assert abs(reader.stats[reader.stats.epoch == 2].density.mean() - 0.3) < 0.01
    assert cli_main(["--quiet", "analyze", str(tmp_path / "run"), "--csv", str(tmp_path / "table.csv")]) == 0
    table = pd.read_csv(tmp_path / "table.csv")
    assert {"algebraic_connectivity", "turnover", "exploration"} <= set(table.metric)
    assert "train_loss" in reader.stats


@pytest.mark.parametrize("at_train_epoch_end", [True, False], ids=["saved-at-epoch-end", "saved-at-validation-end"])
def test_resume_from_a_lightning_checkpoint_gives_the_uninterrupted_masks(digits, tmp_path, at_train_epoch_end):
    checkpoints = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1,
                                               filename="{epoch}", save_on_train_epoch_end=at_train_epoch_end)
    whole = TopoCallback("set", density=0.3, record_dir=tmp_path / "whole", zeta=0.3)
    _trainer([whole], max_epochs=4, num_sanity_val_steps=0).fit(Classifier(), *_data(digits, validation=True))

    interrupted = TopoCallback("set", density=0.3, record_dir=tmp_path / "resumed", zeta=0.3)
    _trainer([interrupted, checkpoints], max_epochs=3, enable_checkpointing=True,
             num_sanity_val_steps=0).fit(Classifier(), *_data(digits, validation=True))
    resumed = TopoCallback("set", density=0.3, record_dir=tmp_path / "resumed", zeta=0.3)
    _trainer([resumed, checkpoints], max_epochs=4, enable_checkpointing=True, num_sanity_val_steps=0).fit(
        Classifier(), *_data(digits, validation=True), ckpt_path=tmp_path / "ckpt" / "epoch=1.ckpt")

    for name, mask in whole.sparsifier.masks.items():
        assert torch.equal(mask, resumed.sparsifier.masks[name]), name
        assert torch.equal(whole.sparsifier.weights[name], resumed.sparsifier.weights[name]), name
    a, b = RunReader(tmp_path / "whole"), RunReader(tmp_path / "resumed")
    assert a.epochs == b.epochs == [0, 1, 2, 3]
    for epoch in a.epochs:
        for name, mask in a.masks(epoch).items():
            np.testing.assert_array_equal(mask, b.masks(epoch)[name], err_msg=f"{name} epoch {epoch}")
    assert b.stats.groupby("layer").epoch.apply(list).map(lambda e: e == [0, 1, 2, 3]).all()
    assert whole.sparsifier.pop_changes() == resumed.sparsifier.pop_changes()


def test_a_fit_after_a_resumed_fit_keeps_the_current_masks_not_the_checkpoints(digits, tmp_path):
    checkpoints = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1,
                                               filename="{epoch}")
    _trainer([TopoCallback("set", density=0.3, zeta=0.3), checkpoints], max_epochs=2, enable_checkpointing=True,
             num_sanity_val_steps=0).fit(Classifier(), *_data(digits, validation=True))
    module, topo = Classifier(), TopoCallback("set", density=0.3, zeta=0.3)
    _trainer([topo], max_epochs=4, num_sanity_val_steps=0).fit(module, *_data(digits, validation=True),
                                                               ckpt_path=tmp_path / "ckpt" / "epoch=0.ckpt")
    after = {n: m.clone() for n, m in topo.sparsifier.masks.items()}
    weights = {n: w.detach().clone() for n, w in topo.sparsifier.weights.items()}
    seen = {}

    class AtStart(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            seen.setdefault("masks", {n: m.clone() for n, m in topo.sparsifier.masks.items()})

    _trainer([topo, AtStart()], max_epochs=1).fit(module, *_data(digits))
    assert all(torch.equal(after[n], seen["masks"][n]) for n in after)
    for name, weight in topo.sparsifier.weights.items():  # trained on from where the resumed fit ended
        assert torch.count_nonzero(weight.detach()[~after[name]]) == 0 and not torch.equal(weight, weights[name])


def test_tensorboard_logger_of_the_trainer_receives_the_live_metrics(digits, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = pl.loggers.TensorBoardLogger(tmp_path / "tb", name="", version="")
    topo = TopoCallback("rigl", density=0.2, record_dir=tmp_path / "run", tensorboard=True, delta_t=5)
    _trainer([topo], max_epochs=2, logger=logger).fit(Classifier(), *_data(digits))
    events = EventAccumulator(str(tmp_path / "tb")).Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"topo/net.0.weight/algebraic_connectivity", "topo/net.0.weight/mask_density", "topo/net.2.weight/low_0.1",
            "topo/net.0.weight/exploration", "topo/run/train_loss"} <= scalars
    assert "topo/net.0.weight/mask" in events.Tags()["images"]
    density = events.Scalars("topo/net.0.weight/mask_density")
    assert [e.step for e in density] == [0, 1] and all(abs(e.value - 0.2) < 0.01 for e in density)


class NoLayers(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(10, 4)

    def training_step(self, batch, batch_idx):
        return self.embedding(batch[0].long().clamp(0, 9)).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize(("module", "message"), [
    (NoLayers, "NoLayers has no sparsifiable weights"),
    (lambda: Classifier(optimizer="lbfgs"), "LBFGS re-evaluates the model inside step"),
])
def test_bad_modules_fail_at_fit_start_with_one_clear_error(digits, tmp_path, module, message):
    topo = TopoCallback("adaptive", density=0.3)
    batches = []

    class Count(pl.Callback):
        def on_train_batch_start(self, *args):
            batches.append(1)

    with pytest.raises(ConfigError, match=message):
        _trainer([topo, Count()], max_epochs=1).fit(module(), *_data(digits))
    assert batches == []


def test_unknown_method_or_density_fail_when_the_callback_is_made():
    with pytest.raises(ConfigError, match="unknown sparsity method 'sett'; valid: .*rigl.*set"):
        TopoCallback("sett")
    with pytest.raises(ConfigError, match="density must be in"):
        TopoCallback("set", density=1.5)


class RanksAgree(pl.Callback):
    """Under DDP, checks after every epoch that each rank's masks and sparsified weights equal rank 0's."""

    def __init__(self, topo: TopoCallback) -> None:
        self.topo = topo

    def on_train_epoch_end(self, trainer, pl_module):
        for name, mask in self.topo.sparsifier.masks.items():
            weight = self.topo.sparsifier.weights[name].detach()
            theirs = [trainer.strategy.broadcast(t.clone(), src=0) for t in (mask, weight)]
            if not (torch.equal(mask, theirs[0]) and torch.equal(weight, theirs[1])):
                raise AssertionError(f"rank {trainer.global_rank} differs from rank 0 in {name}")


@pytest.mark.slow
def test_ddp_ranks_share_masks_and_rank_zero_records(digits, tmp_path):
    topo = TopoCallback("set", density=0.3, record_dir=tmp_path / "run", zeta=0.3)
    trainer = _trainer([topo, RanksAgree(topo)], max_epochs=2, strategy="ddp_spawn", devices=2)
    trainer.fit(Classifier(), *_data(digits))
    reader = RunReader(tmp_path / "run")
    assert reader.epochs == [0, 1] and reader.meta["finished"]["epochs"] == 2
    assert reader.stats[reader.stats.epoch == 1].pruned.gt(0).all()


def test_a_second_fit_of_the_same_module_keeps_its_masks(digits):
    module = Classifier()
    topo = TopoCallback("set", density=0.3, zeta=0.3)  # masks move away from the initial random ones
    _trainer([topo], max_epochs=2).fit(module, *_data(digits))
    assert topo.sparsifier.epochs_done == 1  # one change, after epoch 0; none after the last
    first = {n: m.clone() for n, m in topo.sparsifier.masks.items()}
    seen = {}

    class AtStart(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            seen.update({n: m.clone() for n, m in topo.sparsifier.masks.items()})

    _trainer([topo, AtStart()], max_epochs=1).fit(module, *_data(digits))
    assert all(torch.equal(first[n], seen[n]) for n in first)
