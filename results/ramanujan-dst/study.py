"""Do dynamic sparse training methods grow Ramanujan-like layers, and do the gaps order the methods as their errors?

Usage (after the runs of ../mlp-fashion-mnist-dst and ../lstm-shakespeare-dst, recorded with --keep-weights):

    python results/ramanujan-dst/study.py [--samples 10] [--every 5]

For every run, layer and epoch at which the layer is sparse (magnitude pruning's layers are dense until it prunes):
the spectral gap and the Ramanujan gap of the mask (topo.graph.singular), the weighted spectral gap of the stored
float16 weights, and, at every ``--every``-th epoch and the last, the same two
mask gaps of ``--samples`` ER null masks (same shape and active count). Writes gaps.csv (tidy), the figures
gaps-mlp.png and gaps-lstm.png (mean over seeds, the ER null's mean ± 2 std behind), and spearman.csv: Spearman's ρ
between each final gap (averaged over a run's sparse layers) and the run's test error across methods × seeds, with
a 95 % bootstrap interval over runs.
"""

from __future__ import annotations

import argparse
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.stats

from topo.graph.null import null_masks
from topo.graph.singular import bipartite_spectrum, square_spectrum, weighted_spectral_gap
from topo.plot import save
from topo.record import RunReader

HERE = Path(__file__).resolve().parent
MLP = HERE.parent / "mlp-fashion-mnist-dst"
LSTM = HERE.parent / "lstm-shakespeare-dst"
METHODS = ("adaptive", "set", "rigl", "snip", "random-fixed", "pruning")
GAPS = ("spectral_gap", "ramanujan_gap", "weighted_spectral_gap")


def blocks(name: str, mask: np.ndarray) -> list[tuple[str, np.ndarray, str]]:
    """(graph, 2-D block, kind) of a layer: LSTM weights are cut into their four gates (hidden-to-hidden: square)."""
    if "weight_hh" in name or "weight_ih" in name:
        rows = mask.shape[0] // 4
        kind = "square" if "weight_hh" in name else "bipartite"
        return [(f"{name}[{g}]", mask[i * rows:(i + 1) * rows], kind) for i, g in enumerate("ifgo")]
    return [(name, mask, "bipartite")]


def spectrum(block: np.ndarray, kind: str) -> dict[str, float]:
    if kind == "square":
        symmetric = block | block.T
        np.fill_diagonal(symmetric, False)
        return square_spectrum(symmetric)
    return bipartite_spectrum(block)


def run_rows(path: Path, samples: int, every: int) -> list[dict]:
    reader = RunReader(path)
    method = reader.meta["method"]["method"]
    seed = reader.meta["config"]["train"]["seed"]
    sparse = [n for n, s in reader.layers.items() if reader.stats[reader.stats.layer == n].density.iloc[-1] < 1]
    last = reader.epochs[-1]
    rows = []
    for epoch in reader.epochs:
        masks = reader.masks(epoch)
        try:
            weights = reader.weights(epoch)
        except Exception:  # noqa: BLE001 - a run without stored weights: mask gaps only
            weights = {}
        for layer in (n for n in sparse if not masks[n].all()):  # pruning's layers are dense until it prunes
            weight_blocks = blocks(layer, weights[layer].astype(np.float32)) if layer in weights else None
            for index, (graph, block, kind) in enumerate(blocks(layer, masks[layer])):
                row = {"run": reader.name, "method": method, "seed": seed, "epoch": epoch, "layer": layer,
                       "graph": graph, **{k: v for k, v in spectrum(block, kind).items() if k in GAPS}}
                if weight_blocks is not None and kind == "bipartite":
                    row["weighted_spectral_gap"] = weighted_spectral_gap(weight_blocks[index][1], block)
                if epoch % every == 0 or epoch == last:
                    nulls = null_masks("er", block, samples, seed=zlib.crc32(f"{reader.name}/{epoch}/{graph}".encode()))
                    values = pd.DataFrame([spectrum(m.numpy(), kind) for m in nulls])
                    for gap in ("spectral_gap", "ramanujan_gap"):
                        row[f"{gap}_null_mean"] = float(values[gap].mean())
                        row[f"{gap}_null_std"] = float(values[gap].std(ddof=1))
                rows.append(row)
    return rows


