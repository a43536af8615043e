"""The GPU suite: install, CUDA tests and every GPU benchmark in one run, each part under its own time limit.

Usage (on a machine with a CUDA build of PyTorch; wheels of missing packages, e.g. igraph, in ``--wheels``):

    python bench/gpu_suite.py [--out results/gpu] [--wheels .whl] [--quick]

Parts, in order, each a subprocess with its own limit (a part that fails or runs out of time is recorded as
such and the suite goes on):

1. install the carried wheels, then topo over the machine's own torch (``pip install --no-deps -e .``);
2. ``pytest -m cuda`` (the CUDA tests; skipped without CUDA);
3. ``bench/sparsity_overhead.py`` on ResNet-110 at batch 128, fp32 and bf16 autocast;
4. ``bench/recorder_overhead.py`` at 391-step epochs;
5. ``bench/graph_metrics.py``: the torch backend on one graph of 512 … 8192 nodes, and a whole run (4 gate
   graphs × 200 epochs of a 1024-unit LSTM) batched, unbatched and on the CPU backend;
6. ``bench/analyze_checkpoint.py --device cuda``: a dense 100 M-parameter safetensors checkpoint through its
   magnitude backbone (``topo analyze``'s streaming path);
7. ``bench/grid_executors.py``: one seed of the MLP Table 2 grid (8 methods, 20 epochs; Fashion-MNIST from
   ``data/fashion-mnist`` when carried there, else the bundled digits) with the local executor and with Ray at
   ``--gpus-per-run 0.2`` (needs Ray among the carried wheels);
8. the ResNet row of Table 2 on the GPU (issue 25): ResNet-110 on Fashion-MNIST padded to 32 × 32 (from
   ``data/fashion-mnist`` when carried there, else the bundled digits), dense, random fixed, the paper's rule and
   RigL at −log α = 0.5, one seed, 10 epochs of 100 minibatches, into ``<out>/resnet110-<dataset>/``;
9. ``bench/analyze_llm.py --device cuda``: ``topo analyze --heads`` of a Llama-2-7B-shaped checkpoint pruned 2:4
   (32 blocks, 13 GB written first; issue 32's goal: 10 minutes). Choose parts with ``--parts``: the device's
   time is short.

Everything measured, with the device, the torch and CUDA versions and the commands, is written to
``<out>/<device>.md`` and ``<out>/<device>.csv`` after every part, so a run cut short keeps its finished parts.
``--quick`` runs every part at toy sizes (on the CPU too): the test of the suite itself.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Part:
    """One step of the suite: a command, its time limit, and what it measured."""

    name: str
    command: list[str]
    limit_s: float
    json_path: Path | None = None
    status: str = "not run"
    seconds: float = 0.0
    output: str = ""
    figures: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Goal:
    """A row of the issue's goal table: the measured figure, its goal and anchor."""

    figure: str
    anchor: str
    goal: str
    value: float | None
    limit: float | None  # None: a figure to report, with no goal
    higher_is_better: bool = False

    @property
    def verdict(self) -> str:
        if self.value is None:
            return "not measured"
        if self.limit is None:
            return "measured"
        met = self.value >= self.limit if self.higher_is_better else self.value <= self.limit
        return "met" if met else "not met"


def device_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu-{platform.machine()}"


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def run_part(part: Part, env: dict[str, str]) -> None:
    start = time.perf_counter()
    try:
        done = subprocess.run(part.command, cwd=REPO, env=env, capture_output=True, text=True, timeout=part.limit_s)
        part.output = (done.stdout + done.stderr).strip()
        part.status = "ok" if done.returncode == 0 else f"failed (exit {done.returncode})"
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"") + (exc.stderr or b"")
        part.output = (out.decode() if isinstance(out, bytes) else out).strip()
        part.status = f"stopped at its {part.limit_s:.0f} s limit"
    part.seconds = time.perf_counter() - start
    if part.json_path is not None and part.json_path.exists():
        part.figures = json.loads(part.json_path.read_text())


