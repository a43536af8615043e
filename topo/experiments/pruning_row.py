"""A Table 2 row for the sparse models made today (beyond the paper): one-shot pruning against sparse training.

At one density, over seeds, on the dense model's own widths (no budget matching: one-shot pruning keeps every
neuron, so the sparse-from-scratch methods do too):

1. **trained**: the dense baseline, and each sparse training method from scratch (random fixed, the paper's rule,
   SET, RigL, SRigL, …);
2. **one-shot**: each seed's dense run pruned once by magnitude, Wanda and SparseGPT, at the density and at each
   N:M structure, scored as pruned and after a short fine-tune with the mask fixed
   (:mod:`topo.experiments.oneshot`), against the dense run trained as many epochs more, unpruned (stage
   ``fine-tuned`` of ``dense``);
3. **transplant** (the paper's Section 5.1 asked of every method): each sparse run's final mask on a fresh
   initialisation, trained for the full schedule with the mask fixed (:func:`topo.experiments.transplant`).

Each phase is one list of executor jobs (:func:`topo.executors.run_jobs`, local or Ray), run after the phase it
reads from; finished runs are read back, interrupted ones resumed. Every score is the test loss (or % error) at the
epoch the validation split selects, except the "as pruned" arms, which have one epoch: the pruned weights.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from topo.errors import ConfigError
from topo.executors import Job, RayOptions, run_jobs
from topo.experiments import TRAIN_METHODS
from topo.experiments.models import get_model_spec
from topo.experiments.oneshot import continued_run, oneshot_run, target_name
from topo.experiments.table import score, train_job, welch_interval
from topo.experiments.train import TrainConfig, recorded_result
from topo.experiments.transplant import transplant
from topo.options import ONESHOT_METHODS, check_oneshot_options

#: The sparse-from-scratch methods of the row by default.
SPARSE_METHODS = ("random-fixed", "adaptive", "set", "rigl", "srigl")


def oneshot_job(dense_dir: str, out_dir: str, method: str, density: float | None, structure: str | None,
                samples: int, finetune_epochs: int, progress: bool = False) -> dict[str, Any]:
    """One one-shot arm as an executor job: its scores as pruned and its fine-tuned score."""
    result = oneshot_run(dense_dir, out_dir, method=method, density=density, structure=structure, samples=samples,
                         finetune_epochs=finetune_epochs, progress=progress)
    return {"scores": result.scores, "finetuned": result.finetuned}


def continued_job(dense_dir: str, out_dir: str, epochs: int, progress: bool = False) -> Any:
    """The dense control of the fine-tuned arms as an executor job
    (:func:`topo.experiments.oneshot.continued_run`)."""
    return continued_run(dense_dir, out_dir, epochs=epochs, progress=progress)


def transplant_job(run_dir: str, out_dir: str, epochs: int, lr: float, progress: bool = False) -> Any:
    """One transplant as an executor job: ``run_dir``'s last mask, fresh weights, ``epochs`` epochs at ``lr``
    (resumed or read back when ``out_dir`` holds it)."""
    return transplant(run_dir, out_dir, epochs=epochs, lr=lr, resume=True, progress=progress)


def reproduce_pruning_row(
    base: TrainConfig,
    seeds: int,
    out_dir: str | os.PathLike,
    *,
    density: float = 0.5,
    structures: Sequence[str] = ("2:4",),
    pruners: Sequence[str] = ONESHOT_METHODS,
    methods: Sequence[str] = SPARSE_METHODS,
    finetune_epochs: int = 5,
    samples: int = 64,
    transplants: bool = True,
    executor: str = "local",
    ray_options: RayOptions | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Run the row for ``seeds`` seeds under ``out_dir``; one row per arm and seed.

    Columns: arm (``dense``, a method, ``wanda 2:4``…), stage (``trained``, ``as pruned``, ``fine-tuned``,
    ``transplant``), seed, score, run_dir. ``base`` gives the model and training settings; its method and α are
    ignored (every sparse arm runs at ``density``).
    """
    if not 0 < density < 1:
        raise ConfigError(f"density must be in (0, 1), got {density}")
    for pruner in pruners:
        check_oneshot_options(pruner, density, None)
        for structure in structures:
            check_oneshot_options(pruner, None, structure)
    unknown = [m for m in methods if m not in TRAIN_METHODS or m in ("dense", "wide-dense")]
    if unknown:
        raise ConfigError(f"not sparse training methods: {unknown}; valid: "
                          f"{', '.join(m for m in TRAIN_METHODS if m not in ('dense', 'wide-dense'))}")
    task = get_model_spec(base.model).task
    root = Path(out_dir)
    log_alpha = -math.log10(density)
    trained: list[tuple[str, TrainConfig, Path]] = []
    dense_dirs: dict[int, Path] = {}
    for seed in range(seeds):
        dense = replace(base, method="dense", seed=seed)
        dense_dirs[seed] = root / dense.run_name()
        trained.append(("dense", dense, dense_dirs[seed]))
        for method in methods:
            config = replace(base, method=method, seed=seed, log_alpha=log_alpha, match_budget=False)
            trained.append((method, config, root / config.run_name()))
    _train_all(trained, executor, ray_options, progress, root)

    targets = [(density, None), *((None, structure) for structure in structures)]
    arms = []
    for seed, dense_dir in dense_dirs.items():
        for pruner in pruners:
            for target_density, structure in targets:
                target = target_name(target_density, structure)
                name = f"{base.model}-oneshot-{pruner}-{target.replace(':', 'of')}-s{seed}"  # no ':' in paths
                arms.append((f"{pruner} {target}", seed, root / name,
                             Job(name, oneshot_job, (str(dense_dir), str(root / name), pruner, target_density,
                                                     structure, samples, finetune_epochs))))
    oneshots = run_jobs([arm[3] for arm in arms], executor, ray_options, progress=progress, output_root=root,
                        headline=lambda result: f"{score(result['finetuned'], task):.4g}")
    continued = run_jobs([Job(f"{base.model}-dense-continued-s{seed}", continued_job,
                              (str(dense_dirs[seed]),
                               str(root / f"{base.model}-dense-continued-s{seed}"), finetune_epochs))
                          for seed in range(seeds)], executor, ray_options, progress=progress, output_root=root,
                         headline=lambda result: f"{score(result, task):.4g}")

    rows = [{"arm": arm, "stage": "trained", "seed": config.seed,
             "score": score(recorded_result(config, run_dir), task), "run_dir": str(run_dir)}
            for arm, config, run_dir in trained]
    rows += [{"arm": "dense", "stage": "fine-tuned", "seed": seed, "score": score(result, task),
              "run_dir": str(result.run_dir)} for seed, result in enumerate(continued)]
    for (arm, seed, run_dir, _), result in zip(arms, oneshots, strict=True):
        pruned = result["scores"]["pruned_test_loss"] if task != "classify" else \
            100.0 * (1.0 - result["scores"]["pruned_test_acc"])
        rows.append({"arm": arm, "stage": "as pruned", "seed": seed, "score": pruned, "run_dir": str(run_dir)})
        rows.append({"arm": arm, "stage": "fine-tuned", "seed": seed, "score": score(result["finetuned"], task),
                     "run_dir": str(run_dir)})

    if transplants:
        sources = [(arm, config.seed, run_dir) for arm, config, run_dir in trained if arm != "dense"]
        sources += [(arm, seed, run_dir) for arm, seed, run_dir, _ in arms]
        epochs = base.epochs or get_model_spec(base.model).epochs
        jobs = [Job(f"{Path(run_dir).name}-transplant",
                    transplant_job, (str(run_dir), str(root / f"{Path(run_dir).name}-transplant"), epochs, base.lr))
                for _, _, run_dir in sources]
        moved = run_jobs(jobs, executor, ray_options, progress=progress, output_root=root,
                         headline=lambda result: f"{score(result, task):.4g}")
        rows += [{"arm": arm, "stage": "transplant", "seed": seed, "score": score(result, task),
                  "run_dir": str(result.run_dir)}
                 for (arm, seed, _), result in zip(sources, moved, strict=True)]
    return pd.DataFrame(rows)


