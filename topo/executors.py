"""Where independent jobs run: one after the other in this process (``local``), in worker processes on this
machine (``processes``), or as Ray tasks (``ray``).

A Table 2 grid or the analysis of many runs is a list of independent jobs, each writing into its own run
directory. :func:`run_jobs` runs them with the executor named. With ``processes`` a pool of ``workers`` fresh
Python processes (spawned, so nothing of the driver's state is shared) runs them, each process with its share
of the machine's cores as torch threads. With ``ray`` every job is a Ray task with its own
resources (``cpus_per_run``, ``gpus_per_run``; a fraction of a GPU lets several small runs share one). Without an
``address`` Ray starts a local cluster on this machine; ``address="auto"`` or ``"HOST:PORT"`` joins a running one
(``ray start --head`` …). A task whose worker process dies is retried up to ``max_retries`` times; jobs are
written to resume from their run directory's checkpoint, so a retry continues where the dead worker stopped.
Ray gives a task as many threads as the CPUs it asks for; on the CPU, a run computes bit for bit what the local
executor computes when it has the same number of threads (floating-point sums depend on the threads).

On a cluster of several machines every worker must see the same files: the output root must be shared storage
(NFS, a parallel file system), and topo must be installed on every node. :func:`check_output_root` refuses an
output root that cannot be shared (relative, or under ``/tmp``) with a non-local address unless forced.

Ray is an optional dependency (``pip install "topo[ray]"``).
"""

from __future__ import annotations

import logging
import math
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from topo.errors import ConfigError, TopoError

log = logging.getLogger(__name__)

EXECUTORS = ("local", "processes", "ray")
#: Seconds to wait for a cluster's address to accept a connection before giving up.
CONNECT_TIMEOUT_S = 10.0


class JobsFailed(TopoError):
    """Some jobs raised (or lost their worker more often than allowed); the others finished.

    ``failures`` maps each failed job's name to its error message.
    """

    def __init__(self, failures: dict[str, str]) -> None:
        self.failures = failures
        listed = "; ".join(f"{name}: {why}" for name, why in failures.items())
        super().__init__(f"{len(failures)} job(s) failed: {listed}")


@dataclass
class RayOptions:
    """How jobs run on Ray.

    ``address``: None starts a local cluster (``num_cpus`` CPUs, default all); ``"auto"`` or ``"HOST:PORT"``
    joins a running cluster. ``gpus_per_run``: None gives every run one GPU when the cluster has GPUs, none
    otherwise. ``max_retries``: how often a job whose worker died is started again.
    """

    address: str | None = None
    cpus_per_run: float = 1.0
    gpus_per_run: float | None = None
    max_retries: int = 3
    num_cpus: int | None = None
    force: bool = False

    def validate(self) -> None:
        """Raise a :class:`~topo.errors.ConfigError` naming an option out of range: CPUs or GPUs per run not
        positive, negative retries, fewer than one CPU, an address that is neither ``auto`` nor HOST:PORT."""
        if not self.cpus_per_run > 0:
            raise ConfigError(f"--cpus-per-run must be > 0, got {self.cpus_per_run}")
        if self.gpus_per_run is not None and not self.gpus_per_run > 0:
            raise ConfigError(f"--gpus-per-run must be > 0, got {self.gpus_per_run}")
        if self.max_retries < 0:
            raise ConfigError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.num_cpus is not None and self.num_cpus < 1:
            raise ConfigError(f"num_cpus must be >= 1, got {self.num_cpus}")
        if self.address not in (None, "auto") and not self.address.startswith("ray://"):
            host, _, port = self.address.rpartition(":")
            if not host or not port.isdigit():
                raise ConfigError(f"--address {self.address!r} is not auto or HOST:PORT")

    @property
    def remote_address(self) -> bool:
        """Whether ``address`` names another machine's cluster."""
        return self.address is not None and not _is_this_machine(self.address)


@dataclass
class Job:
    """One unit of work: ``function(*args)``, known by ``name`` in progress and errors."""

    name: str
    function: Callable[..., Any]
    args: tuple[Any, ...]


