"""A model of thousands of graphs read in a few tables: where each graph sits, each metric per projection, the
graphs far from their null model, heads as block × head grids, and what changed between checkpoints.

>>> table = analyze_checkpoint("llama-2:4/", heads=True, null="er").table          # doctest: +SKIP
>>> by_projection(table)         # per projection kind: graphs, blocks, each metric's median, min and max
>>> by_projection(table, "block")          # the same per block
>>> far_from_null(table)         # every (graph, metric) whose z-score is beyond ±3, largest first
>>> head_grid(table, "self_attn.q_proj[q]", "spectral_gap")      # block × head

A graph's position is read from its names (:func:`position`): the **block** is the first all-digit component of
its layer's name (``model.layers.12.mlp.up_proj.weight`` → 12), the **projection** is what follows it, without
the ``weight`` suffix, with the bracketed part of the graph's name (``self_attn.q_proj[q]``; a gate ``[f]``, a
fused part ``[k]``), and the **head** is the ``hN`` of that bracket. A layer with no number before its last
component (``lm_head.weight``; an MLP's ``0.weight``, whose number is its name) has no block: its projection is
its whole name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from topo.errors import ConfigError
from topo.graph.metrics import METRICS

#: The columns summarised, in this order, where a table has them: the mask's density, then every metric of
#: :data:`topo.graph.metrics.METRICS` but the node and edge counts, then the weighted spectral gap.
SUMMARISED = ("mask_density", *dict.fromkeys(m for kind in METRICS.values() for m in kind
                                             if m not in ("n_nodes", "n_edges")), "weighted_spectral_gap")

_BRACKET = re.compile(r"\[(?P<part>[^\]]*)\]$")
_HEAD = re.compile(r"^(?:(?P<part>.+)\.)?h(?P<head>\d+)$")


@dataclass(frozen=True)
class Position:
    """Where a graph sits in its model: ``block`` (None outside numbered blocks), ``projection``, ``head``."""

    block: int | None
    projection: str
    head: int | None


def position(layer: str, graph: str) -> Position:
    """The :class:`Position` of ``graph``, a graph of the layer named ``layer`` (see the module docstring)."""
    components = layer.split(".")
    if components[-1] == "weight" and len(components) > 1:
        components = components[:-1]
    numbered = next((i for i, c in enumerate(components) if c.isdigit()), None)
    block = None
    if numbered is not None and numbered < len(components) - 1:
        block, components = int(components[numbered]), components[numbered + 1:]
    projection, head = ".".join(components), None
    bracket = _BRACKET.search(graph) if graph.startswith(layer) else None
    if bracket:
        part = bracket["part"]
        heads = _HEAD.match(part)
        if heads:
            part, head = heads["part"], int(heads["head"])
        if part:
            projection += f"[{part}]"
    return Position(block, projection, head)


def with_positions(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` (one row per graph, with ``layer`` and ``graph``) with ``block``, ``projection`` and ``head``
    columns after ``graph``; blocks and heads are nullable integers."""
    if table.empty:
        return table.assign(block=pd.Series(dtype="Int64"), projection=pd.Series(dtype=str),
                            head=pd.Series(dtype="Int64"))
    found = [position(layer, graph) for layer, graph in zip(table["layer"], table["graph"], strict=True)]
    columns = {"block": pd.array([p.block for p in found], dtype="Int64"),
               "projection": [p.projection for p in found], "head": pd.array([p.head for p in found], dtype="Int64")}
    out = table.drop(columns=[c for c in columns if c in table], errors="ignore")
    at = list(out.columns).index("graph") + 1
    for offset, (name, values) in enumerate(columns.items()):
        out.insert(at + offset, name, values)
    return out


def summarised_metrics(table: pd.DataFrame) -> list[str]:
    """The columns of :data:`SUMMARISED` that ``table`` holds with at least one number."""
    return [m for m in SUMMARISED if m in table and pd.to_numeric(table[m], errors="coerce").notna().any()]


def median_and_range(values: pd.Series, name: str) -> dict[str, float]:
    """``<name>_median``, ``<name>_min`` and ``<name>_max`` of the numbers among ``values`` (NaN when none)."""
    numbers = pd.to_numeric(values, errors="coerce").dropna()
    return {f"{name}_{stat}": float(getattr(numbers, stat)()) if len(numbers) else np.nan
            for stat in ("median", "min", "max")}


def by_projection(table: pd.DataFrame, by: str = "projection") -> pd.DataFrame:
    """Per projection kind (in model order; or per block with ``by="block"``, graphs outside blocks left out):
    ``graphs``, ``blocks`` or ``projections`` (how many distinct), and for each metric of
    :func:`summarised_metrics` its median, min and max over the group's graphs (NaN left out). Columns
    ``<by>, graphs, blocks|projections, <metric>_median, <metric>_min, <metric>_max, …``."""
    if by not in ("projection", "block"):
        raise ConfigError(f"a summary is by 'projection' or 'block', not {by!r}")
    placed = with_positions(table)
    if by == "block":
        placed = placed[placed["block"].notna()]
    metrics = summarised_metrics(placed)
    other = "blocks" if by == "projection" else "projections"
    rows = []
    for key, group in placed.groupby(by, sort=False):
        row = {by: key, "graphs": len(group), other: int(group[other.removesuffix("s")].nunique())}
        for metric in metrics:
            row.update(median_and_range(group[metric], metric))
        rows.append(row)
    return pd.DataFrame(rows, columns=[by, "graphs", other,
                                       *(f"{m}_{s}" for m in metrics for s in ("median", "min", "max"))])