def goals(parts: dict[str, Part]) -> list[Goal]:
    def fig(part: str, *keys: str) -> float | None:
        value = parts[part].figures if part in parts else {}
        for key in keys:
            if not isinstance(value, dict) or key not in value:
                return None
            value = value[key]
        return float(value)

    run = parts["graphs"].figures.get("whole_run", {}) if "graphs" in parts else {}
    one = {row["n"]: row["torch_s"] for row in parts["graphs"].figures.get("one_graph_torch", [])} \
        if "graphs" in parts else {}
    all_metrics = {row["n"]: row.get("torch_all_s") for row in parts["graphs"].figures.get("one_graph_torch", [])} \
        if "graphs" in parts else {}
    speedup = run["cpu_estimate_s"] / run["batched_s"] if run else None
    return [
        Goal("masked step / dense step, ResNet-110 bs128, fp32 (random fixed)", "naive masking 1.19×", "≤ 1.05×",
             fig("overhead-fp32", "ratio", "random-fixed"), 1.05),
        Goal("same, adaptive between adaptations, fp32", "–", "≤ 1.05×",
             fig("overhead-fp32", "ratio", "adaptive"), 1.05),
        Goal("masked step / dense step, bf16 autocast (random fixed)", "naive 1.06×", "≤ 1.03×",
             fig("overhead-bf16", "ratio", "random-fixed"), 1.03),
        Goal("masked step / dense step in a CUDA graph, CUDA events, fp32 (random fixed)", "host-timed 0.82–1.19×",
             "≤ 1.05×", fig("overhead-fp32", "cuda_graph_ms", "ratio"), 1.05),
        Goal("same in a CUDA graph, bf16 autocast", "–", "≤ 1.03×", fig("overhead-bf16", "cuda_graph_ms", "ratio"),
             1.03),
        Goal("one adaptation pass (fused over all layers) / one 391-step epoch (fp32)", "per layer 0.64–0.76 %",
             "≤ 0.5 %",
             None if fig("overhead-fp32", "adaptation_fraction_of_epoch") is None
             else 100 * fig("overhead-fp32", "adaptation_fraction_of_epoch"), 0.5),
        Goal("epoch with recorder / without (391 steps)", "–", "≤ 1.01×", fig("recorder", "ratio"), 1.01),
        Goal("the four metrics alone, one graph n = 8192, density 0.1 (s)", "plain torch 0.60 s", "≤ 0.3 s",
             one.get(8192), 0.3),
        Goal("every metric (spectral and Ramanujan gaps too), one graph n = 8192 (s)", "–", "measured",
             all_metrics.get(8192), None),
        Goal(f"whole run, every metric: {run.get('graphs', '?')} gate graphs of a {run.get('units', '?')}-unit LSTM, "
             "batched (s)",
             "unbatched torch ≈ 12 ms/graph", "≤ 5 s", run.get("batched_s"), 5.0),
        Goal("whole run: batched speed-up over topo's CPU backend", "–", "≥ 20×", speedup, 20.0,
             higher_is_better=True),
        Goal("analyse a dense 100 M-parameter safetensors checkpoint, magnitude:0.1 (s)", "–", "measured",
             fig("analyze-100m", "seconds"), None),
        Goal("MLP Table 2 grid, local executor / Ray at 0.2 GPU per run (wall time ratio)", "–", "measured",
             fig("ray-grid", "speedup"), None),
        Goal("topo analyze --heads of a Llama-2-7B-shaped 2:4 checkpoint (32 blocks, s)", "3.8 h on 2 CPU cores",
             "≤ 600 s", fig("llm", "2:4_seconds"), 600.0),
    ]


def write_report(out: Path, name: str, parts: dict[str, Part], header: list[str]) -> None:
    rows = goals(parts)
    lines = [f"# GPU suite on {name}", "", *header, "", "## Goals", "",
             "| figure | anchor | goal | measured | verdict |", "| --- | --- | --- | --- | --- |"]
    for g in rows:
        value = "–" if g.value is None else f"{g.value:.4g}"
        lines.append(f"| {g.figure} | {g.anchor} | {g.goal} | {value} | {g.verdict} |")
    lines += ["", "## Parts", ""]
    for part in parts.values():
        lines += [f"### {part.name}: {part.status} ({part.seconds:.1f} s, limit {part.limit_s:.0f} s)", "",
                  f"`{' '.join(part.command)}`", "", "```", part.output[-6000:], "```", ""]
    _write(out / f"{slug(name)}.md", "\n".join(lines))
    with tempfile.NamedTemporaryFile("w", dir=out, delete=False, suffix=".tmp", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["figure", "anchor", "goal", "measured", "verdict"])
        writer.writerows([g.figure, g.anchor, g.goal, "" if g.value is None else g.value, g.verdict] for g in rows)
    os.replace(handle.name, out / f"{slug(name)}.csv")