def require_ray() -> Any:
    """The ``ray`` module, or a one-line :class:`ConfigError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError('the ray executor needs Ray: pip install "topo[ray]" (or pip install ray)') from None
    return ray


def _is_this_machine(address: str) -> bool:
    host = address.rsplit(":", 1)[0]
    return host in ("auto", "localhost", "127.0.0.1", "::1", socket.gethostname())


def check_output_root(root: str | os.PathLike, options: RayOptions, nodes: int = 1) -> None:
    """Refuse an output root the workers of a cluster of several machines cannot share: relative, or under /tmp.

    Every worker writes its run directory under the root, so when ``options.address`` names another machine or
    the cluster has several ``nodes`` it must be one shared file system path that means the same on every node.
    ``options.force`` skips the check.
    """
    if options.force or not (options.remote_address or nodes > 1):
        return
    path = Path(root)
    if not path.is_absolute() or path.resolve().is_relative_to("/tmp"):
        where = "relative" if not path.is_absolute() else "under /tmp"
        raise ConfigError(f"output root {str(root)!r} is {where}: on a cluster of several machines "
                          f"({options.address or nodes}) every node writes there, so give an absolute path on "
                          "shared storage, or --force if this cluster's nodes share it")


def _check_reachable(address: str) -> None:
    """Fail fast (within :data:`CONNECT_TIMEOUT_S`) when ``HOST:PORT`` does not accept connections."""
    if address == "auto" or address.startswith("ray://"):
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise ConfigError(f"--address {address}: no Ray cluster reachable there ({exc.strerror or exc})") from None


def connect(options: RayOptions, output_root: str | os.PathLike | None = None) -> tuple[Any, bool]:
    """Ray, initialised for ``options``; and whether this call started it (and so must shut it down).

    An already initialised Ray (a notebook's, a test's) is used as it is. Raises :class:`ConfigError` when Ray
    is missing, the address is unreachable, the cluster cannot give a run the CPUs or GPUs asked for, or
    ``output_root`` cannot be shared by its nodes (:func:`check_output_root`).
    """
    options.validate()
    ray = require_ray()
    if output_root is not None:
        check_output_root(output_root, options)
    started = False
    if options.address is not None:
        _check_reachable(options.address)
    if not ray.is_initialized():
        if options.address is None:
            _check_resources({"CPU": float(options.num_cpus or os.cpu_count() or 1),
                              "GPU": float(_local_gpus())}, options)
            ray.init(num_cpus=options.num_cpus, include_dashboard=False, log_to_driver=False)
        else:
            try:
                ray.init(address=options.address, log_to_driver=False)
            except ConnectionError as exc:
                raise ConfigError(f"--address {options.address}: {exc}") from None
        started = True
    try:
        _check_resources(ray.cluster_resources(), options)
        if output_root is not None:
            check_output_root(output_root, options, nodes=sum(1 for node in ray.nodes() if node.get("Alive")))
    except ConfigError:
        if started:
            ray.shutdown()
        raise
    return ray, started


def _local_gpus() -> int:
    """The GPUs a local Ray cluster would find here (those torch sees)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _check_resources(resources: dict[str, float], options: RayOptions) -> None:
    gpus, cpus = resources.get("GPU", 0.0), resources.get("CPU", 0.0)
    if options.gpus_per_run is not None and options.gpus_per_run > gpus:
        raise ConfigError(f"--gpus-per-run {options.gpus_per_run:g} but the Ray cluster has {gpus:g} GPU(s)")
    if options.cpus_per_run > cpus:
        raise ConfigError(f"--cpus-per-run {options.cpus_per_run:g} but the Ray cluster has {cpus:g} CPU(s)")


def gpus_per_run(options: RayOptions, resources: dict[str, float]) -> float:
    """The GPUs each run asks for: the option, else one when the cluster has any, else none."""
    if options.gpus_per_run is not None:
        return options.gpus_per_run
    return 1.0 if resources.get("GPU", 0.0) >= 1 else 0.0


def _slots(resources: dict[str, float], cpus: float, gpus: float) -> int:
    """How many runs fit on the cluster at once."""
    fit = math.floor(resources.get("CPU", 0.0) / cpus + 1e-9)
    if gpus > 0:
        fit = min(fit, math.floor(resources.get("GPU", 0.0) / gpus + 1e-9))
    return max(fit, 1)


def run_jobs(
    jobs: Sequence[Job],
    executor: str = "local",
    ray_options: RayOptions | None = None,
    progress: bool = True,
    headline: Callable[[Any], str] | None = None,
    output_root: str | os.PathLike | None = None,
    workers: int | None = None,
) -> list[Any]:
    """Each job's result, in the order of ``jobs``.

    ``local`` runs them here one after the other. ``processes`` runs them in ``workers`` worker processes (default:
    one per core) and ``ray`` submits them all as tasks; both show one bar over jobs (its time left included) with
    the ``headline`` of each finished job's result. Every executor runs every job: when some fail, the others
    still finish, then :class:`JobsFailed` names the failed ones with their errors.
    Interrupting the driver (Ctrl-C) stops at once; under Ray it cancels the tasks still running (their run
    directories keep their last checkpoint). With no jobs nothing is started (no Ray cluster). ``output_root`` is
    where the jobs write, checked with :func:`check_output_root`.
    """
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor {executor!r}; valid: {', '.join(EXECUTORS)}")
    if not jobs:
        return []
    if workers is not None and (executor != "processes" or workers < 1):
        raise ConfigError(f"--workers applies to --executor processes and must be >= 1, got {workers} with "
                          f"{executor}")
    if executor == "local":
        return _run_here(jobs)
    if executor == "processes":
        return _run_in_processes(jobs, workers or os.cpu_count() or 1, progress, headline)
    options = ray_options or RayOptions()
    ray, started = connect(options, output_root)
    try:
        return _run_on_ray(ray, jobs, options, progress, headline)
    finally:
        if started:
            ray.shutdown()


