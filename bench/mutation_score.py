"""Mutation score of the code that computes masks and numbers: how many mutants of it the tests kill, per package.

Usage: python bench/mutation_score.py [--since REF | --files PATH… | --all] [--max-children N] [--json out.json]
       python bench/mutation_score.py --report-only

Runs mutmut (``pip install -e ".[mutation]"``; its settings are ``[tool.mutmut]`` in ``pyproject.toml``) over
``topo/sparsity``, ``topo/graph`` and ``topo/families.py`` and prints, per package, the mutants killed (a test
failed or timed out), those that survived, and those listed in ``bench/mutation_equivalent.tsv`` with one line of
why: ``equivalent`` (the mutant cannot change any result) or ``cuda`` (it changes only what runs on a CUDA
device, which ``pytest -m cuda`` tests and a CPU machine cannot); the score is killed / (all − listed). By default
only the mutants of the files a change touches are run — those that differ from ``--since`` (default ``HEAD``:
the uncommitted change) — and the score is over every mutant mutmut has a result for; ``--all`` runs every mutant
(about three hours on two cores); ``--report-only`` runs nothing. Lists every surviving mutant not listed as
equivalent (``mutmut show NAME`` prints its diff). Exits 1 when a package is below ``--goal`` (0.9).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: The packages whose mutants are scored, by the prefix of their mutants' names.
PACKAGES = {"topo.sparsity": "topo/sparsity", "topo.graph": "topo/graph", "topo.families": "topo/families.py"}
EQUIVALENT = REPO / "bench" / "mutation_equivalent.tsv"
#: mutmut's statuses that mean the tests saw the mutant.
KILLED = ("killed", "timeout")


def read_listed(path: Path = EQUIVALENT) -> dict[str, tuple[str, str]]:
    """Mutant name → (kind, why), from the three-column TSV (kind ``equivalent`` or ``cuda``; ``#`` lines are
    comments)."""
    if not path.exists():
        return {}
    with open(path, newline="") as handle:
        rows = [row for row in csv.reader(handle, delimiter="\t") if row and not row[0].startswith("#")]
    return {row[0]: (row[1], row[2]) for row in rows}


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


def scores(statuses: dict[str, str], listed: dict[str, tuple[str, str]]) -> dict[str, dict[str, float]]:
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
    args = parser.parse_args()
    if not args.report_only:
        targets = [] if args.all else [mutant_glob(f) for f in (args.files or changed_files(args.since))]
        if not args.all and not targets:
            print(f"no file of {', '.join(PACKAGES.values())} differs from {args.since}: nothing to run")
        else:
            subprocess.run(["mutmut", "run", "--max-children", str(args.max_children), *targets], cwd=REPO,
                           check=True)
    listing = subprocess.run(["mutmut", "results", "--all", "true"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout
    statuses = parse_results(listing)
    listed = read_listed()
    figures = scores(statuses, listed)
    print(f"# {' '.join(sys.argv)}")
    print("| package | killed | survived | equivalent | CUDA only | not run | score |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for package, row in figures.items():
        print(f"| `{PACKAGES[package]}` | {row['killed']} | {row['survived']} | {row['equivalent']} | {row['cuda']} | "
              f"{row['not run']} | {row['score']:.1%} |")
    survivors = sorted(m for m, s in statuses.items() if s not in KILLED and s != "not checked" and m not in listed
                       and package_of(m))
    for mutant in survivors:
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
