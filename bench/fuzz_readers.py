"""Fuzz every reader of user files: mutated checkpoints and run directories must read or end in one line.

Usage: python bench/fuzz_readers.py [--cases 10000] [--seed 0] [--timeout 20] [--json out.json]

Builds small valid files of every format ``topo analyze`` reads — a ``torch.save`` state dict with a
``torch.nn.utils.prune`` pair, a nested checkpoint with optimizer state, a legacy (non-zip) ``torch.save`` file, a
``.safetensors`` file, a sharded checkpoint (``*.index.json`` and two shards) and a recorded run directory (its
``run.json``, ``stats.csv``, snapshots, ``graph_metrics.csv`` and ``checkpoint.pt``) — then, case by case, copies
one into a fresh folder, mutates it (bytes truncated, flipped, overwritten, zeroed, inserted, deleted or appended;
a zip member of a ``.pt`` cut short, emptied, lengthened or dropped, its pickle's bytes flipped; a JSON value of
another type, a key removed; a run file removed) and runs ``topo analyze`` on it in this process. Every case must
end in one of two outcomes:

* **read**: exit 0, and for single ``.pt``/``.safetensors`` files the weights topo read equal what the strict
  readers (``torch.load`` without memory-mapping, ``safetensors.torch.load_file``) read, where those read the file
  at all;
* **refused**: exit 1 with exactly one ``topo: error:`` line on stderr, no traceback, and nothing written or
  changed in the case's folder.

Anything else is a failure: an exception that escaped (**crash**), a refusal in several lines (**lines**), a
refusal that wrote (**wrote**), a read that the strict readers refuse or read differently (**silent**), or a case
that ran past ``--timeout`` seconds (**hang**). Prints the counts per outcome and format, the slowest case, and
every failure with the mutation that made it (re-run one with ``--seed``); exits 1 if any case failed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import random
import shutil
import signal
import sys
import tempfile
import time
import warnings
import zipfile
from collections import Counter
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.utils import prune

from topo.cli import main as topo_main


class Hang(BaseException):
    """Raised by the alarm when a case runs past its time (a BaseException, so no reader's handler swallows it)."""


# -- seed files --------------------------------------------------------------------------------------------------
def _model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    with torch.no_grad():
        for layer in (model[0], model[2]):
            layer.weight.mul_(torch.rand_like(layer.weight) < 0.4)
    return model


def make_seeds(folder: Path) -> dict[str, Path]:
    """One small valid file (or folder) of each format, by name."""
    from topo.record import Recorder
    from topo.sparsity import make_sparsifier

    folder.mkdir(parents=True, exist_ok=True)
    seeds: dict[str, Path] = {}
    model = _model()
    pruned = _model()
    prune.l1_unstructured(pruned[4], "weight", amount=0.5)
    seeds["state.pt"] = folder / "state.pt"
    torch.save(pruned.state_dict(), seeds["state.pt"])
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 12)).sum().backward()
    optimizer.step()
    seeds["nested.pt"] = folder / "nested.pt"
    torch.save({"epoch": 3, "model_state": model.state_dict(), "optimizer_state": optimizer.state_dict()},
               seeds["nested.pt"])
    seeds["legacy.pt"] = folder / "legacy.pt"
    torch.save(model.state_dict(), seeds["legacy.pt"], _use_new_zipfile_serialization=False)
    seeds["model.safetensors"] = folder / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(seeds["model.safetensors"]))
    sharded = folder / "sharded"
    sharded.mkdir()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    names = list(state)
    save_file({k: state[k] for k in names[:3]}, str(sharded / "model-00001-of-00002.safetensors"))
    save_file({k: state[k] for k in names[3:]}, str(sharded / "model-00002-of-00002.safetensors"))
    index = {"metadata": {"total_size": 0}, "weight_map": {k: f"model-0000{1 if i < 3 else 2}-of-00002.safetensors"
                                                           for i, k in enumerate(names)}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    seeds["sharded"] = sharded
    run_model = _model()
    run_optimizer = torch.optim.SGD(run_model.parameters(), lr=0.1)
    sparsifier = make_sparsifier("set", run_model, run_optimizer, density=0.5, seed=0)
    run = folder / "run"
    with Recorder(run, sparsifier, metrics_every=1) as recorder:
        for epoch in range(2):
            run_model(torch.randn(8, 12)).pow(2).mean().backward()
            run_optimizer.step()
            sparsifier.step()
            run_optimizer.zero_grad()
            recorder.snapshot(epoch, {"val_loss": 1.0 / (epoch + 1)})
            sparsifier.end_epoch(epoch)
    seeds["run"] = run
    return seeds


# -- mutations ---------------------------------------------------------------------------------------------------
def mutate_bytes(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """One byte-level mutation of ``data`` and its description."""
    n = len(data)
    kind = rng.choice(["truncate", "flip", "overwrite", "zero", "insert", "delete", "append", "empty"])
    at = rng.randrange(n) if n else 0
    if kind == "truncate":
        return data[:at], f"truncated to {at} of {n} bytes"
    if kind == "flip":
        out = bytearray(data)
        flips = rng.randint(1, 8)
        for _ in range(flips):
            if out:
                out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
        return bytes(out), f"{flips} bit(s) flipped"
    if kind == "overwrite":
        span = rng.randint(1, 64)
        return data[:at] + rng.randbytes(span) + data[at + span:], f"{span} bytes overwritten at {at}"
    if kind == "zero":
        span = rng.randint(1, 256)
        return data[:at] + bytes(min(span, n - at)) + data[at + span:], f"{span} bytes zeroed at {at}"
    if kind == "insert":
        span = rng.randint(1, 64)
        return data[:at] + rng.randbytes(span) + data[at:], f"{span} bytes inserted at {at}"
    if kind == "delete":
        span = rng.randint(1, 64)
        return data[:at] + data[at + span:], f"{span} bytes deleted at {at}"
    if kind == "append":
        span = rng.randint(1, 4096)
        return data + rng.randbytes(span), f"{span} bytes appended"
    return b"", "emptied"


def mutate_zip(path: Path, rng: random.Random) -> str:
    """Rewrite one member of a ``torch.save`` archive (storage records stay aligned as torch writes them)."""
    with zipfile.ZipFile(path) as archive:
        members = [(info, archive.read(info.filename)) for info in archive.infolist()]
    records = [i for i, (info, _) in enumerate(members) if "/data/" in info.filename]
    pickles = [i for i, (info, _) in enumerate(members) if info.filename.endswith("data.pkl")]
    kind = rng.choice(["cut record", "empty record", "longer record", "drop member", "flip pickle"])
    index = rng.choice(records if kind != "flip pickle" and records else pickles)
    info, data = members[index]
    if kind == "cut record":
        members[index] = (info, data[: rng.randrange(max(1, len(data)))])
    elif kind == "empty record":
        members[index] = (info, b"")
    elif kind == "longer record":
        members[index] = (info, data + bytes(rng.randint(1, 64)))
    elif kind == "drop member":
        del members[index]
    else:
        members[index] = (info, mutate_bytes(data, rng)[0])
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for member, content in members:
            archive.writestr(member, content)
    return f"zip: {kind} {info.filename}"


def _json_values(node, path=()):
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*path, key), value
            yield from _json_values(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield (*path, index), value
            yield from _json_values(value, (*path, index))


def mutate_json(path: Path, rng: random.Random) -> str:
    """Replace one value of a JSON file by a value of another type, or remove one key."""
    data = json.loads(path.read_text())
    places = list(_json_values(data))
    where, _ = rng.choice(places)
    parent = data
    for step in where[:-1]:
        parent = parent[step]
    if isinstance(parent, dict) and rng.random() < 0.3:
        del parent[where[-1]]
        description = f"json: removed {'/'.join(map(str, where))}"
    else:
        replacement = rng.choice([None, 7, -1, 1e308, "x", "../../etc/passwd", [], {}, [1, 2], {"a": 1}, True, 2**70])
        parent[where[-1]] = replacement
        description = f"json: {'/'.join(map(str, where))} = {replacement!r}"
    path.write_text(json.dumps(data))
    return description


def mutate(target: Path, rng: random.Random) -> str:
    """Mutate the copied seed at ``target`` in place; returns what was done."""
    if target.is_dir():
        files = sorted(p for p in target.rglob("*") if p.is_file())
        chosen = rng.choice(files)
        name = chosen.relative_to(target)
        if rng.random() < 0.1:
            chosen.unlink()
            return f"{name}: removed"
        return f"{name}: {mutate_file(chosen, rng)}"
    return mutate_file(target, rng)


def mutate_file(path: Path, rng: random.Random) -> str:
    if path.suffix == ".json" and rng.random() < 0.5:
        return mutate_json(path, rng)
    if path.suffix == ".pt" and zipfile.is_zipfile(path) and rng.random() < 0.5:
        return mutate_zip(path, rng)
    data, description = mutate_bytes(path.read_bytes(), rng)
    path.write_bytes(data)
    return description


# -- one case ----------------------------------------------------------------------------------------------------
def _listing(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")
            if p.is_file()}


def _strict_read(path: Path) -> dict[str, torch.Tensor] | None:
    """The tensors the strict readers find in a single file, or None where they refuse it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if path.suffix == ".safetensors":
                return load_file(str(path))
            loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=False)
    except Exception:  # the strict reader refuses: topo must refuse too
        return None
    found = {}
    pending = [loaded]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if torch.is_tensor(value):
                    found[str(key)] = value
                elif isinstance(value, (dict, list, tuple)):
                    pending.append(value)
        elif isinstance(node, (list, tuple)):
            pending.extend(v for v in node if isinstance(v, (dict, list, tuple)))
    return found


def _agrees_with_strict_readers(path: Path) -> bool:
    from topo.record import open_checkpoint

    strict = _strict_read(path)
    if strict is None:
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layers = list(open_checkpoint(path))
    for layer in layers:
        stored = strict.get(layer.name, strict.get(f"{layer.name}_orig"))
        if stored is None or stored.shape != layer.weight.shape:
            return False
        expected = stored * strict[f"{layer.name}_mask"] if f"{layer.name}_mask" in strict else stored
        if not torch.equal(torch.nan_to_num(layer.weight.float()), torch.nan_to_num(expected.float())):
            return False
    return True


def run_case(seed_path: Path, folder: Path, rng: random.Random, timeout: float) -> tuple[str, str, str, float]:
    """(outcome, mutation, detail, seconds) of one case."""
    target = folder / seed_path.name
    if seed_path.is_dir():
        shutil.copytree(seed_path, target)
    else:
        shutil.copy2(seed_path, target)
    mutation = mutate(target, rng)
    before = _listing(folder)
    out, err = io.StringIO(), io.StringIO()
    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(Hang()))
    signal.setitimer(signal.ITIMER_REAL, timeout)
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            warnings.simplefilter("always")
            code = topo_main(["--quiet", "analyze", str(target), "--json"])
        if code == 0 and target.suffix in (".pt", ".safetensors") and not _agrees_with_strict_readers(target):
            return "silent", mutation, "read, but the strict readers refuse or differ", time.perf_counter() - start
    except Hang:
        return "hang", mutation, f"over {timeout:g} s", time.perf_counter() - start
    except BaseException as exc:  # a crash: anything main() let through
        return "crash", mutation, f"{type(exc).__name__}: {str(exc)[:200]}", time.perf_counter() - start
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    seconds = time.perf_counter() - start
    if code == 0:
        return "read", mutation, "", seconds
    errors = [line for line in err.getvalue().splitlines() if line.startswith("topo: error:")]
    if code != 1 or len(errors) != 1 or "Traceback" in err.getvalue():
        return "lines", mutation, err.getvalue()[-300:], seconds
    if _listing(folder) != before:
        return "wrote", mutation, errors[0], seconds
    return "refused", mutation, errors[0], seconds


def fuzz(cases: int, seed: int, timeout: float) -> dict:
    """Run ``cases`` cases from ``seed``; returns the figures (see the module docstring)."""
    rng = random.Random(seed)
    outcomes: Counter = Counter()
    per_format: dict[str, Counter] = {}
    failures, slowest = [], (0.0, "", "")
    with tempfile.TemporaryDirectory() as root:
        seeds = make_seeds(Path(root) / "seeds")
        for case in range(cases):
            name = rng.choice(sorted(seeds))
            case_rng = random.Random(rng.getrandbits(64))
            folder = Path(root) / f"case-{case}"
            folder.mkdir()
            outcome, mutation, detail, seconds = run_case(seeds[name], folder, case_rng, timeout)
            shutil.rmtree(folder, ignore_errors=True)
            outcomes[outcome] += 1
            per_format.setdefault(name, Counter())[outcome] += 1
            if seconds > slowest[0]:
                slowest = (seconds, name, mutation)
            if outcome not in ("read", "refused"):
                failures.append({"case": case, "format": name, "outcome": outcome, "mutation": mutation,
                                 "detail": detail})
    return {"cases": cases, "seed": seed, "outcomes": dict(outcomes),
            "per_format": {k: dict(v) for k, v in sorted(per_format.items())},
            "slowest": {"seconds": round(slowest[0], 3), "format": slowest[1], "mutation": slowest[2]},
            "failures": failures}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds a case may take before it is a hang")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    os.environ.setdefault("MPLBACKEND", "Agg")
    start = time.perf_counter()
    figures = fuzz(args.cases, args.seed, args.timeout)
    figures["seconds"] = round(time.perf_counter() - start, 1)
    print(f"# {' '.join(sys.argv)}")
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} "
          "threads")
    print(f"{figures['cases']} cases in {figures['seconds']} s: "
          + ", ".join(f"{k} {v}" for k, v in sorted(figures["outcomes"].items())))
    for name, counts in figures["per_format"].items():
        print(f"  {name}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    slowest = figures["slowest"]
    print(f"slowest case: {slowest['seconds']} s ({slowest['format']}, {slowest['mutation']})")
    for failure in figures["failures"]:
        print(f"FAILED case {failure['case']} ({failure['format']}, {failure['mutation']}): {failure['outcome']}: "
              f"{failure['detail']}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 1 if figures["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
