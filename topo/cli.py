"""The ``topo`` command: analyze, compare, plot, report, prune, train, transplant, reproduce, demo.

Exit codes: 0 success, 1 failure (one line on stderr naming the file or option; ``--debug`` shows the traceback),
2 usage error. Global options (``--quiet``, ``--debug``) go before or after the command. Building the parser and
reporting a usage error import nothing heavy: every command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import re
import sys
import tempfile
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from topo.errors import ConfigError, TopoError
from topo.experiments import DATASET_NAMES, MODEL_NAMES, TRAIN_METHODS
from topo.options import ONESHOT_METHODS

if TYPE_CHECKING:
    import pandas as pd

#: Image formats figures are written in (matplotlib's, by suffix).
FIGURE_FORMATS = ("png", "pdf", "svg", "svgz", "jpg", "jpeg", "eps", "ps", "tif", "tiff", "webp", "pgf")


def _wide(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (layer, graph) of a tidy metrics table, metrics as columns, in the table's order."""
    import pandas as pd

    order = pd.MultiIndex.from_frame(table[["layer", "graph"]].drop_duplicates())
    metrics = list(dict.fromkeys(table["metric"]))
    wide = table.pivot(index=["layer", "graph"], columns="metric", values="value").reindex(order)[metrics]
    return wide.reset_index().rename_axis(columns=None)