def gap_figure(frame: pd.DataFrame, title: str):
    import matplotlib.pyplot as plt
    import seaborn as sns
    from matplotlib.ticker import MaxNLocator

    graphs = list(dict.fromkeys(frame["graph"]))
    methods = [m for m in METHODS if m in set(frame["method"])]
    palette = dict(zip(methods, sns.color_palette(n_colors=len(methods)), strict=True))
    shown = [g for g in GAPS if g in frame and frame[g].notna().any()]
    fig, axes = plt.subplots(len(shown), len(graphs), figsize=(3.4 * len(graphs), 2.8 * len(shown)), squeeze=False,
                             sharex=True)
    for column, graph in enumerate(graphs):
        for row, gap in enumerate(shown):
            ax = axes[row][column]
            data = frame[frame["graph"] == graph]
            if data[gap].isna().all():
                ax.axis("off")
                ax.text(0.5, 0.5, f"{gap.replace('_', ' ')}:\nbipartite graphs only", ha="center", va="center",
                        fontsize=8, transform=ax.transAxes)
                continue
            for method in methods:
                mine = data[data["method"] == method].groupby("epoch")
                mean = mine[gap].mean()
                ax.plot(mean.index, mean.values, color=palette[method], label=method, linewidth=1.3)
                if f"{gap}_null_mean" in data:
                    null = mine[[f"{gap}_null_mean", f"{gap}_null_std"]].mean().dropna()
                    ax.fill_between(null.index, null.iloc[:, 0] - 2 * null.iloc[:, 1],
                                    null.iloc[:, 0] + 2 * null.iloc[:, 1], color=palette[method], alpha=0.12,
                                    linewidth=0)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if gap == "ramanujan_gap":
                ax.axhline(0, color="black", linewidth=0.6, linestyle=":")
            ax.set_title(f"{graph}\n{gap.replace('_', ' ')}" if row == 0 else gap.replace("_", " "), fontsize=8)
            ax.tick_params(labelsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("epoch", fontsize=8)
    axes[0][0].legend(fontsize=7, frameon=False)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def spearman(final: pd.DataFrame, scores: pd.DataFrame, rounds: int = 2000) -> pd.DataFrame:
    """ρ between each gap (mean over a run's sparse graphs at its last epoch) and the run's score, with a bootstrap
    interval over runs."""
    per_run = final.groupby("run")[[g for g in GAPS if g in final]].mean().join(scores.set_index("run")["score"])
    rng = np.random.default_rng(0)
    rows = []
    for gap in [g for g in GAPS if g in per_run and per_run[g].notna().all()]:
        rho = scipy.stats.spearmanr(per_run[gap], per_run["score"]).statistic
        draws = []
        for _ in range(rounds):
            sample = per_run.iloc[rng.integers(0, len(per_run), len(per_run))]
            if sample[gap].nunique() > 1 and sample["score"].nunique() > 1:
                draws.append(scipy.stats.spearmanr(sample[gap], sample["score"]).statistic)
        low, high = np.percentile(draws, [2.5, 97.5])
        rows.append({"gap": gap, "runs": len(per_run), "spearman_rho": rho, "ci_low": low, "ci_high": high})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--every", type=int, default=5)
    args = parser.parse_args()
    frames, scores = {}, {}
    for label, folder in (("mlp", MLP), ("lstm", LSTM)):
        runs = pd.read_csv(folder / "table2_runs.csv")
        runs = runs[runs["method"].isin(METHODS)]
        runs["run"] = runs["run_dir"].map(lambda p: Path(p).name)
        rows = []
        for run_dir in runs["run_dir"]:
            rows += run_rows(HERE.parents[1] / run_dir, args.samples, args.every)
        frames[label], scores[label] = pd.DataFrame(rows), runs
    gaps = pd.concat([f.assign(model=m) for m, f in frames.items()], ignore_index=True)
    gaps.to_csv(HERE / "gaps.csv", index=False)
    for label, frame in frames.items():
        save(gap_figure(frame, f"{label.upper()}: gaps of every sparse graph over training, mean over seeds "
                               "(shaded: ER null mean ± 2 std)"), HERE / f"gaps-{label}.png")
    rho = []
    for label, frame in frames.items():
        final = frame[frame["epoch"] == frame.groupby("run")["epoch"].transform("max")]
        rho.append(spearman(final, scores[label][["run", "score"]]).assign(model=label))
    table = pd.concat(rho, ignore_index=True)
    table.to_csv(HERE / "spearman.csv", index=False)
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