def _write(path: Path, text: str) -> None:
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as handle:
        handle.write(text)
    os.replace(handle.name, path)


def part_limit(text: str) -> tuple[str, float]:
    """``'llm=420'`` → ``('llm', 420.0)``: the ``--limit`` option's value."""
    name, _, seconds = text.rpartition("=")
    try:
        return name, float(seconds)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected PART=SECONDS, got {text!r}") from None


def plan(args: argparse.Namespace, scratch: Path) -> list[Part]:
    py = sys.executable
    quick = args.quick
    out_dir = Path(args.out)
    wheels = sorted(str(p) for p in Path(args.wheels).glob("*.whl")) if args.wheels else []
    pip = [py, "-m", "pip", "install", "-q", "--no-deps", "--no-index"]
    overhead = [py, "bench/sparsity_overhead.py"] + (["--depth", "8", "--batch", "8", "--steps", "1", "--blocks", "2"]
                                                       if quick else ["--depth", "110", "--batch", "128"])
    recorder = [py, "bench/recorder_overhead.py"] + (["--depth", "8", "--batch", "8", "--steps", "2", "--epochs", "1"]
                                                      if quick else ["--depth", "110", "--batch", "128",
                                                                     "--steps", "391", "--epochs", "2"])
    graphs = [py, "bench/graph_metrics.py", "--sizes", "--repeats", "1" if quick else "3"] + (
        ["--torch-sizes", "64", "--run-epochs", "3", "--run-units", "32", "--cpu-epochs", "2"] if quick else
        ["--torch-sizes", "512", "1024", "2048", "4096", "8192", "--run-epochs", "200", "--run-units", "1024",
         "--cpu-epochs", "10"])
    limit = (lambda full, small: small) if quick else (lambda full, small: full)  # noqa: E731
    parts = [
        Part("install wheels", [*pip, *wheels] if wheels else [py, "-c", "print('no wheels given')"], limit(30, 60)),
        # without build isolation nothing is downloaded; should it fail, PYTHONPATH still finds topo
        Part("install topo", [*pip, "--no-build-isolation", "-e", "."], limit(45, 90)),
        # quick: the CUDA tests' own file (collecting every test costs a CPU run most of this part's time)
        Part("pytest -m cuda", [py, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider",
                                "--ignore=tests/test_notebooks.py", "tests/test_cuda.py" if quick else "tests"],
             limit(120, 300)),
        Part("overhead-fp32", [*overhead, "--dtype", "fp32", "--json", str(scratch / "fp32.json")], limit(60, 120),
             scratch / "fp32.json"),
        Part("overhead-bf16", [*overhead, "--dtype", "bf16", "--json", str(scratch / "bf16.json")], limit(60, 120),
             scratch / "bf16.json"),
        Part("recorder", [*recorder, "--json", str(scratch / "recorder.json")], limit(110, 120),
             scratch / "recorder.json"),
        Part("graphs", [*graphs, "--json", str(scratch / "graphs.json")], limit(120, 300), scratch / "graphs.json"),
        Part("analyze-100m", [py, "bench/analyze_checkpoint.py", "--json", str(scratch / "analyze.json"),
                              *(["--params", "1e6", "--width", "512"] if quick else ["--device", "cuda"])],
             limit(120, 120), scratch / "analyze.json"),
        Part("ray-grid", [py, "bench/grid_executors.py", "--seeds", "1", "--json", str(scratch / "grid.json"),
                          *(["--dataset", "digits", "--epochs", "1", "--max-batches", "2", "--methods", "dense",
                             "set"] if quick else
                            ["--epochs", "20", "--gpus-per-run", "0.2",
                             *(["--data-dir", "data"] if (REPO / "data" / "fashion-mnist").exists()
                               else ["--dataset", "digits"])])],
             limit(300, 180), scratch / "grid.json"),
        Part("resnet110", [py, "-c", "import sys; from topo.cli import main; sys.exit(main())", "--quiet",
                           "reproduce", "table2", "--log-alpha", "0.5", "--k", "0.25", "--seeds", "1", "--methods",
                           *(["dense", "rigl"] if quick else ["dense", "random-fixed", "adaptive", "rigl"]),
                           "--adapt-every", "1",
                           *(["--model", "resnet20", "--dataset", "digits", "--epochs", "2", "--max-batches", "2",
                              "--val-max-batches", "1", "--out", str(scratch / "resnet")] if quick else
                             ["--model", "resnet110", "--epochs", "10", "--max-batches", "100",
                              "--val-max-batches", "20", "--device", "cuda",
                              *(["--data-dir", "data/fashion-mnist", "--dataset", "fashion-mnist",
                                 "--out", str(out_dir / "resnet110-fashion-mnist")]
                                if (REPO / "data" / "fashion-mnist").exists()
                                else ["--dataset", "digits", "--out", str(out_dir / "resnet110-digits")])])],
             limit(420, 240)),
        Part("llm", [py, "bench/analyze_llm.py", "--variants", "2:4", "--json", str(scratch / "llm.json"),
                     *(["--blocks", "1", "--hidden", "64", "--intermediate", "128", "--heads", "4"] if quick else
                       ["--blocks", *map(str, args.llm_blocks), "--device", "cuda",
                        "--out", str(out_dir / "llm-7b-2of4")])], limit(900, 120), scratch / "llm.json"),
    ]
    names = {p.name for p in parts}
    unknown = (set(args.parts or ()) | set(args.limit)) - names
    if unknown:
        raise SystemExit(f"unknown part(s) {sorted(unknown)}; parts: {sorted(names)}")
    for part in parts:
        part.limit_s = args.limit.get(part.name, part.limit_s)
    if args.skip_install:
        parts = parts[2:]
    if args.parts:
        parts = [p for p in parts if p.name in args.parts or p.name.startswith("install")]
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "results" / "gpu"))
    parser.add_argument("--wheels", help="folder of wheels to install beside topo (e.g. igraph for Python 3.12)")
    parser.add_argument("--quick", action="store_true", help="toy sizes: tests the suite itself, on the CPU too")
    parser.add_argument("--skip-install", action="store_true")
    parser.add_argument("--parts", nargs="+", help="run only these parts (the installs always run)")
    parser.add_argument("--tag", default="", help="suffix of the report's file names, e.g. 'rerun'")
    parser.add_argument("--llm-blocks", type=int, nargs="+", default=[32],
                        help="block counts of the llm part, e.g. '1 32' (each a separate analysis; default 32)")
    parser.add_argument("--limit", type=part_limit, action="append", default=[], metavar="PART=SECONDS",
                        help="another time limit for one part, e.g. 'llm=420' (repeatable): fit a device's lease")
    args = parser.parse_args()
    args.limit = dict(args.limit)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = device_name() + (" (quick)" if args.quick else "") + (f" {args.tag}" if args.tag else "")
    header = [
        f"- device: {name}; {os.cpu_count()} CPU cores; Python {platform.python_version()}",
        f"- torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}",
        f"- command: `{' '.join(sys.argv)}`; started {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"}
    done: dict[str, Part] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for part in plan(args, Path(scratch)):
            print(f"[suite] {part.name} (limit {part.limit_s:.0f} s) ...", flush=True)
            run_part(part, env)
            done[part.name] = part
            print(f"[suite] {part.name}: {part.status} in {part.seconds:.1f} s", flush=True)
            write_report(out, name, done, header)
    for g in goals(done):
        value = "–" if g.value is None else f"{g.value:.4g}"
        print(f"{g.verdict:>12}  {value:>10}  {g.goal:<8} {g.figure}")


if __name__ == "__main__":
    main()