def _train_all(planned: list[tuple[str, TrainConfig, Path]], executor: str, ray_options: RayOptions | None,
               progress: bool, root: Path) -> None:
    jobs = [Job(run_dir.name, train_job, (config, str(run_dir), progress and executor == "local"))
            for _, config, run_dir in planned if recorded_result(config, run_dir) is None]
    run_jobs(jobs, executor, ray_options, progress=progress, output_root=root)


def summarize_row(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std over seeds per arm and stage, and each one's difference to random fixed trained from scratch
    with its 95 % Welch interval (``vs_random_fixed``, ``ci_low``, ``ci_high``)."""
    reference = runs[(runs.arm == "random-fixed") & (runs.stage == "trained")]["score"]
    rows = []
    for (arm, stage), group in runs.groupby(["arm", "stage"], sort=False):
        gap = (welch_interval(group["score"], reference)
               if len(reference) and not (arm == "random-fixed" and stage == "trained") else (math.nan,) * 3)
        rows.append({"arm": arm, "stage": stage, "mean": group["score"].mean(), "std": group["score"].std(),
                     "count": len(group), "vs_random_fixed": gap[0], "ci_low": gap[1], "ci_high": gap[2]})
    return pd.DataFrame(rows)


def row_markdown(summary: pd.DataFrame, metric: str) -> str:
    """The row's summary as a Markdown table (``metric`` names the score)."""
    lines = [f"| arm | stage | {metric} (mean ± std) | seeds | − random fixed [95 % CI] |",
             "| --- | --- | --- | --- | --- |"]
    for row in summary.itertuples():
        std = 0.0 if pd.isna(row.std) else row.std
        interval = "" if pd.isna(row.ci_low) else f" [{row.ci_low:+.3f}, {row.ci_high:+.3f}]"
        gap = "" if pd.isna(row.vs_random_fixed) else f"{row.vs_random_fixed:+.3f}{interval}"
        lines.append(f"| {row.arm} | {row.stage} | {row.mean:.3f} ± {std:.3f} | {row.count} | {gap} |")
    return "\n".join(lines) + "\n"
