"""Summaries of a graph table for models of thousands of graphs (topo.summary), on hand-made tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from topo.errors import ConfigError
from topo.summary import (
    Position,
    by_block,
    by_projection,
    differences,
    far_from_null,
    head_grid,
    head_projections,
    position,
    with_positions,
)


@pytest.mark.parametrize(("layer", "graph", "expected"), [
    ("model.layers.12.mlp.up_proj.weight", "model.layers.12.mlp.up_proj.weight", Position(12, "mlp.up_proj", None)),
    ("model.layers.3.self_attn.q_proj.weight", "model.layers.3.self_attn.q_proj.weight[q.h7]",
     Position(3, "self_attn.q_proj[q]", 7)),
    ("transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_attn.weight[k]",
     Position(0, "attn.c_attn[k]", None)),
    ("encoder.layer.1.attention.output.dense.weight", "encoder.layer.1.attention.output.dense.weight[h2]",
     Position(1, "attention.output.dense", 2)),
    ("lstm.weight_hh_l0", "lstm.weight_hh_l0[f]", Position(None, "lstm.weight_hh_l0[f]", None)),
    ("lm_head.weight", "lm_head.weight", Position(None, "lm_head", None)),
    ("0.weight", "0.weight", Position(None, "0", None)),
    ("layers.2.weight", "layers.2.weight", Position(None, "layers.2", None)),
    ("blocks.1.2.conv.weight", "blocks.1.2.conv.weight", Position(1, "2.conv", None)),
])
def test_position_reads_block_projection_and_head_off_the_names(layer, graph, expected):
    assert position(layer, graph) == expected


def head_table(blocks: int = 3, heads: int = 4, seed: int = 0) -> pd.DataFrame:
    """A hand-made analysis table: q and o split per head in each block, one MLP matrix per block, a head."""
    rng = np.random.default_rng(seed)
    rows = []
    for block in range(blocks):
        for kind, part in (("q_proj", "q"), ("o_proj", "o")):
            layer = f"model.layers.{block}.self_attn.{kind}.weight"
            rows += [{"layer": layer, "graph": f"{layer}[{part}.h{h}]", "mask_density": 0.5, "n_nodes": 10,
                      "spectral_gap": 10 * block + h + (kind == "o_proj") / 2} for h in range(heads)]
        layer = f"model.layers.{block}.mlp.up_proj.weight"
        rows.append({"layer": layer, "graph": layer, "spectral_gap": float(rng.normal()), "mask_density": 0.25,
                     "n_nodes": 20})
    rows.append({"layer": "lm_head.weight", "graph": "lm_head.weight", "spectral_gap": 99.0, "mask_density": 1.0,
                 "n_nodes": 30})
    return pd.DataFrame(rows)


def test_with_positions_puts_block_projection_and_head_after_graph():
    placed = with_positions(head_table())
    assert list(placed.columns[:5]) == ["layer", "graph", "block", "projection", "head"]
    assert placed["block"].isna().sum() == 1 and placed["head"].notna().sum() == 3 * 2 * 4
    assert with_positions(head_table().iloc[:0]).columns[-3:].tolist() == ["block", "projection", "head"]


def test_by_projection_gives_each_metrics_median_and_range_in_model_order():
    summary = by_projection(head_table())
    assert summary["projection"].tolist() == ["self_attn.q_proj[q]", "self_attn.o_proj[o]", "mlp.up_proj", "lm_head"]
    q = summary.iloc[0]
    assert (q["graphs"], q["blocks"]) == (12, 3)
    values = [10 * b + h for b in range(3) for h in range(4)]
    assert (q["spectral_gap_median"], q["spectral_gap_min"], q["spectral_gap_max"]) == (
        np.median(values), 0, 23)
    assert summary.iloc[3]["blocks"] == 0 and summary.iloc[3]["mask_density_median"] == 1.0
    assert "n_nodes_median" not in summary  # counts are not summarised
    blocks = by_projection(head_table(), "block")
    assert blocks["block"].tolist() == [0, 1, 2] and blocks["projections"].tolist() == [3, 3, 3]
    assert blocks["graphs"].tolist() == [9, 9, 9] and blocks.iloc[2]["spectral_gap_max"] == 23.5
    with pytest.raises(ConfigError, match="by 'projection' or 'block'"):
        by_projection(head_table(), "head")


def test_by_block_takes_the_median_over_a_projections_heads():
    tidy = by_block(head_table())
    gap = tidy[(tidy["metric"] == "spectral_gap") & (tidy["projection"] == "self_attn.q_proj[q]")]
    assert gap["block"].tolist() == [0, 1, 2] and gap["value"].tolist() == [1.5, 11.5, 21.5]
    assert "lm_head" not in set(tidy["projection"])  # outside the blocks


def test_head_grid_is_block_by_head():
    grid = head_grid(head_table(), "self_attn.o_proj[o]", "spectral_gap")
    assert grid.shape == (3, 4) and grid.loc[2, 3] == 23.5 and grid.index.tolist() == [0, 1, 2]
    assert head_projections(head_table()) == ["self_attn.q_proj[q]", "self_attn.o_proj[o]"]
    with pytest.raises(ConfigError, match="no head .*mlp.up_proj.*self_attn.q_proj"):
        head_grid(head_table(), "mlp.up_proj", "spectral_gap")
    with pytest.raises(ConfigError, match="no metric 'nope'"):
        head_grid(head_table(), "self_attn.q_proj[q]", "nope")


def test_far_from_null_lists_the_graphs_beyond_the_threshold_largest_first():
    table = head_table().assign(spectral_gap_null_mean=0.0, spectral_gap_null_std=1.0)
    table["spectral_gap_z"] = table["spectral_gap"]
    table.loc[0, "spectral_gap_z"] = -50.0
    table.loc[1, "spectral_gap_z"] = 3.0  # at the threshold: not beyond it
    far = far_from_null(table)
    assert far.iloc[0]["value"] == 99.0 and far.iloc[0]["projection"] == "lm_head" and far.iloc[0]["z"] == 99.0
    assert far.iloc[1]["z"] == -50.0 and far.iloc[1]["graph"] == table.loc[0, "graph"]
    assert (far["z"].abs() > 3).all() and len(far) == int((table["spectral_gap_z"].abs() > 3).sum())
    assert np.all(np.diff(far["z"].abs().to_numpy()) <= 0)
    assert far_from_null(head_table()).empty
    with pytest.raises(ConfigError, match="positive"):
        far_from_null(table, 0)


def test_differences_match_graphs_by_name_whatever_their_order():
    first, second = head_table(seed=0), head_table(seed=1)
    shuffled = second.sample(frac=1.0, random_state=0)
    found = differences({"a": first, "b": shuffled})
    gap = found[found["metric"] == "spectral_gap"].set_index("graph")
    expected = second.set_index("graph")["spectral_gap"] - first.set_index("graph")["spectral_gap"]
    assert gap["checkpoint"].eq("b").all() and list(gap.index) == list(first["graph"])
    assert np.allclose(gap["difference"], expected.loc[gap.index])
    assert set(found["metric"]) == {"mask_density", "spectral_gap"}


def test_differences_refuse_other_architectures():
    with pytest.raises(ConfigError, match="lm_head.weight of a is not in b"):
        differences({"a": head_table(), "b": head_table().iloc[:-1]})
    with pytest.raises(ConfigError, match="two or more"):
        differences({"a": head_table()})