def json_text(data: object) -> str:
    """``data`` as standard JSON: NaN and ±inf, which JSON has no number for, become ``null`` (Python's ``json``
    would write bare ``NaN``, which strict parsers refuse); numpy numbers become plain ones."""
    import json
    import math

    def clean(value: object) -> object:
        if isinstance(value, dict):
            return {str(k): clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", None) == 0:
            value = value.item()
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return value

    return json.dumps(clean(data), allow_nan=False)


def _analysis_device(name: str):
    """None for the per-graph CPU backend (``cpu``), else the device for batched analysis (``cuda`` …)."""
    from topo.experiments.train import pick_device

    device = pick_device(name)
    return None if device.type == "cpu" else device


def _ray_options(args: argparse.Namespace):
    """The Ray options of ``args`` (None with the local executor, where Ray options are refused)."""
    from topo.executors import RayOptions

    given = [flag for flag, value in (("--address", args.address), ("--gpus-per-run", args.gpus_per_run),
                                      ("--cpus-per-run", args.cpus_per_run)) if value is not None]
    if args.executor != "ray":
        if given:
            raise ConfigError(f"{', '.join(given)} applies to --executor ray")
        return None
    options = RayOptions(address=args.address, gpus_per_run=args.gpus_per_run, max_retries=args.max_retries,
                         cpus_per_run=1.0 if args.cpus_per_run is None else args.cpus_per_run, force=args.force)
    options.validate()
    return options


def check_output(path: str | os.PathLike | None, option: str, figure: bool = False) -> None:
    """Raise :class:`ConfigError` naming ``option`` when ``path`` cannot be written (its folder is missing or not
    writable, or it is a folder, or for a ``figure`` its suffix is no image format): checked before any work, so
    a bad output path changes nothing and creates no folder."""
    if path is None or str(path) == "-":
        return
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise ConfigError(f"{option} {path}: is a directory, not a file")
    if figure and path.suffix.lower().lstrip(".") not in FIGURE_FORMATS:
        raise ConfigError(f"{option} {path}: {path.suffix or 'no suffix'} is not an image format; use one of "
                          f".{', .'.join(FIGURE_FORMATS[:4])}, …")
    if not folder.is_dir():
        raise ConfigError(f"{option} {path}: no such directory {folder}")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ConfigError(f"{option} {path}: not writable")
    try:  # permissions do not tell everything (a root user in /proc, a read-only mount): try, and leave nothing
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=folder)
    except OSError as exc:
        raise ConfigError(f"{option} {path}: not writable ({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(probe)


def cmd_analyze(args: argparse.Namespace) -> int:
    """``topo analyze``: a checkpoint's graph table, or every snapshot of run directories (locally or on Ray)."""
    from topo.options import check_analysis_options

    paths = [Path(p) for p in args.path]
    check_output(args.csv, "--csv")
    check_output(args.plot, "--plot", figure=True)
    check_analysis_options(backbone=args.backbone, global_backbone=args.global_backbone, path_sources=args.path_sources,
                           small_world=args.small_world, null=args.null, null_samples=args.null_samples,
                           conv=args.conv, num_heads=args.num_heads)
    from topo.analyze import analyze_runs, is_run_directory
    from topo.record.store import write_csv

    runs = [is_run_directory(p) for p in paths]
    if len(paths) > 1 and not all(runs):
        other = paths[runs.index(False)]
        raise ConfigError(f"{other}: not a topo run directory; topo analyze takes one checkpoint, or one or more run "
                          "directories")
    device = _analysis_device(args.device)
    if not runs[0]:
        return _analyze_checkpoint(args, paths[0], device, args.csv == "-")
    checkpoint_only = [flag for flag, given in (("--backbone", args.backbone), ("--global", args.global_backbone),
                                                ("--key", args.key), ("--embeddings", args.embeddings),
                                                ("--resume-dir", args.resume_dir),
                                                ("--num-heads", args.num_heads), ("--path-sources", args.path_sources))
                       if given]
    if checkpoint_only:
        raise ConfigError(f"{', '.join(checkpoint_only)} applies to checkpoints; {paths[0]} is a run directory, "
                          "whose masks are its own")
    options = _ray_options(args)
    to_stdout = args.csv == "-"
    single = len(paths) == 1
    out = None if to_stdout else Path(args.csv) if args.csv else paths[0] / "graph_metrics.csv" if single else None
    if out is None and not to_stdout and not args.json:
        raise ConfigError("several runs: --csv FILE names the table they go into")
    table = analyze_runs(paths, executor=args.executor, ray_options=options, workers=args.workers, layers=args.layers,
                         small_world=args.small_world, device=device, heads=args.heads, conv=args.conv,
                         null=args.null, null_samples=args.null_samples,
                         progress=not args.quiet and not to_stdout and not args.json)
    if out is not None and not (single and out == paths[0] / "graph_metrics.csv"):
        write_csv(out, table)
    elif to_stdout:
        table.to_csv(sys.stdout, index=False)
    if args.plot:
        from topo.plot import figure5, save

        save(figure5(table), args.plot)
        print(f"topo: Figure 5 written to {args.plot}", file=sys.stderr)
    if args.json:
        print(table.to_json(orient="records"))
    elif out is not None:
        epochs = table.groupby("run")["epoch"].nunique()
        print(f"{', '.join(map(str, paths)) if single else f'{len(paths)} runs'}: {int(epochs.sum())} snapshots, "
              f"metrics written to {out}" + (f", Figure 5 to {args.plot}" if args.plot else ""))
        if single:
            last = table[table.epoch == table.epoch.max()]
            print(f"last epoch ({int(table.epoch.max())}):")
            print(_wide(last).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return 0


def _analyze_checkpoint(args: argparse.Namespace, path: Path, device, to_stdout: bool) -> int:
    from topo.analyze import analyze_checkpoint
    from topo.record.store import write_csv
    from topo.resume import default_root

    resume_dir = args.resume_dir or (f"{args.csv}.partial" if args.csv and not to_stdout else default_root())
    result = analyze_checkpoint(path, key=args.key, layers=args.layers, backbone=args.backbone,
                                global_backbone=args.global_backbone, path_sources=args.path_sources,
                                small_world=args.small_world, device=device, progress=not args.quiet,
                                heads=args.heads, embeddings=args.embeddings, conv=args.conv,
                                num_heads=args.num_heads, null=args.null, null_samples=args.null_samples,
                                resume_dir=resume_dir, executor=args.executor, ray_options=_ray_options(args),
                                workers=args.workers)
    print(f"topo: {path}: {result.source}" + (f"; {result.reading}" if result.reading else ""), file=sys.stderr)
    if result.dense:
        print(f"topo: note: every analysed layer of {path} is dense, so its graphs are complete and their metrics "
              "trivial; --backbone magnitude:F or disparity:A keeps the connections that carry its structure",
              file=sys.stderr)
    if args.plot:
        from topo.plot import layer_figure, save

        degrees = result.degree_table()
        named = f"{path}" + (f", backbone {args.backbone}" + (" (global)" if args.global_backbone else "")
                             if args.backbone else "")
        save(layer_figure(result.table, degrees, title=f"Layers of {named}"), args.plot)
        print(f"topo: figure written to {args.plot}", file=sys.stderr)
    if args.json:
        print(json_text(result.records))
    elif to_stdout:
        result.table.to_csv(sys.stdout, index=False)
    elif args.csv:
        write_csv(args.csv, result.table)
    else:
        print(result.table.to_string(index=False, float_format=lambda v: f"{v:.4g}", na_rep=""))
    return 0


def _compared_masks(path: str, epoch: int | None, key: str | None) -> tuple[dict, str, bool]:
    """Layer name → (out, in)-oriented mask of a run (at ``epoch``, default its last) or a checkpoint, where they
    come from, and whether its layers form a chain (no attention projection: see :func:`topo.graph.compare.nnstd`)."""
    import numpy as np

    from topo.analyze import is_run_directory
    from topo.families import detect, oriented, read_config
    from topo.record import RunReader
    from topo.record.formats import open_checkpoint

    if is_run_directory(path):
        reader = RunReader(path)
        if not reader.epochs:
            raise TopoError(f"{path}: run directory has no snapshots yet")
        chosen = reader.epochs[-1] if epoch is None else epoch
        if chosen not in reader.epochs:
            raise ConfigError(f"--epoch {chosen}: {path} has epochs {reader.epochs}")
        masks, family, where = reader.masks(chosen), reader.family, f"epoch {chosen}"
    else:
        source = open_checkpoint(path, key)
        masks = {layer.name: layer.mask for layer in source}
        family, where = detect({n: tuple(m.shape) for n, m in masks.items()}, read_config(path)), "checkpoint"
    roles = {n: family.role(n, tuple(np.shape(m))) for n, m in masks.items() if np.ndim(m) >= 2}
    chained = not any(role.kind == "attention" for role in roles.values())
    return {n: oriented(masks[n], role) for n, role in roles.items()}, where, chained


def cmd_compare(args: argparse.Namespace) -> int:
    """``topo compare``: NNSTD per layer between two runs or checkpoints, beside its random-mask baseline."""
    if args.random_samples < 2:
        raise ConfigError(f"--random-samples must be >= 2, got {args.random_samples}")
    import numpy as np
    import pandas as pd

    from topo.graph.compare import nnstd, nnstd_random

    (a, where_a, chain_a), (b, where_b, chain_b) = (_compared_masks(p, args.epoch, args.key)
                                                    for p in (args.run_a, args.run_b))
    names = [n for n in a if n in b]
    if not names:
        raise ConfigError(f"{args.run_a} and {args.run_b} have no layer name in common")
    different = [n for n in names if tuple(np.shape(a[n])) != tuple(np.shape(b[n]))]
    if different:
        raise ConfigError(f"layer {different[0]} is {tuple(np.shape(a[different[0]]))} in {args.run_a} but "
                          f"{tuple(np.shape(b[different[0]]))} in {args.run_b}")
    first, second = [a[n] for n in names], [b[n] for n in names]
    chain = chain_a and chain_b
    mean, std = nnstd_random(first, second, args.random_samples, chain=chain)
    table = pd.DataFrame({"layer": names, "nnstd": nnstd(first, second, chain), "nnstd_random": mean,
                          "nnstd_random_std": std})
    if args.json:
        print(json_text({"a": where_a, "b": where_b, "layers": table.to_dict(orient="records")}))
    else:
        print(f"NNSTD topology distance ({where_a} of {args.run_a} and {where_b} of {args.run_b}; 0: the same "
              "topology up to neuron permutation, 1: disjoint; nnstd_random: independent random masks of the same "
              f"counts, mean of {args.random_samples})")
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0


SEED_IN_NAME = re.compile(r"-s\d+(?=-|$)")


def _stats_of(runs: Sequence[str], over_seeds: bool = False) -> pd.DataFrame:
    """``stats.csv`` of every run with a ``run`` column: its name, without the ``-sN`` seed part if ``over_seeds``."""
    import pandas as pd

    from topo.record import RunReader

    frames = []
    for run in runs:
        reader = RunReader(run)
        frames.append(reader.stats.assign(run=SEED_IN_NAME.sub("", reader.name) if over_seeds else reader.name))
    return pd.concat(frames, ignore_index=True)


def cmd_plot(args: argparse.Namespace) -> int:
    """``topo plot``: Figure 3, 4, 5 or the degree distributions from run directories."""
    import pandas as pd

    check_output(args.output, "-o", figure=True)
    from topo import plot
    from topo.graph import metrics_table
    from topo.record import RunReader

    if args.figure == "degrees":
        from topo.graph.compare import degree_distributions

        frames = [degree_distributions(RunReader(r), RunReader(r).name) for r in args.runs]
        fig = plot.degree_figure(pd.concat(frames, ignore_index=True))
    elif args.figure == "5":
        tables = [metrics_table(RunReader(r), run=RunReader(r).name, progress=not args.quiet) for r in args.runs]
        table = pd.concat(tables, ignore_index=True)
        if args.over_seeds:
            table["run"] = table["run"].str.replace(SEED_IN_NAME, "", regex=True)
        # one line per run and graph (the runs of one configuration pooled with --over-seeds: mean ± sd)
        fig = plot.figure5(table, layer=args.layer)
    elif args.figure == "4":
        fig = plot.figure4(_stats_of(args.runs, args.over_seeds), layer=args.layer)
    else:
        stats = _stats_of(args.runs)
        histories = stats.groupby(["run", "epoch"]).first().reset_index()
        if args.over_seeds:
            histories["run"] = histories["run"].str.replace(SEED_IN_NAME, "", regex=True)
        fig = plot.figure3(histories, metric=args.metric)
    plot.save(fig, args.output)
    print(f"topo: Figure {args.figure} written to {args.output}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """``topo report``: one self-contained HTML page of runs or of a checkpoint (:func:`topo.report.write_report`)."""
    from topo.options import check_analysis_options

    check_output(args.output, "-o")
    if not args.output.lower().endswith((".html", ".htm")):
        raise ConfigError(f"-o {args.output}: a report is an HTML file (.html)")
    check_analysis_options(backbone=args.backbone, null=args.null, null_samples=args.null_samples,
                           num_heads=args.num_heads)
    if args.nnstd_samples < 0 or args.nnstd_samples == 1:
        raise ConfigError(f"--nnstd-samples must be 0 (no NNSTD) or at least 2, got {args.nnstd_samples}")
    from topo.report import write_report

    path = write_report(args.paths, args.output, title=args.title, null=args.null, null_samples=args.null_samples,
                        layers=args.layers, backbone=args.backbone, heads=args.heads, embeddings=args.embeddings,
                        conv=args.conv, num_heads=args.num_heads, key=args.key, nnstd_samples=args.nnstd_samples)
    print(f"topo: report written to {path}", file=sys.stderr)
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    """``topo prune``: one-shot pruning of a Hugging Face causal language model
    (:func:`topo.prune.prune_pretrained`)."""
    from topo.prune import check_prune_options

    check_prune_options(args.model_dir, args.output, args.method, args.calibration, args.density, args.structure,
                        args.samples, args.seqlen)
    from topo.prune import prune_pretrained

    result = prune_pretrained(args.model_dir, args.output, args.method, args.calibration, density=args.density,
                              structure=args.structure, samples=args.samples, seqlen=args.seqlen, seed=args.seed,
                              progress=not args.quiet)
    target = f"density {args.density:g}" if args.density is not None else args.structure
    print(f"topo: {result.line(args.method, target)}", file=sys.stderr)
    return 0


def _train_config(args: argparse.Namespace, log_alpha: float, k: float):
    from topo.experiments.train import TrainConfig

    return TrainConfig(model=args.model, method=getattr(args, "method", "adaptive"), dataset=args.dataset,
                       log_alpha=log_alpha, k=k, epochs=args.epochs,
                       batch_size=args.batch_size, lr=args.lr, seed=getattr(args, "seed", 0), device=args.device,
                       bf16=args.bf16, patience=args.patience, data_dir=args.data_dir, max_batches=args.max_batches,
                       val_max_batches=args.val_max_batches, widths=args.widths,
                       adapt_every=args.adapt_every, distribution=args.distribution,
                       dense_first_last=args.dense_first_last, keep_weights=args.keep_weights,
                       match_budget=not args.same_widths)


def cmd_train(args: argparse.Namespace) -> int:
    """``topo train``: one run of a Table 1 model with a sparsity method, recorded (and resumed with ``--resume``)."""
    from topo.experiments.train import fresh_run_dir, train

    config = _train_config(args, args.log_alpha, args.k)
    config.validate()
    run_dir = Path(args.out) / (args.name or config.run_name())
    if args.fresh_dir:
        run_dir = fresh_run_dir(run_dir, config)
    result = train(config, run_dir, resume=args.resume, progress=not args.quiet)
    final = ", ".join(f"{k} {v:.4f}" for k, v in result.final.items() if k != "epoch")
    print(f"{run_dir}: widths {result.widths}; last epoch: {final}")
    return 0


def cmd_transplant(args: argparse.Namespace) -> int:
    """``topo transplant``: a run's final mask trained from scratch with the mask fixed (Section 5.1)."""
    from topo.experiments.transplant import transplant

    result = transplant(args.run, args.out, epoch=args.epoch, seed=args.seed, epochs=args.epochs,
                        data_dir=args.data_dir, init=args.init, progress=not args.quiet)
    final = ", ".join(f"{k} {v:.4f}" for k, v in result.final.items() if k != "epoch")
    print(f"{result.run_dir}: transplanted topology of {args.run}; last epoch: {final}")
    return 0


def cmd_reproduce_pruning(args: argparse.Namespace) -> int:
    """``topo reproduce pruning``: one-shot pruning against sparse training (:mod:`topo.experiments.pruning_row`)."""
    from dataclasses import replace

    from topo.experiments.models import get_model_spec
    from topo.experiments.pruning_row import SPARSE_METHODS, reproduce_pruning_row, row_markdown, summarize_row
    from topo.plot import pruning_row_figure, save

    base = replace(_train_config(args, args.log_alpha[0], args.k[0]), method="dense")
    base.validate()
    out = Path(args.out)
    runs = reproduce_pruning_row(base, args.seeds, out / "runs", density=args.density, structures=args.structures,
                                 pruners=args.pruners or ONESHOT_METHODS, methods=args.methods or SPARSE_METHODS,
                                 finetune_epochs=args.finetune_epochs, samples=args.calibration_samples,
                                 transplants=not args.no_transplants, executor=args.executor,
                                 ray_options=_ray_options(args), progress=not args.quiet)
    classify = get_model_spec(base.model).task == "classify"
    summary = summarize_row(runs)
    markdown = row_markdown(summary, "test % error" if classify else "test loss")
    out.mkdir(parents=True, exist_ok=True)
    runs.to_csv(out / "pruning_runs.csv", index=False)
    summary.to_csv(out / "pruning.csv", index=False)
    (out / "pruning.md").write_text(markdown)
    save(pruning_row_figure(runs, "test % error" if classify else "test loss (nats/char)"), out / "pruning.png")
    print(markdown)
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    """``topo reproduce table2``: the Table 2 grid over methods, densities and seeds, and its tables and figures."""
    if args.table == "pruning":
        return cmd_reproduce_pruning(args)
    from topo.experiments.models import get_model_spec
    from topo.experiments.table import histories, reproduce_table2, summarize_table, to_markdown
    from topo.plot import figure2, save, table2_curves

    base = _train_config(args, args.log_alpha[0], args.k[0])
    base.validate()
    out = Path(args.out)
    options = _ray_options(args)
    runs = reproduce_table2(base, args.log_alpha, args.k, args.seeds, out / "runs", progress=not args.quiet,
                            fresh_dir=args.fresh_dir, methods=args.methods, executor=args.executor,
                            ray_options=options)
    summary = summarize_table(runs)
    classify = get_model_spec(base.model).task == "classify"
    markdown = to_markdown(summary, "test % error" if classify else "test loss")
    out.mkdir(parents=True, exist_ok=True)
    runs.to_csv(out / "table2_runs.csv", index=False)
    summary.to_csv(out / "table2.csv", index=False)
    (out / "table2.md").write_text(markdown)
    curves = histories(runs)
    curves.to_csv(out / "table2_curves.csv", index=False)
    save(figure2(runs, "test error (%), epoch chosen on validation" if classify
                  else "test loss, epoch chosen on validation"), out / "table2.png")
    save(table2_curves(curves, "val_error" if classify else "val_loss"), out / "table2_curves.png")
    print(markdown)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``topo demo``: the main job on the bundled digits (:func:`topo.experiments.demo.run_demo`)."""
    from topo.experiments.demo import run_demo

    summary = run_demo(args.out, epochs=args.epochs, progress=not args.quiet)
    print(summary)
    return 0


def _training_options(parser: argparse.ArgumentParser, model_default: str = "mlp") -> None:
    parser.add_argument("--model", default=model_default,
                        help=f"Table 1 model: {', '.join(MODEL_NAMES)}; or model-dataset, e.g. mlp-mnist, cnn-cifar10")
    parser.add_argument("--dataset", help=f"{', '.join(DATASET_NAMES)} (default: the model's)")
    parser.add_argument("--data-dir", help="folder with the dataset's files (default: $TOPO_DATA)")
    parser.add_argument("--epochs", type=int, help="default: Table 1's")
    parser.add_argument("--widths", type=int, nargs="+",
                        help="dense baseline's layer widths (default: Table 1's); sparse methods widen them to "
                             "match its number of non-zeros")
    parser.add_argument("--batch-size", type=int, help="default: Table 1's (128; VAE 256)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1 …")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    parser.add_argument("--adapt-every", type=int, help="epochs between adaptations (default: Table 1's; SET: 1)")
    parser.add_argument("--distribution", default="uniform", choices=["uniform", "er", "erk"],
                        help="how the density is spread over layers (uniform: the paper's; er/erk: the DST papers')")
    parser.add_argument("--dense-first-last", action="store_true",
                        help="keep the first and last sparsified layers dense, as the DST papers do")
    parser.add_argument("--same-widths", action="store_true",
                        help="train sparse methods on the dense model's widths instead of budget-matched wider ones")
    parser.add_argument("--patience", type=int, help="early stopping after this many epochs without improvement")
    parser.add_argument("--max-batches", type=int, help="cap on training batches per epoch (quick trials)")
    parser.add_argument("--val-max-batches", type=int, help="cap on validation and test batches (of 1024) per epoch")
    parser.add_argument("--keep-weights", action="store_true",
                        help="store every snapshot's weights (float16) too, for weighted measures over training")


def _executor_options(parser: argparse.ArgumentParser, what: str, processes: bool = False) -> None:
    group = parser.add_argument_group("executor", f"where the {what} run (docs: Scaling out on Ray)")
    group.add_argument("--executor", choices=["local", "processes", "ray"] if processes else ["local", "ray"],
                       default="local",
                       help=f"local: the {what} one after the other here; "
                            + ("processes: in parallel in --workers processes on this machine; " if processes else "")
                            + 'ray: as Ray tasks, in parallel (pip install "topo[ray]")')
    if processes:
        group.add_argument("--workers", type=int, metavar="N",
                           help="processes: how many worker processes (default: one per core)")
    group.add_argument("--address", help="Ray: join this cluster (auto, or HOST:PORT); default: start a local "
                                         "one on this machine")
    group.add_argument("--cpus-per-run", type=float, help="Ray: CPUs each run asks for (default 1)")
    group.add_argument("--gpus-per-run", type=float,
                       help="Ray: GPUs each run asks for, fractions share one (0.25: four runs per GPU; default "
                            "1 when the cluster has GPUs)")
    group.add_argument("--max-retries", type=int, default=3,
                       help="Ray: how often a run whose worker died is started again (it resumes; default 3)")
    group.add_argument("--force", action="store_true",
                       help="Ray: accept a relative or /tmp output root on a cluster of several machines")


def _global_options(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument("--debug", action="store_true", default=default, help="show tracebacks")
    parser.add_argument("--quiet", action="store_true", default=default, help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every ``topo`` command (the documentation's command-line reference is made from it)."""
    parser = argparse.ArgumentParser(prog="topo", description="Adaptive weight sparsity: train, record, analyse.")
    _global_options(parser, False)
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, argparse.SUPPRESS)  # after the command too, without resetting one given before it
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    command = functools.partial(sub.add_parser, parents=[common])

    p = command("analyze", help="graph metrics of a checkpoint or run directory",
                       description="Graph metrics (Figure 5) of every layer of a PyTorch checkpoint or topo run.")
    p.add_argument("path", nargs="+",
                   help="run directories (several: one tidy table, --csv), or one checkpoint: .pt/.pth/.bin/.ckpt "
                        "(any layout), .safetensors, a sharded *.index.json or a directory holding one")
    p.add_argument("--key", help="checkpoints: path of the weights inside the file (model_state, a/b), when the "
                                 "largest mapping of tensors is not them")
    p.add_argument("--backbone", metavar="magnitude:F|disparity:A",
                   help="checkpoints: analyse the backbone of the weights: the fraction F of largest |w| "
                        "(per layer, or --global), or the disparity filter at significance A")
    p.add_argument("--global", dest="global_backbone", action="store_true",
                   help="with --backbone magnitude:F, the largest weights of the whole model")
    p.add_argument("--path-sources", type=int, metavar="N",
                   help="estimate mean shortest paths from N random sources, with their standard error "
                        "(default: exact up to 4,096 nodes, 1,024 sources above)")
    p.add_argument("--json", action="store_true", help="JSON records on stdout")
    p.add_argument("--csv", help="CSV file ('-' for stdout); for run directories, where the tidy table goes "
                                 "(one run: also RUN/graph_metrics.csv, its default)")
    p.add_argument("--layers", help="glob over layer names, e.g. 'lstm.weight_hh*'")
    p.add_argument("--resume-dir", metavar="DIR",
                   help="checkpoints: where each matrix's results are kept as it finishes, so the same command "
                        "continues after an interruption (default: FILE.partial beside --csv FILE, else "
                        "~/.cache/topo/analyze); removed when the analysis completes")
    p.add_argument("--heads", action="store_true",
                   help="split attention projections into one graph per head ([q.h3]; heads from config.json or "
                        "--num-heads)")
    p.add_argument("--num-heads", type=int, metavar="H", help="attention heads, where no config.json says it")
    p.add_argument("--embeddings", action="store_true", help="analyse embedding tables too (left out by default)")
    p.add_argument("--null", choices=["er", "degree", "nm"],
                   help="measure every graph against random graphs of a null model: er (same shape and count), "
                        "degree (same fan-in and fan-out, curveball), nm (random N:M); adds <metric>_null_mean, "
                        "_null_std and _z")
    p.add_argument("--null-samples", type=int, default=20, metavar="K", help="null graphs per graph (default 20)")
    p.add_argument("--conv", choices=["auto", "channel", "kernel"], default="auto",
                   help="convolutions as channel graphs, kernel graphs ((in channel, tap) → out channel), or auto: "
                        "the kernel view where the channel graph would be nearly complete")
    p.add_argument("--device", default="cpu",
                   help="cpu (one graph at a time, CPU kernels), or cuda/cuda:N (a whole run in batches on the GPU)")
    p.add_argument("--small-world", type=int, default=0, metavar="N",
                   help="also σ and ω against N degree-preserving random graphs")
    p.add_argument("--plot", help="draw a figure into this file: Figure 5 for a run directory, degree "
                                  "distributions and metrics by depth for a checkpoint")
    _executor_options(p, "runs (or a checkpoint's matrices)", processes=True)
    p.set_defaults(func=cmd_analyze)

    p = command("compare", help="topology distance (NNSTD) between two runs or checkpoints",
                       description="Per layer (matched by name), the NNSTD distance of two runs' or checkpoints' "
                                   "masks (Liu et al. 2020): 0 for the same topology up to a permutation of neurons, "
                                   "1 for disjoint ones; beside it the distance of independent random masks of the "
                                   "same counts.")
    p.add_argument("run_a", help="run directory or checkpoint (anything topo analyze reads)")
    p.add_argument("run_b", help="run directory or checkpoint with layers of the same names and shapes")
    p.add_argument("--epoch", type=int, help="snapshot of run directories to compare (default: each one's last)")
    p.add_argument("--key", help="checkpoints: path of the weights inside the file")
    p.add_argument("--random-samples", type=int, default=20, metavar="K",
                   help="random mask pairs for the nnstd_random baseline (default 20)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_compare)

    p = command("plot", help="draw Figure 3, 4 or 5 from run directories",
                       description="Draw a figure of the paper from one or more run directories.")
    p.add_argument("runs", nargs="+", help="run directories")
    p.add_argument("--figure", choices=["3", "4", "5", "degrees"], default="5",
                   help="3 (transplant), 4 (low-strength weights), 5 (graph metrics, turnover and exploration) or "
                        "degrees (fan-in/fan-out distributions against a random mask's Binomial)")
    p.add_argument("-o", "--output", required=True, help="image file (.png, .pdf, .svg)")
    p.add_argument("--layer", help="Figure 4: layer to show (default: the first); Figure 5: glob (or exact name) of "
                                   "the graphs to draw, e.g. 'lstm.weight_hh*' (default: all)")
    p.add_argument("--metric", default="val_loss", help="Figure 3: stats column to plot (val_loss, val_acc, …)")
    p.add_argument("--over-seeds", action="store_true",
                   help="Figures 3, 4, 5: runs whose names differ only in -sN (the seed) as one line, mean ± std")
    p.set_defaults(func=cmd_plot)

    p = command("report", help="one self-contained HTML page of runs or checkpoints",
                description="Write one HTML page (figures embedded, tables that scroll and sort, nothing fetched) "
                            "telling the story of run directories (their configuration, scores, Figure 5 per layer, "
                            "degree distributions, masks, metric tables; several runs compared) or of checkpoints "
                            "(a summary per projection, graphs far from their null, metrics by block, heads as "
                            "heat maps, every graph; several checkpoints of one architecture compared per graph "
                            "and per layer by NNSTD).")
    p.add_argument("paths", nargs="+",
                   help="run directories, or checkpoints of one architecture (anything topo analyze reads), or the "
                        "tables topo analyze CHECKPOINT --csv wrote of them (no second analysis)")
    p.add_argument("-o", "--output", required=True, help="the HTML file to write")
    p.add_argument("--title", help="the page's title")
    p.add_argument("--layers", help="glob over layer names")
    p.add_argument("--backbone", metavar="magnitude:F|disparity:A", help="checkpoints: analyse this backbone")
    p.add_argument("--key", help="checkpoints: path of the weights inside the file (see analyze)")
    p.add_argument("--heads", action="store_true", help="split attention projections into one graph per head; "
                                                        "heads are drawn as block × head heat maps")
    p.add_argument("--num-heads", type=int, metavar="H", help="checkpoints: attention heads, where no config.json "
                                                             "says it")
    p.add_argument("--embeddings", action="store_true", help="checkpoints: analyse embedding tables too")
    p.add_argument("--conv", choices=["auto", "channel", "kernel"], default="auto",
                   help="convolutions as channel or kernel graphs (see analyze)")
    p.add_argument("--null", choices=["er", "degree", "nm"],
                   help="null-model bands and z-scores (see analyze); graphs with |z| > 3 are listed")
    p.add_argument("--null-samples", type=int, default=20, metavar="K")
    p.add_argument("--nnstd-samples", type=int, default=2, metavar="K",
                   help="several checkpoints: random mask pairs behind each layer's NNSTD baseline (default 2; "
                        "0: no NNSTD, which is the slow part for large layers)")
    p.set_defaults(func=cmd_report)

    p = command("prune", help="prune a Hugging Face causal language model one-shot (magnitude, Wanda, SparseGPT)",
                description="One-shot pruning of every linear layer in each decoder block of a Hugging Face causal "
                            "language model, block by block on calibration text (the authors' rules: "
                            "topo.sparsity.oneshot); the pruned model and its tokenizer are saved as safetensors.")
    p.add_argument("model_dir", help="a Hugging Face model directory (config.json, weights, tokenizer)")
    p.add_argument("--method", required=True, choices=["magnitude", "wanda", "sparsegpt"])
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--density", type=float, metavar="S", help="the fraction of each layer's weights kept")
    target.add_argument("--structure", metavar="N:M", help="N of every M consecutive inputs kept, e.g. 2:4")
    p.add_argument("--calibration", metavar="FILE.txt",
                   help="text to draw the calibration sequences from (wanda, sparsegpt)")
    p.add_argument("--samples", type=int, default=128, help="calibration sequences (default 128)")
    p.add_argument("--seqlen", type=int, help="tokens per sequence (default 2048, at most the model's context)")
    p.add_argument("--seed", type=int, default=0, help="where the calibration windows start (default 0)")
    p.add_argument("-o", "--output", required=True, help="the pruned model's folder (new, or empty)")
    p.set_defaults(func=cmd_prune)

    p = command("train", help="train one model with one method, recorded",
                       description="Train a Table 1 model with a sparsity method and record the run.")
    _training_options(p)
    p.add_argument("--method", default="adaptive", help=f"one of: {', '.join(TRAIN_METHODS)}")
    p.add_argument("--log-alpha", type=float, default=0.5, help="−log10 α (0.5 → α ≈ 0.32)")
    p.add_argument("--k", type=float, default=0.5, help="adaptive pruning threshold k")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs", help="parent folder of the run directory")
    p.add_argument("--name", help="run directory name (default from the configuration)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in the directory if its configuration is this one (more epochs extend it)")
    p.add_argument("--fresh-dir", action="store_true",
                   help="if the directory holds a run of another configuration, train into NAME-2, NAME-3, …")
    p.set_defaults(func=cmd_train)

    p = command("transplant", help="retrain a run's learned mask from scratch (Figure 3)",
                       description="Section 5.1: train RUN's mask fixed from a fresh initialisation.")
    p.add_argument("run", help="run directory recorded by topo train")
    p.add_argument("--epoch", type=int, help="snapshot to take the mask from (default: last)")
    p.add_argument("--out", help="new run directory (default: RUN-transplant-eEPOCH)")
    p.add_argument("--epochs", type=int, help="default: the parent's")
    p.add_argument("--seed", type=int, help="initialisation seed (default: parent's + 1; rewind: parent's)")
    p.add_argument("--init", choices=["fresh", "rewind"], default="fresh",
                   help="fresh initialisation (Section 5.1) or the parent's own initial weights (lottery ticket)")
    p.add_argument("--data-dir")
    p.set_defaults(func=cmd_transplant)

    p = command("reproduce", help="reproduce a table of the paper",
                       description="Reproduce Table 2 for one model over seeds (mean ± std).")
    p.add_argument("table", choices=["table2", "pruning"],
                   help="table2: the paper's Table 2; pruning: one-shot pruning against sparse training at one "
                        "density on the dense widths, with transplants (docs: One-shot pruning)")
    _training_options(p)
    p.add_argument("--log-alpha", type=float, nargs="+", default=[0.5, 1.0])
    p.add_argument("--k", type=float, nargs="+", default=[0.25, 0.5])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--methods", nargs="+", metavar="METHOD",
                   help=f"methods to compare (default: the paper's); any of {', '.join(TRAIN_METHODS)}")
    pruning = p.add_argument_group("pruning", "the one-shot pruning row")
    pruning.add_argument("--density", type=float, default=0.5, help="density of every sparse arm")
    pruning.add_argument("--structures", nargs="*", default=["2:4"], metavar="N:M",
                         help="N:M structures one-shot pruning also prunes to")
    pruning.add_argument("--pruners", nargs="+", choices=ONESHOT_METHODS, help="default: all three")
    pruning.add_argument("--finetune-epochs", type=int, default=5)
    pruning.add_argument("--calibration-samples", type=int, default=64)
    pruning.add_argument("--no-transplants", action="store_true")
    p.add_argument("--out", default="results/table2")
    p.add_argument("--fresh-dir", action="store_true",
                   help="runs whose directory holds another configuration go to NAME-2, NAME-3, … instead of "
                        "stopping with the differing fields")
    _executor_options(p, "runs of the grid")
    p.set_defaults(func=cmd_reproduce)

    p = command("demo", help="a few-minute end-to-end run on the bundled digits",
                       description="Train adaptive, random fixed and dense MLPs on the bundled digits, record "
                                   "them, transplant the adaptive topology, compute graph metrics, save figures.")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--epochs", type=int, default=20)
    p.set_defaults(func=cmd_demo)
    return parser


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> str:  # noqa: ANN001
    """Warnings as one line naming what is wrong, not the source line that warned."""
    return f"topo: warning: {message}\n"


def main(argv: Sequence[str] | None = None) -> int:
    """The ``topo`` command: parse ``argv``, run the command, and turn topo's errors into one line on stderr and exit
    code 1 (``--debug`` adds the traceback); returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if not args.quiet else logging.WARNING, format="%(message)s")
    warnings.formatwarning = _one_line_warning
    try:
        return args.func(args)
    except (TopoError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as exc:
        if args.debug:
            traceback.print_exc()
        print(f"topo: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # the reader of stdout left (| head): say so once, and keep Python from failing to flush at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print("topo: error: output closed before it was all written (stdout piped into a command that ended)",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("topo: interrupted", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
