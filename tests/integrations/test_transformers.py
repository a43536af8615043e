"""The Hugging Face Trainer callback on a tiny BERT built from its config (offline, no downloads)."""

from __future__ import annotations

import warnings

import pytest
import torch

from topo.errors import ConfigError
from topo.integrations.attach import unwrap
from topo.record import RunReader

transformers = pytest.importorskip("transformers", reason="the test extra installs transformers")
from topo.integrations.transformers import TopoTrainerCallback  # noqa: E402

warnings.filterwarnings("ignore", module="transformers")


class Tokens(torch.utils.data.Dataset):
    """64 random 16-token sequences labelled by their first token: learnable, and made here."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 50, (64, 16), generator=generator)
        self.labels = (self.ids[:, 0] >= 25).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def tiny_bert():
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=32, num_labels=2)
    return transformers.BertForSequenceClassification(config)


class InactiveStayZero(transformers.TrainerCallback):
    def __init__(self, topo: TopoTrainerCallback) -> None:
        self.topo, self.steps, self.violations = topo, 0, []

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        def check(opt, a, k):
            self.steps += 1
            for name, weight in self.topo.sparsifier.weights.items():
                if torch.count_nonzero(weight.detach()[~self.topo.sparsifier.masks[name]]):
                    self.violations.append((self.steps, name))

        unwrap(optimizer).register_step_post_hook(check)


def _train(tmp_path, callbacks, optimizers=(None, None), model=None, eval_dataset=None, **arguments):
    args = transformers.TrainingArguments(**{
        "output_dir": str(tmp_path / "hf"), "num_train_epochs": 2, "per_device_train_batch_size": 8, "report_to": [],
        "save_strategy": "no", "logging_steps": 2, "use_cpu": True, "disable_tqdm": True,
        "gradient_accumulation_steps": 2, "max_grad_norm": 1.0, **arguments})
    trainer = transformers.Trainer(model=model or tiny_bert(), args=args, train_dataset=Tokens(), callbacks=callbacks,
                                   optimizers=optimizers, eval_dataset=eval_dataset)
    trainer.train()
    return trainer


def test_a_sparse_fine_tune_is_recorded_and_inactive_weights_stay_zero(tmp_path):
    topo = TopoTrainerCallback("set", density=0.25, record_dir=tmp_path / "run", zeta=0.3, tensorboard=True)
    checker = InactiveStayZero(topo)
    trainer = _train(tmp_path, [topo, checker])
    assert checker.steps == trainer.state.global_step == 8 and checker.violations == []
    reader = RunReader(tmp_path / "run")
    assert reader.epochs == [0, 1]
    linear = [n for n, m in trainer.model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert list(reader.layers) == [f"{n}.weight" for n in linear]  # Linear weights; no embeddings or norms
    last = reader.stats[reader.stats.epoch == 1]
    assert (abs(last.density - 0.25) < 0.02).all()
    assert (last.pruned > 0).all() and (last.grown == last.pruned).all()  # SET moved connections
    assert "trainer_epoch" in reader.stats and "loss" in reader.stats
    assert (tmp_path / "run" / "graph_metrics.csv").exists() and any((tmp_path / "run" / "tensorboard").iterdir())


def test_each_epochs_recorded_score_is_the_evaluation_of_that_epochs_weights(tmp_path):
    # the Trainer calls on_epoch_end before it evaluates: the snapshot of epoch e must carry epoch e's evaluation
    topo = TopoTrainerCallback("set", density=0.3, record_dir=tmp_path / "run", zeta=0.3)
    trainer = _train(tmp_path, [topo], num_train_epochs=3, eval_strategy="epoch", eval_dataset=Tokens())
    logged = [entry["eval_loss"] for entry in trainer.state.log_history if "eval_loss" in entry]
    recorded = RunReader(tmp_path / "run").stats.groupby("epoch").eval_loss.first().tolist()
    assert len(logged) == 3 and recorded == pytest.approx(logged)


def test_every_n_steps_adapts_and_records_by_optimizer_step(tmp_path):
    topo = TopoTrainerCallback("adaptive", density=0.3, record_dir=tmp_path / "run", every_n_steps=2, k=0.5)
    _train(tmp_path, [topo])
    reader = RunReader(tmp_path / "run")
    assert reader.epochs == [0, 1, 2, 3]
    assert reader.stats.groupby("epoch").global_step.first().tolist() == [2, 4, 6, 8]
    assert topo.sparsifier.epochs_done == 3  # adapted at the start of steps 3, 5 and 7; nothing after the last


def test_resume_from_a_trainer_checkpoint_gives_the_uninterrupted_masks(tmp_path):
    whole = TopoTrainerCallback("set", density=0.3, zeta=0.3, record_dir=tmp_path / "whole", seed=0)
    _train(tmp_path / "a", [whole], save_strategy="steps", save_steps=4)
    assert (tmp_path / "a" / "hf" / "checkpoint-4" / "topo_sparsifier.pt").exists()
    resumed = TopoTrainerCallback("set", density=0.3, zeta=0.3, record_dir=tmp_path / "resumed", seed=0)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "b"), num_train_epochs=2, per_device_train_batch_size=8, report_to=[],
        save_strategy="no", logging_steps=2, use_cpu=True, disable_tqdm=True, gradient_accumulation_steps=2,
        max_grad_norm=1.0)
    trainer = transformers.Trainer(model=tiny_bert(), args=args, train_dataset=Tokens(), callbacks=[resumed])
    trainer.train(resume_from_checkpoint=str(tmp_path / "a" / "hf" / "checkpoint-4"))
    assert resumed.sparsifier.step_count == 8  # 4 restored from the checkpoint, 4 trained after it
    for name, mask in whole.sparsifier.masks.items():
        assert torch.equal(mask, resumed.sparsifier.masks[name]), name
        weight = resumed.sparsifier.weights[name].detach()
        assert torch.count_nonzero(weight[~mask]) == 0 and torch.count_nonzero(weight[mask]) > 0.9 * int(mask.sum())


def test_resuming_a_checkpoint_saved_without_the_callback_is_an_error(tmp_path):
    _train(tmp_path, [], save_strategy="steps", save_steps=4)
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "hf"), num_train_epochs=2, report_to=[],
                                          per_device_train_batch_size=8, use_cpu=True, disable_tqdm=True,
                                          gradient_accumulation_steps=2, save_strategy="no")
    trainer = transformers.Trainer(model=tiny_bert(), args=args, train_dataset=Tokens(),
                                   callbacks=[TopoTrainerCallback("set", density=0.3)])
    with pytest.raises(ConfigError, match="no topo_sparsifier.pt of that step"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "hf" / "checkpoint-4"))


def test_a_second_train_keeps_the_masks_and_hooks_the_optimizer_once(tmp_path):
    topo = TopoTrainerCallback("set", density=0.3, zeta=0.3, seed=0)
    trainer = _train(tmp_path, [topo])
    masks = {n: m.clone() for n, m in topo.sparsifier.masks.items()}
    first = topo.sparsifier
    seen = {}

    class AtStart(transformers.TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            seen.setdefault("masks", {n: m.clone() for n, m in topo.sparsifier.masks.items()})

    trainer.add_callback(AtStart())
    trainer.train()
    assert topo.sparsifier is not first and first._hook is None
    assert len(unwrap(trainer.optimizer)._optimizer_step_pre_hooks) == 1
    assert all(torch.equal(masks[n], seen["masks"][n]) for n in masks)


def test_an_unhookable_optimizer_fails_at_train_begin(tmp_path):
    model = tiny_bert()
    with pytest.raises(ConfigError, match="LBFGS re-evaluates"):
        _train(tmp_path, [TopoTrainerCallback("set", density=0.3)],
               optimizers=(torch.optim.LBFGS(model.parameters()), None), model=model)
    with pytest.raises(ConfigError, match="every_n_steps must be >= 1"):
        TopoTrainerCallback("set", every_n_steps=0)
