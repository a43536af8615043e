"""Table 2 grids and run analysis on Ray: same table as the local executor, dead workers resumed, bad input."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from topo.analyze import analyze_runs
from topo.cli import main as cli_main
from topo.errors import CheckpointError, ConfigError
from topo.executors import Job, JobsFailed, RayOptions, check_output_root, run_jobs
from topo.experiments import table as table_module
from topo.experiments.table import reproduce_table2, summarize_table
from topo.experiments.train import TrainConfig, recorded_result
from topo.record import RunReader
from topo.record.lock import lock_holder, run_lock

#: 2 methods × 2 seeds on the bundled digits, long enough for the methods to differ.
BASE = TrainConfig(model="mlp", dataset="digits", epochs=6, batch_size=64, widths=[48, 48])
GRID = {"log_alphas": [0.5], "ks": [0.5], "seeds": 2, "methods": ["random-fixed", "adaptive"]}
#: CPUs per Ray task: the local runs' torch threads (at most the test cluster's 2), so both compute alike
THREADS = float(min(torch.get_num_threads(), 2))


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray cluster with 2 CPUs for the module (the executor uses an initialised Ray as it is)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def local_grid(tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    return reproduce_table2(BASE, **GRID, out_dir=out, progress=False), out


def _masks(run_dir: Path) -> dict[str, np.ndarray]:
    reader = RunReader(run_dir)
    return {name: np.asarray(mask) for name, mask in reader.masks(reader.epochs[-1]).items()}


@pytest.mark.slow
def test_ray_grid_gives_the_local_executors_table(ray_cluster, local_grid, tmp_path):
    local, _ = local_grid
    # a run computes the same numbers with the same number of threads: give each task the local run's threads
    same_threads = RayOptions(cpus_per_run=THREADS)
    on_ray = reproduce_table2(BASE, **GRID, out_dir=tmp_path, progress=False, executor="ray", ray_options=same_threads)
    assert local.score.nunique() > 1  # the runs learned something that tells them apart
    columns = ["model", "method", "log_alpha", "k", "seed", "label", "score"]
    pd.testing.assert_frame_equal(local[columns], on_ray[columns])
    pd.testing.assert_frame_equal(summarize_table(local), summarize_table(on_ray))
    for run in on_ray.itertuples():
        assert lock_holder(run.run_dir).split(":")[-1] != str(os.getpid())  # trained by Ray workers


@pytest.mark.slow
def test_a_killed_worker_is_retried_and_resumes_its_run(ray_cluster, local_grid, tmp_path):
    local, local_root = local_grid
    victim = tmp_path / "mlp-adaptive-la0.5-k0.5-s0"
    outcome: dict[str, object] = {}

    def grid() -> None:
        try:
            outcome["runs"] = reproduce_table2(BASE, **GRID, out_dir=tmp_path, progress=False, executor="ray",
                                               ray_options=RayOptions(max_retries=2, cpus_per_run=THREADS))
        except BaseException as exc:  # reported by the assertion below
            outcome["error"] = exc

    driver = threading.Thread(target=grid)
    driver.start()
    killed = None
    deadline = time.monotonic() + 300
    while killed is None and time.monotonic() < deadline and driver.is_alive():
        if (victim / "checkpoint.pt").exists() and not RunReader(victim).meta.get("finished"):
            holder = lock_holder(victim)
            if holder:
                killed = int(holder.split(":")[-1])
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.005)
    driver.join(timeout=600)
    assert "error" not in outcome, outcome.get("error")
    assert killed is not None, "the run finished before a checkpoint could be seen mid-run"
    assert lock_holder(victim).split(":")[-1] != str(killed)  # a new worker finished it

    stats = pd.read_csv(victim / "stats.csv")
    epochs = stats.groupby("layer")["epoch"].apply(list)
    assert all(list(e) == list(range(BASE.epochs)) for e in epochs)
    reference = _masks(local_root / victim.name)
    resumed = _masks(victim)
    assert reference.keys() == resumed.keys()
    for name in reference:
        np.testing.assert_array_equal(reference[name], resumed[name], err_msg=name)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(Path(r).name for r in local.run_dir)
    assert outcome["runs"].score.tolist() == local.score.tolist()


@pytest.mark.slow
def test_analyze_runs_on_ray_is_one_tidy_table(ray_cluster, local_grid):
    local, _ = local_grid
    paths = list(local.run_dir)
    here = analyze_runs(paths, progress=False, save=False)
    on_ray = analyze_runs(paths, executor="ray", progress=False, save=False)
    assert set(on_ray.run) == {Path(p).name for p in paths}
    pd.testing.assert_frame_equal(here, on_ray)


@pytest.mark.slow
def test_failed_ray_jobs_are_named_after_the_others_finish(ray_cluster):
    with pytest.raises(JobsFailed, match=r"1 job\(s\) failed: bad: .*mean requires at least one data point"):
        run_jobs([Job("good", statistics.mean, ([1, 2],)), Job("bad", statistics.mean, ([],))], "ray",
                 progress=False)
    assert run_jobs([Job("a", statistics.mean, ([1, 5],)), Job("b", statistics.median, ([1, 2, 9],))], "ray",
                    progress=False) == [3, 2]


def test_a_restarted_grid_submits_only_unfinished_runs(tmp_path, monkeypatch):
    base = replace(BASE, epochs=2, max_batches=2)
    first = reproduce_table2(base, **GRID, out_dir=tmp_path, progress=False)
    unfinished = Path(first.run_dir[1])
    meta = RunReader(unfinished).meta
    del meta["finished"]
    (unfinished / "run.json").write_text(json.dumps(meta))
    submitted = []
    real = table_module.run_jobs

    def spy(jobs, *args, **kwargs):
        submitted.extend(job.name for job in jobs)
        return real(jobs, *args, **kwargs)

    monkeypatch.setattr(table_module, "run_jobs", spy)
    again = reproduce_table2(base, **GRID, out_dir=tmp_path, progress=False)
    assert submitted == [unfinished.name]
    assert again.score.tolist() == first.score.tolist()


def test_recorded_result_only_for_a_finished_run_of_the_same_configuration(tmp_path):
    config = replace(BASE, method="random-fixed", epochs=2, max_batches=2)
    assert recorded_result(config, tmp_path / "none") is None
    run = reproduce_table2(config, [0.5], [0.5], 1, tmp_path, progress=False, methods=["random-fixed"]).run_dir[0]
    assert recorded_result(config, run) is not None
    assert recorded_result(replace(config, device="cpu", data_dir="/elsewhere"), run) is not None
    assert recorded_result(replace(config, lr=0.01), run) is None
    assert recorded_result(replace(config, epochs=3), run) is None


def test_one_writer_per_run_directory(tmp_path):
    with run_lock(tmp_path / "run"):
        assert lock_holder(tmp_path / "run").endswith(f":{os.getpid()}")
        code = ("import sys; from topo.record.lock import run_lock\n"
                "try:\n    run_lock(sys.argv[1]).__enter__()\nexcept Exception as e:\n    print(e); sys.exit(3)")
        other = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")], capture_output=True, text=True)
        assert other.returncode == 3 and "another process is training" in other.stdout
        assert str(os.getpid()) in other.stdout
    with run_lock(tmp_path / "run"):  # released
        pass


def test_local_jobs_run_in_order_and_failures_are_named():
    assert run_jobs([Job("a", pow, (2, 3)), Job("b", pow, (3, 2))]) == [8, 9]
    done = []

    def record(value):
        done.append(value)
        return value

    with pytest.raises(JobsFailed, match=r"2 job\(s\) failed: bad: .*mean requires at least one data point; "
                                         r"worse: .*by zero") as failed:
        run_jobs([Job("good", record, (1,)), Job("bad", statistics.mean, ([],)), Job("after", record, (2,)),
                  Job("worse", divmod, (1, 0)), Job("last", record, (3,))])
    assert done == [1, 2, 3] and set(failed.value.failures) == {"bad", "worse"}  # the same semantics as Ray's
    with pytest.raises(ConfigError, match="unknown executor 'dask'; valid: local, processes, ray"):
        run_jobs([], "dask")


def test_no_ray_cluster_is_started_when_every_run_is_finished(tmp_path, monkeypatch):
    import topo.executors as executors

    def refuse(*args, **kwargs):
        raise AssertionError("connected to Ray with nothing to run")

    monkeypatch.setattr(executors, "connect", refuse)
    assert run_jobs([], "ray") == []
    base = replace(BASE, epochs=1, max_batches=1)
    first = reproduce_table2(base, **{**GRID, "seeds": 1}, out_dir=tmp_path, progress=False)
    again = reproduce_table2(base, **{**GRID, "seeds": 1}, out_dir=tmp_path, progress=False, executor="ray")
    assert again.score.tolist() == first.score.tolist()


def test_output_root_must_be_shareable_on_a_cluster_of_several_machines(tmp_path):
    remote = RayOptions(address="10.1.2.3:6379")
    with pytest.raises(ConfigError, match="relative"):
        check_output_root("results/grid", remote)
    with pytest.raises(ConfigError, match="under /tmp"):
        check_output_root("/tmp/grid", remote)
    with pytest.raises(ConfigError, match="under /tmp"):
        check_output_root("/tmp/grid", RayOptions(), nodes=3)
    check_output_root("/tmp/grid", replace(remote, force=True))
    check_output_root("results/grid", RayOptions())
    check_output_root("/srv/shared/grid", remote)


def _topo(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "topo.cli", "--quiet", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


GRID_ARGS = ("reproduce", "table2", "--model", "mlp-digits", "--epochs", "1", "--seeds", "1", "--methods", "dense")


@pytest.mark.parametrize(("extra", "message"), [
    (("--executor", "ray", "--gpus-per-run", "0"), "--gpus-per-run must be > 0, got 0.0"),
    (("--executor", "ray", "--gpus-per-run", "-1"), "--gpus-per-run must be > 0"),
    (("--executor", "ray", "--gpus-per-run", "64"), "--gpus-per-run 64 but the Ray cluster has"),
    (("--executor", "ray", "--cpus-per-run", "0"), "--cpus-per-run must be > 0"),
    (("--executor", "ray", "--address", "127.0.0.1:9"), "--address 127.0.0.1:9: no Ray cluster reachable"),
    (("--executor", "ray", "--address", "not-an-address"), "is not auto or HOST:PORT"),
    (("--gpus-per-run", "1"), "--gpus-per-run applies to --executor ray"),
])
def test_bad_executor_options_are_one_line_and_write_nothing(tmp_path, capsys, extra, message):
    out = tmp_path / "t2"
    started = time.monotonic()
    assert cli_main(["--quiet", *GRID_ARGS, "--out", str(out), *extra]) == 1
    assert time.monotonic() - started < 30
    stderr = capsys.readouterr().err
    assert message in stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert not out.exists()


def test_a_relative_output_root_is_refused_for_a_remote_cluster(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli_main([*GRID_ARGS, "--out", "grid", "--executor", "ray", "--address", "10.1.2.3:6379"]) == 1
    stderr = capsys.readouterr().err
    assert "is relative" in stderr and "--force" in stderr
    assert not (tmp_path / "grid").exists()


def test_ray_executor_without_ray_says_how_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what an environment without Ray gives: ImportError
    assert cli_main([*GRID_ARGS, "--out", str(tmp_path / "t2"), "--executor", "ray"]) == 1
    expected = 'topo: error: the ray executor needs Ray: pip install "topo[ray]" (or pip install ray)'
    assert capsys.readouterr().err.strip() == expected
    assert not (tmp_path / "t2").exists()


def test_analyze_refuses_a_mix_of_runs_and_other_paths(tmp_path):
    with pytest.raises(CheckpointError, match="not a topo run directory"):
        analyze_runs([tmp_path], progress=False)


def test_analyze_command_puts_several_runs_into_one_table(local_grid, tmp_path):
    local, _ = local_grid
    out = tmp_path / "all.csv"
    result = _topo("analyze", *local.run_dir, "--csv", str(out))
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(out)
    assert set(table.run) == {Path(p).name for p in local.run_dir}
    assert {"algebraic_connectivity", "turnover"} <= set(table.metric)
    missing = _topo("analyze", *local.run_dir)
    assert missing.returncode == 1 and "several runs: --csv FILE" in missing.stderr


@pytest.mark.slow
def test_a_checkpoint_analysed_on_ray_gives_the_local_table(ray_cluster, tmp_path):
    from topo.analyze import analyze_checkpoint

    torch.manual_seed(0)
    state = {f"blocks.0.{part}.weight": torch.randn(32, 32) * (torch.rand(32, 32) < 0.3)
             for part in ("q_proj", "k_proj", "v_proj", "o_proj")}
    state["embed_tokens.weight"] = torch.randn(40, 32)
    torch.save(state, tmp_path / "model.pt")
    options = {"heads": True, "num_heads": 4, "null": "er", "null_samples": 4, "progress": False}
    here = analyze_checkpoint(tmp_path / "model.pt", **options)
    on_ray = analyze_checkpoint(tmp_path / "model.pt", executor="ray", ray_options=RayOptions(cpus_per_run=THREADS),
                                resume_dir=tmp_path / "kept", **options)
    assert len(here.table) == 4 * 4 and on_ray.reading == here.reading  # the table left out embed_tokens alike
    pd.testing.assert_frame_equal(on_ray.table, here.table)
    assert on_ray.degrees.keys() == here.degrees.keys() and not (tmp_path / "kept").exists()
    with pytest.raises(ConfigError, match="--global ranks every layer"):
        analyze_checkpoint(tmp_path / "model.pt", executor="ray", backbone="magnitude:0.5", global_backbone=True)


def test_jobs_in_worker_processes_come_back_in_order_and_failures_are_named():
    assert run_jobs([Job(str(i), pow, (i, 2)) for i in range(5)], "processes", workers=2, progress=False) == \
        [0, 1, 4, 9, 16]
    with pytest.raises(JobsFailed, match=r"1 job\(s\) failed: bad: .*by zero") as failed:
        run_jobs([Job("good", pow, (2, 2)), Job("bad", divmod, (1, 0))], "processes", workers=2, progress=False)
    assert set(failed.value.failures) == {"bad"}
    with pytest.raises(ConfigError, match="--workers applies to --executor processes"):
        run_jobs([Job("a", pow, (2, 2))], "local", workers=2)


def test_a_checkpoint_analysed_in_worker_processes_gives_the_local_table(tmp_path):
    from topo.analyze import analyze_checkpoint

    torch.manual_seed(0)
    state = {f"blocks.{b}.{part}.weight": torch.randn(32, 32) * (torch.rand(32, 32) < 0.3)
             for b in range(2) for part in ("q_proj", "k_proj", "v_proj", "o_proj")}
    torch.save(state, tmp_path / "model.pt")
    options = {"heads": True, "num_heads": 4, "null": "er", "null_samples": 3, "progress": False}
    here = analyze_checkpoint(tmp_path / "model.pt", **options)
    workers = analyze_checkpoint(tmp_path / "model.pt", executor="processes", workers=2,
                                 resume_dir=tmp_path / "kept", **options)
    pd.testing.assert_frame_equal(workers.table, here.table)
    assert workers.degrees.keys() == here.degrees.keys() and not (tmp_path / "kept").exists()
    with pytest.raises(ConfigError, match="--workers applies to --executor processes"):
        analyze_checkpoint(tmp_path / "model.pt", workers=2)
