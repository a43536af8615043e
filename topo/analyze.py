"""``topo analyze``: the graph metrics of a checkpoint, or of every snapshot of one or many run directories.

>>> result = analyze_checkpoint("model.safetensors", backbone="magnitude:0.1")       # doctest: +SKIP
>>> result.table                       # one row per graph: layer, graph, kind, shape, densities, metrics
>>> analyze_runs(["runs/a", "runs/b"], executor="ray")      # doctest: +SKIP
>>> # one tidy table (run, epoch, layer, graph, metric, value) over both runs, each analysed by a Ray task

Layers are read one at a time (:mod:`topo.record.formats`), so a model larger than memory is analysed in about two
layers' worth of it; a global magnitude backbone reads the model twice (once to find the threshold). Metrics are
those that apply to each graph's kind (:data:`topo.graph.METRICS`). Exact shortest paths are computed up to
:data:`EXACT_PATH_LIMIT` nodes; larger graphs get an estimate from :data:`DEFAULT_PATH_SOURCES` sampled sources
with its standard error (``path_sources`` chooses). On a CUDA device every path length is exact, and a layer's
graphs of one size (its heads) are measured in one batch (:func:`topo.graph.summarize_many`): the search that
counts a graph's components there finds all its distances.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from topo.errors import CheckpointError, ConfigError, TopoError
from topo.executors import Job, RayOptions, run_jobs
from topo.families import Family, detect, detect_model, oriented, read_config
from topo.graph import Graph, metrics_table, recurrent_gates, summarize, summarize_many
from topo.graph.backbone import GlobalMagnitude, disparity_backbone, magnitude_backbone
from topo.graph.build import graph_sources
from topo.graph.compare import run_topology
from topo.graph.metrics import null_rows
from topo.graph.singular import weighted_spectral_gap
from topo.options import BackboneSpec, check_analysis_options
from topo.record import RunReader, read_checkpoint
from topo.record.formats import CheckpointSource, open_checkpoint, state_dict_source
from topo.record.live import METRICS_FILE, read_metrics, reusable_rows
from topo.record.store import write_csv
from topo.resume import MatrixResults, default_root
from topo.sparsity.structure import nm_pattern

log = logging.getLogger(__name__)

EXACT_PATH_LIMIT = 4096
#: Graph kinds whose block is the biadjacency of the weights, where the weighted spectral gap applies.
WEIGHTED_KINDS = ("bipartite", "attention", "embedding", "kernel", "recurrent-input")
DEFAULT_PATH_SOURCES = 1024


@dataclass
class CheckpointAnalysis:
    """What :func:`analyze_checkpoint` found.

    Attributes
    ----------
    table: one row per graph (layer, graph, kind, shape (the graph's own block, out × in: a head's rows, a gate's
        block, a Conv1D weight read transposed; a convolution's out × in × kernel),
        mask_density, ``n_m`` for N:M layers (:func:`topo.sparsity.structure.nm_pattern`), then every metric that
        applies to any graph; cells of metrics that do not apply to a graph's kind are empty).
    records: the same rows as dicts holding only the metrics that apply.
    source: where the weights were found (e.g. ``"weights under 'model_state' (…)"``).
    dense: every analysed layer is dense and no backbone was taken: its graphs are complete.
    degrees: graph name → (degrees of its first part, of its second part) for bipartite graphs, or (degrees,)
        for square ones, for the per-layer figure.
    reading: how the weights were read (:func:`describe_reading`): which were transposed, which embedding
        tables were left out, what stayed fused; empty when nothing needed saying.
    """

    table: pd.DataFrame
    records: list[dict]
    source: str
    dense: bool
    degrees: dict[str, tuple[np.ndarray, ...]] = field(default_factory=dict)
    reading: str = ""

    def degree_table(self) -> pd.DataFrame:
        """:attr:`degrees` as the tidy frame :func:`topo.plot.layer_figure` draws: graph, side (``fan-out`` and
        ``fan-in`` of a bipartite graph's two parts, ``degree`` of a square one), degree."""
        return pd.DataFrame([(graph, side, int(d)) for graph, parts in self.degrees.items()
                             for side, values in zip(("fan-out", "fan-in") if len(parts) == 2 else ("degree",),
                                                     parts, strict=True) for d in values],
                            columns=["graph", "side", "degree"])


def describe_reading(family: Family, names: list[str], left_out: list[str], tied: dict[str, str] | None = None) -> str:
    """One line on how a model's weights were read: the family, the weights read transposed, the embedding
    tables left out, the weights tied to others (read once) and anything left fused."""
    parts = [f"{', '.join(f'{a} tied to {b}' for a, b in list(tied.items())[:3])} (read once)"] if tied else []
    transposed = [n for n in names if n in family.transposed]
    if transposed:
        parts.append(f"{len(transposed)} Conv1D weight(s) stored (in, out) read transposed (found by "
                     f"{family.found_by}: {', '.join(transposed[:3])}{', …' if len(transposed) > 3 else ''})")
    if left_out:
        parts.append(f"embedding table(s) left out: {', '.join(left_out[:4])}{', …' if len(left_out) > 4 else ''} "
                     "(--embeddings analyses them)")
    parts += list(family.notes)
    return "; ".join(parts)


def _select(names: list[str], pattern: str | None, where: str | os.PathLike) -> list[str]:
    """The ``names`` matching the glob ``pattern`` (all without one); ConfigError naming ``where`` if none do."""
    if pattern is None:
        return names
    chosen = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    if not chosen:
        raise ConfigError(f"{where}: no layer matches {pattern!r}; layers: {', '.join(names[:12])}")
    return chosen


def _selected(source: CheckpointSource, family: Family, layers: str | None,
              embeddings: bool) -> tuple[list[str], list[str]]:
    """The layers an analysis reads (``layers`` glob, embedding tables only with ``embeddings``), and the
    embedding tables it leaves out; a ConfigError when only embedding tables are selected."""
    names = _select(source.names, layers, source.path)
    left_out = [] if embeddings else [n for n in names if family.role(n, source.shape(n)).kind == "embedding"]
    names = [n for n in names if n not in left_out]
    if not names:
        raise ConfigError(f"{source.path}: every selected layer is an embedding table ({', '.join(left_out[:4])}); "
                          "--embeddings analyses them")
    return names, left_out


def _warn_without_nm(null: str | None, records: list[dict[str, Any]], where: str | os.PathLike) -> None:
    if null == "nm" and not any("n_m" in record for record in records):
        warnings.warn(f"--null nm: no analysed layer of {where} is N:M, so no graph has an nm null; "
                      "--null er or --null degree apply to any layer", UserWarning, stacklevel=3)


def _degrees(graph: Graph) -> tuple[np.ndarray, ...]:
    """Each node's degree (per side of a bipartite graph: inputs, then outputs), summed where the adjacency lives;
    a bipartite graph's from its biadjacency block alone (a fifth of a 4096 × 11008 layer's adjacency)."""
    adjacency = graph.adjacency
    on_device = torch.is_tensor(adjacency) and adjacency.device.type != "cpu"
    adjacency = adjacency if on_device else graph.numpy().adjacency

    def summed(block: np.ndarray | torch.Tensor, axis: int) -> np.ndarray:
        return block.sum(axis, dtype=torch.int64).cpu().numpy() if on_device else block.sum(axis, dtype=np.int64)

    if not graph.is_bipartite:
        return (summed(adjacency, 1),)
    split = graph.parts[0]
    block = adjacency[split:, :split]
    return summed(block, 0), summed(block, 1)


def analyze_checkpoint(
    path: str | os.PathLike,
    *,
    key: str | None = None,
    layers: str | None = None,
    backbone: str | BackboneSpec | None = None,
    global_backbone: bool = False,
    path_sources: int | None = None,
    small_world: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
    heads: bool = False,
    embeddings: bool = False,
    conv: str = "auto",
    num_heads: int | None = None,
    null: str | None = None,
    null_samples: int = 20,
    resume_dir: str | os.PathLike | None = None,
    executor: str = "local",
    ray_options: RayOptions | None = None,
    workers: int | None = None,
) -> CheckpointAnalysis:
    """Summarise every graph of every layer of the checkpoint at ``path`` (see the module docstring).

    What the weights mean (Conv1D orientation, fused q/k/v, heads, embeddings) is read from the ``config.json``
    beside the checkpoint when there is one, else from the names (:mod:`topo.families`).

    Parameters
    ----------
    key: path of the weights inside a PyTorch file (``model_state``, ``a/b``), when the largest mapping is not it.
    layers: glob over layer names, applied before anything is loaded.
    backbone: ``"magnitude:F"`` or ``"disparity:A"`` (:mod:`topo.graph.backbone`), for dense models.
    global_backbone: the magnitude backbone over the whole model rather than per layer.
    path_sources: estimate mean shortest paths from this many sources (default: exact up to
        :data:`EXACT_PATH_LIMIT` nodes, :data:`DEFAULT_PATH_SOURCES` sources above; exact on a CUDA device).
    device: run each graph's kernels there (``cuda``: a layer's graphs of one size in one batch, exact paths),
        else the CPU backend.
    heads: split attention projections into one graph per head (``…[q.h3]``).
    embeddings: analyse embedding tables too (left out by default).
    conv: convolutions as ``"channel"`` or ``"kernel"`` graphs, or ``"auto"`` (:func:`topo.graph.conv_view`).
    num_heads: the number of attention heads, where no ``config.json`` says it.
    null, null_samples: measure every graph against ``null_samples`` graphs of a null model (``er``, ``degree``,
        ``nm``; :mod:`topo.graph.null`): ``<metric>_null_mean``, ``_null_std`` and ``_z`` columns.
    resume_dir: keep each matrix's results under this folder as it finishes (:mod:`topo.resume`), so the same call
        after an interruption continues from the matrices done; removed once the analysis completes or refuses
        the checkpoint.
    executor, ray_options, workers: ``"processes"`` analyses the matrices in parallel in ``workers`` processes
        on this machine (default: one per core), ``"ray"`` as one Ray task each; every job reads its own tensors
        from ``path`` (for Ray, a path every worker sees); the table is the local one's. Not with
        ``global_backbone``, whose threshold ranks every layer in one process.

    Bipartite graphs (layers, projections, kernels) also get the weighted spectral gap of their active weights'
    magnitudes (:func:`topo.graph.singular.weighted_spectral_gap`).
    """
    check_analysis_options(backbone=backbone, global_backbone=global_backbone, path_sources=path_sources,
                           small_world=small_world, null=null, null_samples=null_samples, conv=conv,
                           num_heads=num_heads)
    if executor != "local" and global_backbone:
        raise ConfigError("--global ranks every layer's weights in one process: analyse it with the local executor")
    if workers is not None and (executor != "processes" or workers < 1):
        raise ConfigError(f"--workers applies to --executor processes and must be >= 1, got {workers} with "
                          f"{executor}")
    source, family = _open_with_family(path, key, num_heads)
    numeric = {"backbone": backbone, "global_backbone": global_backbone, "path_sources": path_sources,
               "small_world": small_world, "device": device, "heads": heads, "conv": conv, "null": null,
               "null_samples": null_samples}
    kept = _kept_results(resume_dir, path, key, layers, family, numeric)
    try:
        if executor != "local":
            result = _analyze_on_workers(path, source, family, key=key, layers=layers, embeddings=embeddings,
                                         num_heads=num_heads, resume_dir=resume_dir, numeric=numeric,
                                         executor=executor, ray_options=ray_options, workers=workers,
                                         progress=progress)
        else:
            result = _analyze_source(source, family, layers=layers, embeddings=embeddings, progress=progress,
                                     kept=kept, **numeric)
    except TopoError:
        if kept is not None:  # a refused file or option: nothing to resume once it is fixed (its key changes)
            kept.clear()
        raise
    if kept is not None:
        kept.clear()
    return result


def _open_with_family(path: str | os.PathLike, key: str | None,
                      num_heads: int | None) -> tuple[CheckpointSource, Family]:
    """The checkpoint at ``path`` opened for reading, and what its weights mean (``config.json`` beside it, else
    the names; ``num_heads`` where no config says)."""
    source = open_checkpoint(path, key)
    return source, detect({n: source.shape(n) for n in source.names}, read_config(path), heads=num_heads)


def _kept_results(resume_dir: str | os.PathLike | None, path: str | os.PathLike, key: str | None,
                  layers: str | None, family: Family, numeric: dict[str, Any]) -> MatrixResults | None:
    """Where each matrix's results are kept (:mod:`topo.resume`), keyed by every option that changes a number:
    ``numeric`` (the options :func:`_analyze_source` computes with), the key inside the file, the family the
    weights are read as, and the layer selection where the global backbone makes it change numbers."""
    if resume_dir is None:
        return None
    changing = {**{name: None if value is None else value if isinstance(value, (bool, int, float)) else str(value)
                   for name, value in numeric.items()},
                "key": key, "layers": layers if numeric["global_backbone"] else None, "family": family.to_json()}
    return MatrixResults(resume_dir, path, changing, required=Path(resume_dir) != default_root())


def _analyze_on_workers(path: str | os.PathLike, source: CheckpointSource, family: Family, *, key: str | None,
                        layers: str | None, embeddings: bool, num_heads: int | None,
                        resume_dir: str | os.PathLike | None, numeric: dict[str, Any], executor: str,
                        ray_options: RayOptions | None, workers: int | None,
                        progress: bool) -> CheckpointAnalysis:
    """:func:`analyze_checkpoint` with one job per matrix (:func:`_matrix_job`) in worker processes or Ray tasks,
    assembled in model order."""
    names, left_out = _selected(source, family, layers, embeddings)
    portable = {**numeric, "device": None if numeric["device"] is None else str(numeric["device"])}
    jobs = [Job(name, _matrix_job, (str(path), key, name, num_heads, None if resume_dir is None else str(resume_dir),
                                    portable)) for name in names]
    parts = run_jobs(jobs, executor, ray_options, progress=progress, workers=workers,
                     headline=lambda part: f"{len(part.records)} graph(s)")
    records = [record for part in parts for record in part.records]
    _warn_without_nm(numeric["null"], records, source.path)
    return CheckpointAnalysis(pd.DataFrame(records), records, source.description, all(p.dense for p in parts),
                              {graph: d for part in parts for graph, d in part.degrees.items()},
                              describe_reading(family, names, left_out, source.tied))


def _matrix_job(path: str, key: str | None, name: str, num_heads: int | None, resume_dir: str | None,
                numeric: dict[str, Any]) -> CheckpointAnalysis:
    """One matrix of a checkpoint analysed where the job runs: the checkpoint opened there, its kept results
    (shared with the driver's, when ``resume_dir`` is on storage every worker sees) used and extended."""
    source, family = _open_with_family(path, key, num_heads)
    kept = _kept_results(resume_dir, path, key, None, family, numeric)
    return _analyze_source(source, family, only=[name], embeddings=True, progress=False, kept=kept, **numeric)


def analyze_model(model: torch.nn.Module, **options) -> CheckpointAnalysis:
    """:func:`analyze_checkpoint` of a model at hand, its layers in module order and what they mean read from its
    module classes (``Conv1D``, ``nn.Embedding``, ``nn.MultiheadAttention``) and its ``config``
    (:func:`topo.families.detect_model`). Takes the options of :func:`analyze_checkpoint` but ``key``."""
    source = state_dict_source(model.state_dict(), type(model).__name__)
    return _analyze_source(source, detect_model(model), **options)


def _analyze_source(
    source: CheckpointSource,
    family: Family,
    *,
    layers: str | None = None,
    backbone: str | BackboneSpec | None = None,
    global_backbone: bool = False,
    path_sources: int | None = None,
    small_world: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
    heads: bool = False,
    embeddings: bool = False,
    conv: str = "auto",
    null: str | None = None,
    null_samples: int = 20,
    kept: MatrixResults | None = None,
    only: list[str] | None = None,
) -> CheckpointAnalysis:
    spec = check_analysis_options(backbone=backbone, global_backbone=global_backbone, path_sources=path_sources,
                                  small_world=small_world, null=null, null_samples=null_samples, conv=conv)
    names, left_out = _selected(source, family, layers, embeddings)
    if only is not None:
        names = [n for n in names if n in only]
    gates = recurrent_gates({n: source.shape(n) for n in names})
    done = {n: results for n in names if kept is not None and (results := kept.get(n)) is not None}
    if done:
        log.info(f"{source.path}: resuming, {len(done)} of {len(names)} matrices already analysed ({kept.path})")
    overall = None
    if global_backbone and len(done) < len(names):
        overall = GlobalMagnitude(spec.value, sum(int(np.prod(source.shape(n))) for n in names))
        for name in tqdm(names, desc="global threshold", unit="layer", disable=not progress):
            overall.observe(source.load(name).weight)
    records, degrees, dense = [], {}, spec is None
    for name in tqdm(names, desc="graph metrics", unit="layer", disable=not progress):
        if name in done:
            records += done[name]["records"]
            degrees.update({graph: tuple(np.asarray(part, dtype=np.int64) for part in parts)
                            for graph, parts in done[name]["degrees"].items()})
            dense = dense and done[name]["dense"]
            continue
        first_record = len(records)
        layer = source.load(name)
        weight = layer.weight
        mask = overall.mask(weight) if overall is not None else _analysed_mask(layer, spec)
        del layer  # the mask and the weight are needed from here on, nothing else
        layer_dense = bool(mask.all())
        dense = dense and layer_dense
        pattern = nm_pattern(oriented(mask, family.role(name, tuple(mask.shape))))
        on_device = mask.to(device) if device is not None else mask
        batched = on_device.is_cuda and not path_sources
        if on_device.device.type == "cpu":  # numpy graphs: the CPU kernels are numpy's, and torch's threads
            on_device = on_device.numpy()   # waiting beside numpy's BLAS threads cost a head ~30 ms an operation
        layer_sources = graph_sources({name: on_device}, gates, family=family, heads=heads, conv=conv,
                                      weights={name: weight})
        graphs = {graph_name: source.build(source.block) for graph_name, source in layer_sources.items()} \
            if batched else {}
        summaries = dict(zip(graphs, summarize_many(list(graphs.values()), small_world_graphs=small_world),
                             strict=True)) if batched else {}
        for graph_name, graph_source in layer_sources.items():
            shape = "×".join(map(str, graph_source.layer_shape or tuple(graph_source.block.shape)))
            graph = graphs[graph_name] if batched else graph_source.build(graph_source.block)
            sources = None if batched else path_sources if path_sources else (
                DEFAULT_PATH_SOURCES if graph.n_nodes > EXACT_PATH_LIMIT else None)
            if batched:
                summary = summaries[graph_name]
            else:
                summary = summarize(graph, "auto", small_world_graphs=small_world, path_sources=sources)
            if graph.kind in WEIGHTED_KINDS:
                summary["weighted_spectral_gap"] = weighted_spectral_gap(graph_source.weights, graph_source.block)
            record = {"layer": name, "graph": graph_name, "kind": graph.kind, "shape": shape,
                      "mask_density": summary.pop("mask_density")}
            degrees[graph_name] = _degrees(graph)
            del graph  # a null's graphs are built one at a time: the observed one is not held beside them
            if null is not None:
                summary.update(null_rows(graph_source, summary, null, null_samples, zlib.crc32(graph_name.encode()),
                                         device, sources))
            if pattern is not None:
                record["n_m"] = pattern
            records.append({**record, **summary})
        if kept is not None:
            kept.put(name, {"records": records[first_record:], "dense": layer_dense,
                            "degrees": {r["graph"]: degrees[r["graph"]] for r in records[first_record:]}})
        del mask, on_device, weight
    if only is None:
        _warn_without_nm(null, records, source.path)
    table = pd.DataFrame(records)
    return CheckpointAnalysis(table, records, source.description, dense, degrees,
                              describe_reading(family, names, left_out, source.tied))


def _analysed_mask(layer: Any, spec: BackboneSpec | None) -> torch.Tensor:
    """The mask of a loaded layer an analysis reads: its own, or its weights' backbone when ``spec`` names one."""
    if spec is None:
        return layer.mask
    if spec.kind == "magnitude":
        return magnitude_backbone(layer.weight, spec.value)
    return disparity_backbone(layer.weight, spec.value)


def layer_distances(paths: list[str | os.PathLike], *, key: str | None = None, layers: str | None = None,
                    backbone: str | BackboneSpec | None = None, embeddings: bool = False, num_heads: int | None = None,
                    samples: int = 2, progress: bool = False) -> pd.DataFrame:
    """Per layer, the NNSTD distance (:func:`topo.graph.compare.nnstd`) of each checkpoint after the first from
    the first, beside its random-mask baseline (:func:`topo.graph.compare.nnstd_random` over ``samples`` pairs):
    the tidy frame ``checkpoint, layer, nnstd, nnstd_random, nnstd_random_std``.

    The checkpoints must hold the same layers (one architecture; :class:`ConfigError` names the first that
    differs), read as :func:`analyze_checkpoint` reads them (``key``, ``layers``, ``backbone``, ``embeddings``,
    oriented out × in). A model with attention projections (read from its family) is compared layer by layer,
    each layer's inputs taken as they are, streaming one layer of each checkpoint at a time; other models as one
    feed-forward chain (each matching renames the next layer's inputs; Liu et al. 2020), their masks held
    together. Cost: the minimum-cost matching of a layer of n outputs is about n³; a 4096-output layer takes
    seconds per pair, and every sample is another pair.
    """
    from topo.graph.compare import nnstd, nnstd_random

    spec = check_analysis_options(backbone=backbone, num_heads=num_heads)
    if samples < 2:
        raise ConfigError(f"the NNSTD random baseline needs at least 2 samples, got {samples}")
    if len(paths) < 2:
        raise ConfigError(f"NNSTD compares two or more checkpoints, got {len(paths)}")
    opened = [_open_with_family(path, key, num_heads) for path in paths]
    (first, family), others = opened[0], opened[1:]
    names, _ = _selected(first, family, layers, embeddings)
    for (source, _), path in zip(others, paths[1:], strict=True):
        for name in names:
            if name not in source.names or source.shape(name) != first.shape(name):
                found = f"is {tuple(source.shape(name))}" if name in source.names else "is missing"
                raise ConfigError(f"layer {name} is {tuple(first.shape(name))} in {paths[0]} but {found} in {path}: "
                                  "NNSTD compares checkpoints of one architecture")
    roles = {name: family.role(name, first.shape(name)) for name in names}
    chain = not any(role.kind == "attention" for role in roles.values())

    def masks(source: CheckpointSource, name: str) -> np.ndarray:
        return oriented(_analysed_mask(source.load(name), spec), roles[name]).cpu().numpy().astype(bool)

    rows = []
    for (source, _), path in zip(others, paths[1:], strict=True):
        label = str(path)
        if chain:
            reference, compared = [masks(first, n) for n in names], [masks(source, n) for n in names]
            mean, std = nnstd_random(reference, compared, samples, chain=True)
            rows += list(zip([label] * len(names), names, nnstd(reference, compared), mean, std, strict=True))
            continue
        for name in tqdm(names, desc=f"NNSTD {Path(path).name}", unit="layer", disable=not progress):
            reference, compared = [masks(first, name)], [masks(source, name)]
            mean, std = nnstd_random(reference, compared, samples, chain=False)
            rows.append((label, name, nnstd(reference, compared, chain=False)[0], mean[0], std[0]))
    return pd.DataFrame(rows, columns=["checkpoint", "layer", "nnstd", "nnstd_random", "nnstd_random_std"])


def is_run_directory(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a topo run directory (holds ``run.json``)."""
    return os.path.isdir(path) and os.path.exists(os.path.join(path, "run.json"))


def analyze_run(
    path: str | os.PathLike,
    *,
    layers: str | None = None,
    small_world: int = 0,
    device: str | torch.device | None = None,
    progress: bool = False,
    save: bool = True,
    heads: bool = False,
    conv: str = "auto",
    null: str | None = None,
    null_samples: int = 20,
) -> pd.DataFrame:
    """Tidy graph metrics of every snapshot of the run directory at ``path``, with turnover and exploration.

    The run's weights are read as its model meant them (the family ``run.json`` records: Conv1D orientation,
    fused projections); ``heads`` splits attention projections per head and ``conv`` picks the convolution view
    (:func:`topo.graph.layer_graphs`); ``null`` adds null-model baselines (:func:`topo.graph.metrics_table`). The
    weighted spectral gap is added for every epoch whose weights the run holds (:func:`weighted_gaps`).

    Columns run, epoch, layer, graph, metric, value. ``layers`` is a glob over layer names; ``device`` analyses
    the whole run in batches there (:mod:`topo.graph.batched`); with ``save`` the table is also merged
    (atomically) into ``RUN/graph_metrics.csv``: the rows of the analysed layers are replaced, and those of every
    other layer kept, so analysing some layers never drops what was recorded for the others. Epochs whose metrics
    that file already holds for every selected layer (written live by the recorder, :mod:`topo.record.live`, or by
    an earlier analysis) are not computed again, unless ``small_world`` asks for more than it holds.
    """
    reader = RunReader(path)
    if not reader.epochs:
        raise CheckpointError(f"{path}: run directory has no snapshots yet")
    selected = _select(list(reader.layers), layers, path)
    cached = reusable_rows(read_metrics(path), reader.epochs, selected) \
        if not small_world and not heads and conv == "auto" and null is None else None
    done = set() if cached is None else set(cached.epoch)
    timeline = ((e, {n: m for n, m in masks.items() if n in selected}) for e, masks in reader.iter_masks()
                if e not in done)
    table = metrics_table(timeline, run=reader.name, small_world_graphs=small_world, device=device,
                          progress=progress, family=reader.family, heads=heads, conv=conv, null=null,
                          null_samples=null_samples)
    if null == "nm" and not table["metric"].str.endswith("_null_mean").any():
        warnings.warn(f"--null nm: no analysed layer of {path} is N:M, so no graph has an nm null; --null er or "
                      "--null degree apply to any layer", UserWarning, stacklevel=2)
    table = pd.concat([table, weighted_gaps(reader, selected, heads=heads, conv=conv)], ignore_index=True)
    if done:
        table = pd.concat([cached.assign(run=reader.name), table], ignore_index=True)
        table = table.sort_values("epoch", kind="stable", ignore_index=True)
    topology = run_topology(reader, reader.name)
    table = pd.concat([table, topology[topology["layer"].isin(selected)]], ignore_index=True)
    if save:
        recorded = read_metrics(path)
        others = recorded[~recorded["layer"].isin(selected)] if recorded is not None else None
        merged = table if others is None or others.empty else \
            pd.concat([others.assign(run=reader.name), table], ignore_index=True).sort_values("epoch", kind="stable")
        write_csv(reader.path / METRICS_FILE, merged)
    return table


def run_weights(reader: RunReader) -> dict[int, dict[str, Any]]:
    """Epoch → layer weights, for every epoch whose weights a run holds: its snapshots' (recorded with
    ``keep_weights``, float16) and its checkpoint's (the model at the checkpoint's epoch)."""
    found: dict[int, dict[str, Any]] = {}
    for epoch in reader.epochs:
        try:
            found[epoch] = reader.weights(epoch)
        except CheckpointError:
            break
    checkpoint = reader.path / "checkpoint.pt"
    if checkpoint.exists():
        state = read_checkpoint(checkpoint)
        epoch = int(state["epoch"])
        if epoch not in found and epoch in reader.epochs:
            model = state["model"]
            found[epoch] = {name: model[name] for name in reader.layers if name in model}
    return found


def weighted_gaps(reader: RunReader, layers: list[str], *, heads: bool = False, conv: str = "auto") -> pd.DataFrame:
    """Tidy rows of the weighted spectral gap (:func:`topo.graph.singular.weighted_spectral_gap`) of every bipartite
    graph of ``layers``, at every epoch whose weights the run holds (:func:`run_weights`)."""
    rows = []
    for epoch, weights in sorted(run_weights(reader).items()):
        masks = reader.masks(epoch)
        chosen = {n: masks[n] for n in layers if n in weights}
        gates = recurrent_gates({n: tuple(np.shape(m)) for n, m in masks.items()})
        for graph_name, source in graph_sources(chosen, gates, family=reader.family, heads=heads, conv=conv,
                                                weights={n: weights[n] for n in chosen}).items():
            kind = source.build(source.block).kind
            if kind in WEIGHTED_KINDS:
                layer = next(n for n in chosen if graph_name == n or graph_name.startswith(f"{n}["))
                rows.append((reader.name, epoch, layer, graph_name, "weighted_spectral_gap",
                             weighted_spectral_gap(source.weights, source.block)))
    return pd.DataFrame(rows, columns=["run", "epoch", "layer", "graph", "metric", "value"])


def analyze_runs(
    paths: list[str | os.PathLike],
    *,
    executor: str = "local",
    ray_options: RayOptions | None = None,
    layers: str | None = None,
    small_world: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
    save: bool = True,
    heads: bool = False,
    conv: str = "auto",
    null: str | None = None,
    null_samples: int = 20,
    workers: int | None = None,
) -> pd.DataFrame:
    """:func:`analyze_run` over many run directories, one job each (``executor="processes"`` with ``workers``
    processes, or ``"ray"``: in parallel), as one tidy table in the order of ``paths``. Every path is checked to
    be a run directory before any work starts."""
    for path in paths:
        if not is_run_directory(path):
            raise CheckpointError(f"{path}: not a topo run directory (no run.json); several paths must all be runs")
    names = [RunReader(path).name for path in paths]
    if len(set(names)) < len(names):
        duplicated = sorted({n for n in names if names.count(n) > 1})
        raise ConfigError(f"several runs are named {', '.join(duplicated)}: the table's run column could not "
                          "tell them apart")
    here = progress and executor == "local"
    jobs = [Job(name, _analyze_job, (str(path), layers, small_world, None if device is None else str(device),
                                     here, save, heads, conv, null, null_samples))
            for name, path in zip(names, paths, strict=True)]
    tables = run_jobs(jobs, executor, ray_options, progress=progress, workers=workers,
                      headline=lambda table: f"{table['epoch'].nunique()} epochs")
    return pd.concat(tables, ignore_index=True)


def _analyze_job(path: str, layers: str | None, small_world: int, device: str | None, progress: bool,
                 save: bool, heads: bool = False, conv: str = "auto", null: str | None = None,
                 null_samples: int = 20) -> pd.DataFrame:
    return analyze_run(path, layers=layers, small_world=small_world, device=device, progress=progress, save=save,
                       heads=heads, conv=conv, null=null, null_samples=null_samples)