def by_block(table: pd.DataFrame) -> pd.DataFrame:
    """Each metric's median per block and projection (over the projection's heads or parts): the tidy frame
    ``block, projection, metric, value`` behind a metrics-by-depth figure. Graphs outside blocks are left out."""
    placed = with_positions(table)
    placed = placed[placed["block"].notna()]
    metrics = summarised_metrics(placed)
    if placed.empty or not metrics:
        return pd.DataFrame(columns=["block", "projection", "metric", "value"])
    numbers = placed[["block", "projection"]].assign(**{m: pd.to_numeric(placed[m], errors="coerce")
                                                        for m in metrics})
    medians = numbers.groupby(["block", "projection"], sort=False)[metrics].median().reset_index()
    tidy = medians.melt(id_vars=["block", "projection"], var_name="metric", value_name="value")
    return tidy.astype({"block": int})


def far_from_null(table: pd.DataFrame, threshold: float = 3.0) -> pd.DataFrame:
    """Every (graph, metric) whose z-score against the null model is beyond ``± threshold``, largest ``|z|``
    first: ``graph, block, projection, head, metric, value, null_mean, null_std, z``. Empty (with those
    columns) when the table has no z-scores."""
    if threshold <= 0:
        raise ConfigError(f"the |z| threshold must be positive, got {threshold}")
    placed = with_positions(table)
    columns = ["graph", "block", "projection", "head", "metric", "value", "null_mean", "null_std", "z"]
    frames = []
    for metric in [c.removesuffix("_z") for c in placed.columns if c.endswith("_z")]:
        if metric not in placed:
            continue
        z = pd.to_numeric(placed[f"{metric}_z"], errors="coerce")
        far = placed[z.abs() > threshold]
        if far.empty:
            continue
        frames.append(pd.DataFrame({"graph": far["graph"], "block": far["block"], "projection": far["projection"],
                                    "head": far["head"], "metric": metric, "value": far[metric],
                                    "null_mean": far.get(f"{metric}_null_mean", np.nan),
                                    "null_std": far.get(f"{metric}_null_std", np.nan), "z": z[far.index]}))
    if not frames:
        return pd.DataFrame(columns=columns)
    found = pd.concat(frames, ignore_index=True)[columns]
    return found.iloc[np.argsort(-found["z"].abs().to_numpy(), kind="stable")].reset_index(drop=True)


def head_projections(table: pd.DataFrame) -> list[str]:
    """The projections (in model order) whose graphs are heads in numbered blocks: those :func:`head_grid` draws."""
    placed = with_positions(table)
    heads = placed[placed["head"].notna() & placed["block"].notna()]
    return list(dict.fromkeys(heads["projection"]))


def head_grid(table: pd.DataFrame, projection: str, metric: str) -> pd.DataFrame:
    """``metric`` of the heads of ``projection`` as a block × head frame (rows: blocks, columns: heads; a head a
    block does not have is NaN). Raises :class:`ConfigError` when the projection has no heads in blocks or the
    table no such metric."""
    placed = with_positions(table)
    if metric not in placed:
        raise ConfigError(f"the table has no metric {metric!r}")
    rows = placed[(placed["projection"] == projection) & placed["head"].notna() & placed["block"].notna()]
    if rows.empty:
        raise ConfigError(f"no head of a numbered block is in projection {projection!r}; "
                          f"those with heads: {', '.join(head_projections(table)) or 'none'}")
    grid = rows.assign(value=pd.to_numeric(rows[metric], errors="coerce")).pivot_table(
        index="block", columns="head", values="value", aggfunc="first", dropna=False)
    grid.index, grid.columns = grid.index.astype(int), grid.columns.astype(int)
    return grid.sort_index().sort_index(axis=1)


def differences(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Per graph and metric, each checkpoint's value against the first's: the tidy frame ``graph, block,
    projection, head, metric, checkpoint, reference, value, difference`` (value − reference), graphs in the
    first table's order. The tables must hold the same graphs (one architecture): :class:`ConfigError` names a
    graph one lacks."""
    if len(tables) < 2:
        raise ConfigError(f"differences need two or more checkpoints, got {len(tables)}")
    (first_name, first), *others = tables.items()
    graphs = list(first["graph"])
    for name, other in others:
        missing = next((g for g in graphs if g not in set(other["graph"])), None) or next(
            (g for g in other["graph"] if g not in set(graphs)), None)
        if missing is not None:
            holder, lacking = (first_name, name) if missing in set(graphs) else (name, first_name)
            raise ConfigError(f"graph {missing} of {holder} is not in {lacking}: a comparison needs checkpoints "
                              "of one architecture analysed with the same options")
    placed = with_positions(first).set_index("graph")
    metrics = [m for m in summarised_metrics(first) if all(m in t for t in tables.values())]
    frames = []
    for name, other in others:
        values = other.set_index("graph").loc[graphs]
        for metric in metrics:
            reference = pd.to_numeric(placed.loc[graphs, metric], errors="coerce").to_numpy(dtype=float)
            value = pd.to_numeric(values[metric], errors="coerce").to_numpy(dtype=float)
            frames.append(pd.DataFrame({"graph": graphs, "block": placed.loc[graphs, "block"].to_numpy(),
                                        "projection": placed.loc[graphs, "projection"].to_numpy(),
                                        "head": placed.loc[graphs, "head"].to_numpy(), "metric": metric,
                                        "checkpoint": name, "reference": reference, "value": value,
                                        "difference": value - reference}))
    return pd.concat(frames, ignore_index=True)
