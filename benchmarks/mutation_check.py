"""Mutation check (a benchmark, not part of CI): do the tests notice when the code is wrong?

    pip install --target /tmp/mutlib mutmut==2.4.5    # not a project requirement
    PYTHONPATH=/tmp/mutlib python benchmarks/mutation_check.py [--module clusters ...]
        [--tests-from REV] [--functions F ...] [--all-functions] [--all-tests] [-k EXPR]

For each module, one at a time, mutmut 2.4.5 changes one thing in the module (an operator, a
number, a comparison, ...) and runs that module's own tests; a mutant the tests still pass
"survived". The work happens in a temporary copy of the repository (mutmut edits files in
place), so an interrupted run leaves the checkout alone.

By default only the functions that compute a picture or a selection are mutated (FUNCTIONS)
and a subset of the module's tests runs (TESTS' -k expression), which keeps a module within
minutes on a loaded two-core machine; --all-functions and --all-tests lift those limits.
--tests-from REV takes the module's test files from a git revision (figures before a change
to the tests). Prints killed / survived per module and the diff of every survivor.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# module: (test files, -k expression or None, functions that compute a picture or selection).
# The function lists are what fits a loaded two-core machine at ~30 s a mutant; --functions
# names others, --all-functions takes the whole module.
MODULES: dict[str, tuple[list[str], str | None, list[str]]] = {
    "bending": (["tests/test_bending.py"],
                "shuffle or vanish or resolve_channels or every_operation_keeps",
                ["resolve_channels", "op_shuffle"]),
    "clusters": (["tests/test_clusters.py"],
                 "planted or deterministic or exactly_once or shape_and_key",
                 ["spatial_descriptor", "_kmeans"]),
    "latents": (["tests/test_latents.py"], "boundary or direction_edit",
                ["apply_direction"]),
    "recipe": (["tests/test_recipe.py"], "set_field or sweep",
               ["parse_path", "_step", "sweep_values"]),
    "bundle": (["tests/test_bundle.py"],
               "renders_the_same or odd_file or hostile or bomb or budget or longer or "
               "too_many or declaring or recipe_json or deflate_well",
               ["_safe_name", "_file_fields_named", "_checked_members", "_read_recipe",
                "_extract_member"]),
}

HOOK = '''
import json
RANGES = json.loads({ranges!r})


def pre_mutation(context):
    line = context.current_line_index + 1
    if not any(lo <= line <= hi for lo, hi in RANGES):
        context.skip = True
'''


def function_lines(path: Path, names: list[str]) -> list[tuple[int, int]]:
    """Line ranges (1-based, inclusive) of the named top-level functions, docstrings out."""
    tree = ast.parse(path.read_text())
    found = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name in names:
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                body = body[1:] or body
            found[node.name] = (body[0].lineno, node.end_lineno)
    missing = sorted(set(names) - set(found))
    if missing:
        raise SystemExit(f"{path.name}: no function(s) {', '.join(missing)}")
    return [found[n] for n in names]


def copy_repository(dest: Path) -> None:
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard"],
                           capture_output=True, text=True, check=True).stdout.split("\n")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file() and not name.startswith(("docs/", "studio/static/")):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def run_module(name: str, args: argparse.Namespace) -> dict:
    tests, k_expr, functions = MODULES[name]
    work = Path(tempfile.mkdtemp(prefix=f"mutation-{name}-"))
    try:
        copy_repository(work)
        if args.tests_from:
            for t in tests:
                old = subprocess.run(["git", "-C", str(ROOT), "show", f"{args.tests_from}:{t}"],
                                     capture_output=True, text=True, check=True).stdout
                (work / t).write_text(old)
        target = str(next((work / "engine").rglob(f"{name}.py")).relative_to(work))
        ranges = [(1, 10 ** 9)] if args.all_functions else \
            function_lines(work / target, args.functions or functions)
        (work / "mutmut_config.py").write_text(HOOK.format(ranges=json.dumps(ranges)))
        runner = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:randomly",
                  "-p", "no:cacheprovider", *tests]
        k_expr = args.k or k_expr
        if k_expr and not args.all_tests:
            runner += ["-k", repr(k_expr)]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(work), os.environ.get("PYTHONPATH", "")]))
        subprocess.run([sys.executable, "-m", "mutmut", "run", "--paths-to-mutate", target,
                        "--tests-dir", "tests", "--runner", " ".join(runner),
                        "--test-time-base", "60", "--no-progress"],
                       cwd=work, env=env, check=False)
        return summarise(work, env)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def summarise(work: Path, env: dict) -> dict:
    """Mutants per status (mutmut's cache) and each survivor's diff."""
    with sqlite3.connect(work / ".mutmut-cache") as db:
        counts = dict(db.execute("select status, count(*) from Mutant group by status"))
        survivor_ids = [i for (i,) in db.execute(
            "select id from Mutant where status = 'bad_survived' order by id")]
    survivors = [subprocess.run([sys.executable, "-m", "mutmut", "show", str(i)], cwd=work,
                                env=env, capture_output=True, text=True).stdout.strip()
                 for i in survivor_ids]
    return {"killed": counts.get("ok_killed", 0), "survived": counts.get("bad_survived", 0),
            "timeout": counts.get("bad_timeout", 0),
            "suspicious": counts.get("ok_suspicious", 0),
            "untested": counts.get("untested", 0), "survivors": survivors}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--module", action="append", choices=sorted(MODULES),
                    help="module(s) to check (default: all, one after another)")
    ap.add_argument("--tests-from", help="take the module's test files from this git revision")
    ap.add_argument("--functions", nargs="+", help="mutate these functions instead")
    ap.add_argument("--all-functions", action="store_true", help="mutate the whole module")
    ap.add_argument("--all-tests", action="store_true", help="run all of the module's tests")
    ap.add_argument("-k", help="run the module's tests that match this -k expression instead")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()
    figures = {}
    for name in args.module or list(MODULES):
        figures[name] = run_module(name, args)
        f = figures[name]
        print(f"== {name}: killed {f['killed']}, survived {f['survived']}, timeout "
              f"{f['timeout']}, suspicious {f['suspicious']}, untested {f['untested']}",
              flush=True)
        for diff in f["survivors"]:
            print(diff, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
