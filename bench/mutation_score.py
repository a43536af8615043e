"""Mutation score of the code that computes masks and numbers: how many mutants of it the tests kill, per package.

Usage: python bench/mutation_score.py [--since REF | --files PATH… | --all] [--max-children N] [--json out.json]
       python bench/mutation_score.py --report-only

Runs mutmut (``pip install -e ".[mutation]"``; its settings are ``[tool.mutmut]`` in ``pyproject.toml``) over
``topo/sparsity``, ``topo/graph`` and ``topo/families.py`` and prints, per package, the mutants killed (a test
failed or timed out, or the tests' process crashed), those that survived, and those listed in
``bench/mutation_equivalent.tsv`` with one line of why: ``equivalent`` (the mutant cannot change any result) or
``cuda`` (it changes only what runs on a CUDA device, which ``pytest -m cuda`` tests and a CPU machine cannot); the
score is killed / (all − listed). By default only the mutants of the files a change touches are run — those that
differ from ``--since`` (default ``HEAD``: the uncommitted change) — and the score is over every mutant mutmut has a
result for; ``--all`` runs every mutant (about 9,000: 6–30 hours on two cores at the 5–25 a minute measured);
``--report-only`` runs nothing. Lists every surviving mutant not listed as equivalent (``mutmut show NAME`` prints
its diff). Exits 1 when a package is below ``--goal`` (0.9).

mutmut numbers a function's mutants anew whenever the function changes, so a listed name can come to mean another
mutant. Each line of the list therefore also holds the change it was read for (its fourth column: the removed and
the added lines of ``mutmut show NAME``); a listed mutant whose change is no longer that is reported as
"listed for another change" and scored as a survivor until it is read again. ``--list NAME KIND WHY`` adds (or
replaces) a line with the mutant's change filled in.

mutmut keeps its results in ``mutants/``, on the machine that ran it. ``--save-results`` writes them to
``bench/mutation_results.tsv`` (each mutant's status and the hash mutmut gives its function's code), for the
repository; on another machine a mutant mutmut has no result for takes its recorded status while its function's
hash is unchanged (mutmut keeps its own results on the same condition), and the report says how many did.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: The packages whose mutants are scored, by the prefix of their mutants' names.
PACKAGES = {"topo.sparsity": "topo/sparsity", "topo.graph": "topo/graph", "topo.families": "topo/families.py"}
EQUIVALENT = REPO / "bench" / "mutation_equivalent.tsv"
#: Statuses carried between machines (``--save-results``): mutant → status, function hash.
RECORD = REPO / "bench" / "mutation_results.tsv"
#: mutmut's statuses that mean the tests saw the mutant: a test failed, ran out of time, or the test process died
#: ("segfault": killed by a signal; "suspicious": any other abnormal exit) — a run no one would take for a pass.
KILLED = ("killed", "timeout", "segfault", "suspicious")


def read_listed(path: Path = EQUIVALENT) -> dict[str, tuple[str, str, str]]:
    """Mutant name → (kind, why, change), from the TSV (kind ``equivalent`` or ``cuda``; change: see
    :func:`mutant_change`, empty on a line without it; ``#`` lines are comments)."""
    return {row[0]: (row[1], row[2], row[3] if len(row) > 3 else "") for row in _read_tsv(path)}


def _read_tsv(path: Path) -> list[list[str]]:
    """The rows of one of this script's TSV files (none when it is absent), ``#`` lines left out."""
    if not path.exists():
        return []
    with open(path, newline="") as handle:
        return [row for row in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
                if row and not row[0].startswith("#")]


def _write_lines(path: Path, lines: list[str]) -> None:
    """Write ``lines`` to ``path`` through a temporary file and a rename (never half a file)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)


def mutant_change(name: str) -> str | None:
    """The lines mutant ``name`` changes: the removed lines of mutmut's diff, then the added ones, each stripped and
    marked ``-``/``+``, joined by `` ⏎ ``; None when mutmut has no such mutant (the function is gone or has fewer
    mutants now)."""
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    try:
        return change_of(get_diff_for_mutant(name, path=function_of(name)[0]))
    except (FileNotFoundError, KeyError, ValueError):
        return None


def change_of(diff: str) -> str:
    """A unified diff's removed lines, then its added ones, each marked ``-``/``+`` with its whitespace collapsed,
    joined by `` ⏎ ``: one line of the list's fourth column."""
    lines = [line for line in diff.splitlines() if line[:1] in "-+" and not line.startswith(("---", "+++"))]
    ordered = [line for line in lines if line[0] == "-"] + [line for line in lines if line[0] == "+"]
    return " ⏎ ".join(f"{line[0]} {' '.join(line[1:].split())}".rstrip() for line in ordered)


def stale_listings(listed: dict[str, tuple[str, str, str]], names: set[str],
                   change: Callable[[str], str | None] = mutant_change) -> dict[str, str | None]:
    """Listed mutants among ``names`` whose change is not the one their line was read for: name → its change now
    (None: no such mutant now)."""
    stale = {}
    with _in_repo():
        for name in sorted(names & set(listed)):
            change_now = change(name)
            if change_now is None or change_now != listed[name][2]:
                stale[name] = change_now
    return stale


def add_listing(name: str, kind: str, why: str, path: Path = EQUIVALENT) -> str:
    """Add (or replace) ``name``'s line in the list, with its current change; returns that change."""
    if kind not in ("equivalent", "cuda"):
        raise SystemExit(f"kind must be 'equivalent' or 'cuda', not {kind!r}")
    with _in_repo():
        change = mutant_change(name)
    if change is None:
        raise SystemExit(f"mutmut has no mutant {name} (run it first)")
    lines = [line for line in path.read_text().splitlines() if line.split("\t", 1)[0] != name]
    lines.append("\t".join((name, kind, " ".join(why.split()), change)))
    _write_lines(path, lines)
    return change


@contextlib.contextmanager
def _in_repo() -> Iterator[None]:
    """mutmut reads its mutants relative to the working directory: the repository's root."""
    previous = os.getcwd()
    os.chdir(REPO)
    try:
        yield
    finally:
        os.chdir(previous)


def parse_results(text: str) -> dict[str, str]:
    """Mutant name → status, from ``mutmut results --all true`` (lines ``    name: status``)."""
    statuses = {}
    for line in text.splitlines():
        name, colon, status = line.strip().rpartition(": ")
        if colon and "__mutmut_" in name:
            statuses[name] = status.strip()
    return statuses


def package_of(mutant: str) -> str | None:
    return next((package for package in PACKAGES if mutant.startswith(package + ".")), None)


def scores(statuses: dict[str, str], listed: dict[str, tuple[str, ...]]) -> dict[str, dict[str, float]]:
    """Per package: killed, survived, equivalent, cuda (see the module docstring), not run, total and score =
    killed / (total − equivalent − cuda − not run), over the mutants that were run."""
    table: dict[str, Counter] = {package: Counter() for package in PACKAGES}
    for mutant, status in statuses.items():
        package = package_of(mutant)
        if package is None:
            continue
        counts = table[package]
        counts["total"] += 1
        if status in KILLED:
            counts["killed"] += 1
        elif status == "not checked":
            counts["not run"] += 1
        elif mutant in listed:
            counts[listed[mutant][0]] += 1
        else:
            counts["survived"] += 1
    out = {}
    for package, counts in table.items():
        scored = counts["total"] - counts["equivalent"] - counts["cuda"] - counts["not run"]
        out[package] = {key: counts[key] for key in ("killed", "survived", "equivalent", "cuda", "not run", "total")}
        out[package]["score"] = counts["killed"] / scored if scored else float("nan")
    return out


def function_of(mutant: str) -> tuple[str, str]:
    """``topo.graph.null.x_er_masks__mutmut_3`` → (``topo/graph/null.py``, ``x_er_masks``): its file and the key
    mutmut hashes its function's code under."""
    mangled = mutant.rpartition("__mutmut_")[0]
    module, _, function = mangled.partition(".x")
    return module.replace(".", "/") + ".py", "x" + function


def function_hashes(mutants: Path = REPO / "mutants") -> dict[tuple[str, str], str]:
    """(file, function key) → the hash mutmut gave the function's code when it made its mutants."""
    hashes = {}
    for meta in mutants.glob("topo/**/*.py.meta"):
        path = meta.relative_to(mutants).as_posix().removesuffix(".meta")
        for function, digest in json.loads(meta.read_text()).get("hash_by_function_name", {}).items():
            hashes[(path, function)] = digest
    return hashes


def read_record(path: Path = RECORD) -> dict[str, tuple[str, str]]:
    """Mutant → (status, function hash), from the carried results (``#`` lines are comments)."""
    return {row[0]: (row[1], row[2]) for row in _read_tsv(path)}


def with_record(statuses: dict[str, str], record: dict[str, tuple[str, str]],
                hashes: dict[tuple[str, str], str]) -> tuple[dict[str, str], set[str]]:
    """``statuses`` with each mutant that has none here ("not checked") given its recorded status, where its
    function's hash is the recorded one; and the names so given."""
    merged, taken = dict(statuses), set()
    for mutant, status in statuses.items():
        if status == "not checked" and mutant in record:
            recorded, digest = record[mutant]
            if hashes.get(function_of(mutant)) == digest:
                merged[mutant] = recorded
                taken.add(mutant)
    return merged, taken


def save_record(statuses: dict[str, str], hashes: dict[tuple[str, str], str], path: Path = RECORD) -> int:
    """Write every scored mutant's status with a result (here or carried) and its function's hash; returns how
    many lines."""
    rows = sorted((m, s, hashes[function_of(m)]) for m, s in statuses.items()
                  if s != "not checked" and package_of(m) and function_of(m) in hashes)
    lines = ["# mutant\tstatus (mutmut's)\thash of its function's code (mutmut's): bench/mutation_score.py"]
    _write_lines(path, lines + ["\t".join(row) for row in rows])
    return len(rows)


def changed_files(since: str) -> list[str]:
    """Python files of the scored packages that differ from ``since`` (uncommitted and untracked included)."""
    diff = subprocess.run(["git", "diff", "--name-only", since, "--", *PACKAGES.values()], cwd=REPO,
                          capture_output=True, text=True, check=True).stdout.split()
    new = subprocess.run(["git", "ls-files", "--others", "--exclude-standard", "--", *PACKAGES.values()], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout.split()
    return sorted({f for f in diff + new if f.endswith(".py") and (REPO / f).exists()})


def mutant_glob(path: str) -> str:
    """``topo/graph/null.py`` → ``topo.graph.null.*``: the names of that file's mutants."""
    return path.removesuffix(".py").replace("/", ".") + ".*"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--since", default="HEAD", help="run the mutants of files that differ from this git ref")
    which.add_argument("--files", nargs="+", help="run the mutants of these files")
    which.add_argument("--all", action="store_true", help="run every mutant")
    which.add_argument("--report-only", action="store_true", help="run nothing; score the last results")
    parser.add_argument("--max-children", type=int, default=2)
    parser.add_argument("--goal", type=float, default=0.9)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--save-results", action="store_true",
                        help=f"write the results to {RECORD.relative_to(REPO)}, for the repository")
    parser.add_argument("--list", nargs=3, metavar=("NAME", "KIND", "WHY"),
                        help="list a surviving mutant as 'equivalent' or 'cuda', with one line of why, and exit")
    args = parser.parse_args()
    if args.list:
        print(add_listing(*args.list))
        return 0
    if not args.report_only:
        targets = [] if args.all else [mutant_glob(f) for f in (args.files or changed_files(args.since))]
        if not args.all and not targets:
            print(f"no file of {', '.join(PACKAGES.values())} differs from {args.since}: nothing to run")
        else:
            subprocess.run(["mutmut", "run", "--max-children", str(args.max_children), *targets], cwd=REPO,
                           check=True)
    listing = subprocess.run(["mutmut", "results", "--all", "true"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout
    hashes = function_hashes()
    statuses, carried = with_record(parse_results(listing), read_record(), hashes)
    if args.save_results:
        print(f"{save_record(statuses, hashes)} results written to {RECORD.relative_to(REPO)}")
    listed = read_listed()
    surviving = {m for m, s in statuses.items() if s not in KILLED and s != "not checked" and package_of(m)}
    moved = stale_listings(listed, surviving)
    current = {m: entry for m, entry in listed.items() if m not in moved}
    figures = scores(statuses, current)
    print(f"# {' '.join(sys.argv)}")
    print("| package | killed | survived | equivalent | CUDA only | not run | score |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for package, row in figures.items():
        print(f"| `{PACKAGES[package]}` | {row['killed']} | {row['survived']} | {row['equivalent']} | {row['cuda']} | "
              f"{row['not run']} | {row['score']:.1%} |")
    if carried:
        print(f"({len(carried)} of these results carried in {RECORD.name}: mutmut has none here, and their "
              "functions are unchanged)")
    survivors = sorted(surviving - set(current))
    for mutant in survivors:
        if mutant in moved:
            print(f"survived: {mutant} (listed for another change; now: {moved[mutant]})")
        else:
            print(f"survived: {mutant}")
    stale = sorted(m for m in listed if statuses.get(m) in (None, *KILLED) and package_of(m))
    for mutant in stale:  # the code changed (mutants are numbered per function) or a test now kills it
        print(f"listed but no longer a surviving mutant (update {EQUIVALENT.name}): {mutant}")
    if args.json:
        Path(args.json).write_text(json.dumps({"scores": figures, "survivors": survivors}, indent=2))
    below = [p for p, row in figures.items() if row["killed"] + row["survived"] and row["score"] < args.goal]
    return 1 if below else 0


if __name__ == "__main__":
    sys.exit(main())