def _run_here(jobs: Sequence[Job]) -> list[Any]:
    """Every job here, in order; failures are collected and named at the end (:class:`JobsFailed`)."""
    results: list[Any] = []
    failures: dict[str, str] = {}
    for job in jobs:
        try:
            results.append(job.function(*job.args))
        except Exception as exc:  # noqa: BLE001 - any job's error is reported, the other jobs still run
            log.warning("%s failed: %s", job.name, exc)
            failures[job.name] = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
            results.append(None)
    if failures:
        raise JobsFailed(failures)
    return results


def _limit_threads(threads: int) -> None:
    """A worker process's share of the cores: ``threads`` torch threads (set before any job runs)."""
    import torch

    torch.set_num_threads(threads)


def _run_in_processes(jobs: Sequence[Job], workers: int, progress: bool,
                      headline: Callable[[Any], str] | None) -> list[Any]:
    """Every job in a pool of ``workers`` spawned processes, each with its share of the cores as torch threads;
    results in the order of ``jobs``, failures named at the end (:class:`JobsFailed`), a worker that died (killed
    for memory) reported as its job's failure. Interrupting the driver cancels the jobs not started."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    workers = min(workers, len(jobs))
    threads = max(1, (os.cpu_count() or 1) // workers)
    results: list[Any] = [None] * len(jobs)
    failures: dict[str, str] = {}
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_limit_threads, initargs=(threads,))
    bar = tqdm(total=len(jobs), desc="jobs", unit="job", disable=not progress)
    try:
        futures = {pool.submit(job.function, *job.args): index for index, job in enumerate(jobs)}
        for future in as_completed(futures):
            index = futures[future]
            name = jobs[index].name
            try:
                results[index] = future.result()
            except BrokenProcessPool:
                failures[name] = "its worker process died (out of memory?)"
            except Exception as exc:  # noqa: BLE001 - any job's error is reported, the other jobs still run
                failures[name] = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
            else:
                log.info("%s done%s", name, f": {headline(results[index])}" if headline else "")
                if headline:
                    bar.set_description(f"jobs (last: {name} {headline(results[index])})")
            bar.update()
            bar.set_postfix(failed=len(failures))
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        bar.close()
    pool.shutdown()
    if failures:
        raise JobsFailed(failures)
    return results


def _run_on_ray(ray: Any, jobs: Sequence[Job], options: RayOptions, progress: bool,
                headline: Callable[[Any], str] | None) -> list[Any]:
    resources = ray.cluster_resources()
    gpus = gpus_per_run(options, resources)
    slots = _slots(resources, options.cpus_per_run, gpus)
    remote: dict[Callable[..., Any], Any] = {}
    pending: dict[Any, int] = {}
    for index, job in enumerate(jobs):
        if job.function not in remote:
            remote[job.function] = ray.remote(job.function)
        task = remote[job.function].options(num_cpus=options.cpus_per_run, num_gpus=gpus,
                                            max_retries=options.max_retries, retry_exceptions=False, name=job.name)
        pending[task.remote(*job.args)] = index
    results: list[Any] = [None] * len(jobs)
    failures: dict[str, str] = {}
    bar = tqdm(total=len(jobs), desc="runs", unit="run", disable=not progress)
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                index = pending.pop(ref)
                name = jobs[index].name
                try:
                    results[index] = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:
                    cause = exc.cause if getattr(exc, "cause", None) is not None else exc
                    failures[name] = str(cause).strip().splitlines()[-1] if str(cause).strip() else repr(cause)
                except ray.exceptions.RayError as exc:
                    failures[name] = f"{type(exc).__name__} after {options.max_retries} retries"
                else:
                    log.info("%s done%s", name, f": {headline(results[index])}" if headline else "")
                    if headline:
                        bar.set_description(f"runs (last: {name} {headline(results[index])})")
                bar.update()
                bar.set_postfix(running=min(len(pending), slots), queued=max(len(pending) - slots, 0),
                                failed=len(failures))
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    finally:
        bar.close()
    if failures:
        raise JobsFailed(failures)
    return results
