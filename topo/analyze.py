"""``topo analyze`` on a checkpoint: stream its layers, take a backbone if asked, summarise every graph.

>>> result = analyze_checkpoint("model.safetensors", backbone="magnitude:0.1")       # doctest: +SKIP
>>> result.table                       # one row per graph: layer, graph, kind, shape, densities, metrics

Layers are read one at a time (:mod:`topo.record.formats`), so a model larger than memory is analysed in about two
layers' worth of it; a global magnitude backbone reads the model twice (once to find the threshold). Metrics are
those that apply to each graph's kind (:data:`topo.graph.METRICS`). Exact shortest paths are computed up to
:data:`EXACT_PATH_LIMIT` nodes; larger graphs get an estimate from :data:`DEFAULT_PATH_SOURCES` sampled sources
with its standard error (``path_sources`` chooses).
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from topo.errors import ConfigError
from topo.graph import Graph, layer_graphs, recurrent_gates, summarize
from topo.graph.backbone import BackboneSpec, GlobalMagnitude, disparity_backbone, magnitude_backbone, parse_backbone
from topo.record.formats import CheckpointSource, open_checkpoint

EXACT_PATH_LIMIT = 16384
DEFAULT_PATH_SOURCES = 1024


@dataclass
class CheckpointAnalysis:
    """What :func:`analyze_checkpoint` found.

    Attributes
    ----------
    table: one row per graph (layer, graph, kind, shape, mask_density, then every metric that applies to any
        graph; cells of metrics that do not apply to a graph's kind are empty).
    records: the same rows as dicts holding only the metrics that apply.
    source: where the weights were found (e.g. ``"weights under 'model_state' (…)"``).
    dense: every analysed layer is dense and no backbone was taken: its graphs are complete.
    degrees: graph name → (degrees of its first part, of its second part) for bipartite graphs, or (degrees,)
        for square ones, for the per-layer figure.
    """

    table: pd.DataFrame
    records: list[dict]
    source: str
    dense: bool
    degrees: dict[str, tuple[np.ndarray, ...]] = field(default_factory=dict)


def _select(source: CheckpointSource, pattern: str | None) -> list[str]:
    if pattern is None:
        return source.names
    chosen = [n for n in source.names if fnmatch.fnmatchcase(n, pattern)]
    if not chosen:
        raise ConfigError(f"{source.path}: no layer matches {pattern!r}; layers: {', '.join(source.names[:12])}")
    return chosen


def _degrees(graph: Graph) -> tuple[np.ndarray, ...]:
    degrees = graph.numpy().adjacency.sum(1, dtype=np.int64)
    return (degrees[: graph.parts[0]], degrees[graph.parts[0]:]) if graph.is_bipartite else (degrees,)


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
) -> CheckpointAnalysis:
    """Summarise every graph of every layer of the checkpoint at ``path`` (see the module docstring).

    Parameters
    ----------
    key: path of the weights inside a PyTorch file (``model_state``, ``a/b``), when the largest mapping is not it.
    layers: glob over layer names, applied before anything is loaded.
    backbone: ``"magnitude:F"`` or ``"disparity:A"`` (:mod:`topo.graph.backbone`), for dense models.
    global_backbone: the magnitude backbone over the whole model rather than per layer.
    path_sources: estimate mean shortest paths from this many sources (default: exact up to
        :data:`EXACT_PATH_LIMIT` nodes, :data:`DEFAULT_PATH_SOURCES` sources above).
    device: run each graph's kernels there (``cuda``), else the CPU backend.
    """
    spec = parse_backbone(backbone) if isinstance(backbone, str) else backbone
    if global_backbone and (spec is None or spec.kind != "magnitude"):
        raise ConfigError("--global applies to the magnitude backbone (--backbone magnitude:F)")
    if path_sources is not None and path_sources < 1:
        raise ConfigError(f"--path-sources must be >= 1, got {path_sources}")
    source = open_checkpoint(path, key)
    names = _select(source, layers)
    gates = recurrent_gates({n: source.shape(n) for n in names})
    overall = None
    if global_backbone:
        overall = GlobalMagnitude(spec.value, sum(int(np.prod(source.shape(n))) for n in names))
        for name in tqdm(names, desc="global threshold", unit="layer", disable=not progress):
            overall.observe(source.load(name).weight)
    records, degrees, dense = [], {}, spec is None
    for name in tqdm(names, desc="graph metrics", unit="layer", disable=not progress):
        layer = source.load(name)
        weight = layer.weight
        if overall is not None:
            mask = overall.mask(weight)
        elif spec is not None and spec.kind == "magnitude":
            mask = magnitude_backbone(weight, spec.value)
        elif spec is not None:
            mask = disparity_backbone(weight, spec.value)
        else:
            mask = layer.mask
        del layer, weight  # only the mask is needed from here on
        density = int(torch.count_nonzero(mask)) / mask.numel()
        dense = dense and density == 1.0
        shape = "×".join(map(str, mask.shape))
        on_device = mask.to(device) if device is not None else mask
        for graph_name, graph in layer_graphs({name: on_device}, gates).items():
            sources = path_sources if path_sources else (
                DEFAULT_PATH_SOURCES if graph.n_nodes > EXACT_PATH_LIMIT else None)
            summary = summarize(graph, "auto", small_world_graphs=small_world, path_sources=sources)
            records.append({"layer": name, "graph": graph_name, "kind": graph.kind, "shape": shape,
                            "mask_density": density, **summary})
            degrees[graph_name] = _degrees(graph)
        del mask, on_device
    table = pd.DataFrame(records)
    return CheckpointAnalysis(table, records, source.description, dense, degrees)
