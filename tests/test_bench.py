"""The benchmark scripts and the GPU suite run (at toy sizes, on the CPU here) and report what they measured."""

from __future__ import annotations

import csv
import gzip
import json
import math
import pstats
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_suite_quick_mode_runs_every_part_and_writes_its_report(tmp_path):
    done = subprocess.run([sys.executable, "bench/gpu_suite.py", "--quick", "--skip-install", "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    reports = list(tmp_path.glob("*.md"))
    assert len(reports) == 1 and "(quick)" in reports[0].read_text()
    text = reports[0].read_text()
    for part in ("pytest -m cuda", "overhead-fp32", "overhead-bf16", "recorder", "graphs", "analyze-100m", "ray-grid",
                 "resnet110", "llm"):
        assert f"### {part}: ok" in text, part
    assert "| rigl | 0.5 |" in text  # the ResNet part prints its Table 2 rows
    with open(reports[0].with_suffix(".csv")) as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 14 and all(row["verdict"] in ("met", "not met", "measured", "not measured") for row in rows)
    assert sum(row["measured"] != "" for row in rows) >= 8
    assert "tables equal: True" in text  # the grid part: Ray's Table 2 is the local executor's


def test_gpu_suite_takes_a_part_limit_and_refuses_an_unknown_part(tmp_path):
    def suite(*extra):
        return subprocess.run([sys.executable, "bench/gpu_suite.py", "--quick", "--skip-install", "--out",
                               str(tmp_path), *extra], cwd=REPO, capture_output=True, text=True, timeout=300)

    done = suite("--parts", "analyze-100m", "--limit", "analyze-100m=0.01")
    assert done.returncode == 0, done.stderr
    assert "### analyze-100m: stopped at its 0 s limit" in next(tmp_path.glob("*.md")).read_text()
    for wrong in (["--limit", "llm-typo=60"], ["--limit", "llm:60"]):
        done = suite(*wrong)
        assert done.returncode != 0 and ("llm-typo" in done.stderr or "PART=SECONDS" in done.stderr)


def test_graph_benchmark_json_has_the_whole_run_figures(tmp_path):
    out = tmp_path / "graphs.json"
    done = subprocess.run([sys.executable, "bench/graph_metrics.py", "--sizes", "64", "--densities", "0.1",
                           "--networkx-max-n", "64", "--repeats", "1", "--run-epochs", "2", "--run-units", "16",
                           "--cpu-epochs", "1", "--json", str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    figures = json.loads(out.read_text())
    assert figures["one_graph_cpu"][0]["igraph_scipy_s"] > 0 and figures["whole_run"]["graphs"] == 8


def test_callback_benchmark_reports_both_ratios(tmp_path):
    out = tmp_path / "callback.json"
    done = subprocess.run([sys.executable, "bench/callback_overhead.py", "--width", "32", "--steps", "3", "--rounds",
                           "1", "--json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    figures = json.loads(out.read_text())
    assert figures["hand_loop_ratio"] > 0 and figures["callback_ratio"] > 0
    assert len(figures["seconds_per_step"]) == 5


def test_transformer_benchmark_reports_both_reads(tmp_path):
    out = tmp_path / "transformer.json"
    done = subprocess.run([sys.executable, "bench/analyze_transformer.py", "--hidden", "64", "--intermediate", "128",
                           "--blocks", "2", "--heads", "4", "--json", str(out)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    figures = json.loads(out.read_text())
    backbone, two_four = figures["magnitude backbone"], figures["2:4"]
    assert backbone["matrices"] == 14 and backbone["graphs"] == 2 * (4 * 4 + 3)  # q/k/v/o per head, then the MLP
    assert two_four["n_m"] == ["2:4"] and two_four["peak_rss_mib"] > 0


def test_llm_benchmark_times_each_variant_and_block_count(tmp_path):
    out = tmp_path / "llm"
    done = subprocess.run([sys.executable, "bench/analyze_llm.py", "--blocks", "1", "2", "--variants", "2:4",
                           "--hidden", "64", "--intermediate", "128", "--heads", "4", "--out", str(out),
                           "--profile", str(tmp_path / "llm.prof")], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Ordered by: cumulative time" in done.stdout  # the 2-block run's profile, printed and kept:
    profiled = pstats.Stats(str(tmp_path / "llm.prof")).stats  # (its top 40 may be imports on a loaded machine)
    assert any(name == "_analyze_source" for _, _, name in profiled)
    runs = json.loads((out / "analyze_llm.json").read_text())["runs"]
    assert [(r["variant"], r["blocks"], r["graphs"]) for r in runs] == [("2:4", 1, 19), ("2:4", 2, 38)]  # 16 heads + 3
    assert all(r["seconds"] > 0 and r["peak_rss_mib"] > 100 for r in runs)
    table = gzip.decompress((out / "2of4.csv.gz").read_bytes()).decode().splitlines()
    assert len(table) == 1 + 38 and all(",2:4," in row for row in table[1:])  # pruned 2:4, read as such
    sys.path.insert(0, str(REPO / "bench"))
    from analyze_llm import pruned

    weight = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    half = pruned(weight, "unstructured")
    assert int((half != 0).sum()) == 64 and half.abs().min() == 0 and (half.abs() > 0).sum() == 64
    assert weight.abs()[half != 0].min() > weight.abs()[half == 0].max()  # the largest half


def test_singular_value_benchmark_compares_the_svd_with_the_gram_solve():
    done = subprocess.run([sys.executable, "bench/singular_values.py", "--shape", "16", "40", "--device", "cpu",
                           "--repeats", "1"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    difference = float(done.stdout.rsplit("largest relative difference", 1)[1])
    assert difference < 1e-9 and "svdvals" in done.stdout and "Gram + eigvalsh" in done.stdout


def test_mutation_score_counts_killed_survived_and_equivalent_mutants_per_package():
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import mutation_score
    finally:
        sys.path.remove(str(REPO / "bench"))
    listing = "\n".join([
        "    topo.graph.null.x_er_masks__mutmut_1: killed", "    topo.graph.null.x_er_masks__mutmut_2: survived",
        "    topo.graph.null.x_er_masks__mutmut_3: timeout", "    topo.graph.null.x_er_masks__mutmut_4: survived",
        "    topo.graph.null.x_er_masks__mutmut_5: segfault", "    topo.graph.null.x_er_masks__mutmut_6: suspicious",
        "    topo.sparsity.base.x_active_count__mutmut_1: not checked",
        "    topo.families.x_natural_key__mutmut_1: no tests", "    topo.analyze.x_f__mutmut_1: survived"])
    statuses = mutation_score.parse_results(listing)
    assert len(statuses) == 9
    table = mutation_score.scores(statuses, {"topo.graph.null.x_er_masks__mutmut_4": ("equivalent", "same values"),
                                             "topo.graph.null.x_er_masks__mutmut_2": ("cuda", "device placement")})
    assert table["topo.graph"] == {"killed": 4, "survived": 0, "equivalent": 1, "cuda": 1, "not run": 0, "total": 6,
                                   "score": 1.0}
    assert table["topo.families"]["survived"] == 1 and table["topo.families"]["score"] == 0.0  # untested code
    assert table["topo.sparsity"]["not run"] == 1 and math.isnan(table["topo.sparsity"]["score"])
    assert mutation_score.mutant_glob("topo/graph/null.py") == "topo.graph.null.*"
    listed = mutation_score.read_listed()
    assert all(kind in ("equivalent", "cuda") and why.strip() and change.startswith("- ") and " ⏎ + " in change
               and mutation_score.package_of(name) for name, (kind, why, change) in listed.items())


def test_mutation_score_finds_listed_mutants_whose_change_is_no_longer_the_one_read():
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import mutation_score
    finally:
        sys.path.remove(str(REPO / "bench"))
    diff = "\n".join(["--- topo/graph/x.py", "+++ topo/graph/x.py", "@@ -1,3 +1,3 @@", " def f(a, b):",
                      "-    return a  <  b", "+    return a <= b", "     # unchanged"])
    assert mutation_score.change_of(diff) == "- return a < b ⏎ + return a <= b"
    listed = {"m_1": ("equivalent", "why", "- a ⏎ + b"), "m_2": ("cuda", "why", "- c ⏎ + d"),
              "m_3": ("equivalent", "why", "- e ⏎ + f"), "m_4": ("equivalent", "why", "- g ⏎ + h")}
    now = {"m_1": "- a ⏎ + b", "m_2": "- c ⏎ + x", "m_3": None, "m_4": "- g ⏎ + h"}
    stale = mutation_score.stale_listings(listed, {"m_1", "m_2", "m_3", "m_5"}, change=now.get)
    assert stale == {"m_2": "- c ⏎ + x", "m_3": None}  # m_4: not among the names asked about


def test_mutation_results_carried_in_the_repository_count_only_while_their_function_is_unchanged(tmp_path):
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import mutation_score
    finally:
        sys.path.remove(str(REPO / "bench"))
    assert mutation_score.function_of("topo.graph.null.x_er_masks__mutmut_3") == ("topo/graph/null.py", "x_er_masks")
    assert mutation_score.function_of("topo.graph.backends.xǁCPUBackendǁtransitivity__mutmut_12") == (
        "topo/graph/backends.py", "xǁCPUBackendǁtransitivity")
    meta = tmp_path / "mutants" / "topo" / "graph" / "null.py.meta"
    meta.parent.mkdir(parents=True)
    meta.write_text(json.dumps({"hash_by_function_name": {"x_er_masks": "aaa", "x_nm_masks": "bbb"}}))
    hashes = mutation_score.function_hashes(tmp_path / "mutants")
    assert hashes == {("topo/graph/null.py", "x_er_masks"): "aaa", ("topo/graph/null.py", "x_nm_masks"): "bbb"}
    here = {"topo.graph.null.x_er_masks__mutmut_1": "killed", "topo.graph.null.x_er_masks__mutmut_2": "not checked",
            "topo.graph.null.x_nm_masks__mutmut_1": "not checked", "topo.graph.null.x_nm_masks__mutmut_2": "survived"}
    record = tmp_path / "record.tsv"
    assert mutation_score.save_record(here, hashes, record) == 2  # the results this machine has
    assert mutation_score.read_record(record) == {"topo.graph.null.x_er_masks__mutmut_1": ("killed", "aaa"),
                                                  "topo.graph.null.x_nm_masks__mutmut_2": ("survived", "bbb")}
    carried = {"topo.graph.null.x_er_masks__mutmut_2": ("killed", "aaa"),  # function unchanged: taken
               "topo.graph.null.x_nm_masks__mutmut_1": ("killed", "old"),  # function changed since: not taken
               "topo.graph.null.x_er_masks__mutmut_1": ("survived", "aaa")}  # a result here wins
    merged, taken = mutation_score.with_record(here, carried, hashes)
    assert taken == {"topo.graph.null.x_er_masks__mutmut_2"}
    assert merged == {**here, "topo.graph.null.x_er_masks__mutmut_2": "killed"}

