"""Mutation testing of the core maths modules: does a small planted bug fail a test?

    python tools/mutation.py --module softmax --sample 40 --seed 0
    python tools/mutation.py --module all --sample 40 --seed 0 --json docs/results/mutation.json --label before

For one module group (MODULES below: its source files, each with the test files that cover it),
the script lists every mutant of the files (tools/_mutants.py: mutmut's operators plus three of
ours), draws `--sample` of them at random with `--seed` (the same seed and sources give the same
mutants), and for each one writes the mutated file into a scratch copy of the checkout (a
temporary folder outside it, removed at the end), runs that file's tests there with
`pytest -x` and a time limit, and puts the original back. The working tree is never written.

Outcome of a mutant: "killed" (a test failed or errored, or the test process crashed),
"timeout" (the tests ran past
max(--min-timeout, --timeout-factor x the unmutated run); counted as killed: the bug hangs),
"survived" (every test passed: the suite misses this change). Score = (killed + timeout) /
sampled. Each survivor is printed with its id (`path:index`), line and changed line(s); rerun
some by id with `--mutants ID,ID` after strengthening a test, or every survivor of a recorded
run with `--json FILE --survivors-of before --label after` (the sources must be unchanged: the
ids are positions in each file's list of mutants). The unmutated tests must pass first (else
exit status 1).

Not part of CI: a 40-mutant sample of a module takes 3 to 15 minutes on 2 cores.
docs/mutation.md explains how to read the scores, and lists the survivors and their triage.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import _path  # noqa: F401  (this checkout's engine first on sys.path)
import _mutants

ROOT = _path.ROOT

B, O, L = "tests/backend/", "tests/outputs/", "tests/layers/"
# module group -> {source file: the test files run against its mutants}. Written out by hand:
# the tests that check each file's results, not every test that happens to import it.
MODULES = {
    "backend": {
        "engine/backend/numpy_backend.py": [B + "test_primitives.py", B + "test_primitives_overflow.py",
                                            B + "test_topk_and_indices.py"],
        # cpu_loops.py also holds select_by_threshold, the numba pass of Backend.topk
        "engine/backend/cpu_loops.py": [B + "test_cpu_loops.py", B + "test_primitives.py",
                                        B + "test_topk_and_indices.py"],
        "engine/backend/numpy_topk.py": [B + "test_topk_and_indices.py"],
        "engine/backend/numpy_sparse.py": [B + "test_sparse_primitives.py"],
        "engine/backend/cpu_sparse.py": [B + "test_sparse_primitives.py"],
        "engine/backend/numpy_factored.py": [O + "test_factored_layer.py", O + "test_factored_exact.py"],
    },
    "softmax": {
        "engine/outputs/softmax.py": [O + "test_softmax_output.py", O + "test_output_overflow.py",
                                      O + "test_softmax_meprop.py"],
    },
    "adaptive": {
        "engine/outputs/adaptive.py": [O + "test_adaptive_output.py", O + "test_output_overflow.py"],
        "engine/outputs/adaptive_cutoffs.py": [O + "test_adaptive_cutoffs.py"],
    },
    "factored": {
        "engine/outputs/factored.py": [O + "test_factored_layer.py", O + "test_factored_exact.py"],
        "engine/outputs/factored_state.py": [O + "test_factored_exact.py", O + "test_factored_layer.py"],
        "engine/outputs/spherical_family.py": [O + "test_spherical_formulas.py",
                                               O + "test_spherical_family.py"],
    },
    "ffi": {
        # fixed_fanin.py also holds the layer's rewire() and after_step(): test_rewiring.py
        "engine/layers/fixed_fanin.py": [L + "test_fixed_fanin.py", L + "test_rewiring.py"],
        "engine/layers/fixed_fanin_rewire.py": [L + "test_rewiring.py"],
        "engine/backend/numpy_ffi.py": [B + "test_ffi_primitives.py", L + "test_fixed_fanin.py"],
        "engine/backend/cpu_ffi.py": [B + "test_ffi_primitives.py"],
    },
    "meprop": {
        "engine/layers/meprop.py": [L + "test_meprop.py", O + "test_softmax_meprop.py"],
    },
    "optim": {
        **{f"engine/optim/{name}.py": ["tests/optim"]
           for name in ("adam", "clipping", "schedules", "sgd", "slots")},
        # base.py declares the options every optimizer takes: tests/test_options.py checks them
        # against the constructors
        "engine/optim/base.py": ["tests/optim", "tests/test_options.py"],
    },
    "metrics": {
        "engine/outputs/xmc_metrics.py": [O + "test_xmc_metrics.py"],
    },
}

PYTEST = ["-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly"]


def sample_mutants(files, sample, seed, root=ROOT):
    """The `sample` mutants drawn with `seed` from every mutant of `files` (paths relative to
    `root`), in file and line order, and the number of candidates they were drawn from.
    A drawn change that renders to no change or to invalid Python is replaced by the next draw."""
    parsed, pool = {}, []
    for path in sorted(files):
        with open(os.path.join(root, path), encoding="utf-8") as f:
            module, cands = _mutants.candidates(path, f.read())
        parsed[path] = module
        pool += cands
    order = list(range(len(pool)))
    random.Random(seed).shuffle(order)
    chosen = []
    for i in order:
        if sample is not None and len(chosen) >= sample:
            break
        m = _mutants.render(parsed[pool[i].path], pool[i])
        if m is not None:
            chosen.append((i, m))
    chosen.sort()
    return [m for _, m in chosen], len(pool)


def pick_mutants(files, ids, root=ROOT):
    """The mutants named by `ids` ("path:index"), from every mutant of `files`."""
    wanted, found = set(ids), []
    for path in sorted({i.rsplit(":", 1)[0] for i in ids}):
        if path not in files:
            raise ValueError(f"{path} is not a file of this module")
        with open(os.path.join(root, path), encoding="utf-8") as f:
            module, cands = _mutants.candidates(path, f.read())
        for c in cands:
            if c.id in wanted:
                m = _mutants.render(module, c)
                if m is not None:
                    found.append(m)
    missing = wanted - {m.id for m in found}
    if missing:
        raise ValueError(f"no such mutant: {sorted(missing)[0]}")
    return found


def scratch_copy(root):
    """A copy of the checkout's files (tracked, and untracked ones git does not ignore) in a
    new temporary folder outside it."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=root, stdout=subprocess.PIPE, check=True).stdout
    dest = tempfile.mkdtemp(prefix="engine-mutation-")
    for rel in filter(None, listed.decode().split("\0")):
        src = os.path.join(root, rel)
        if not os.path.isfile(src):      # deleted in the working tree, or a submodule
            continue
        os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
        shutil.copy2(src, os.path.join(dest, rel))
    return dest


def _env(scratch):
    env = dict(os.environ)
    env["PYTHONPATH"] = scratch
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def run_tests(scratch, tests, timeout):
    """('passed' | 'failed' | 'timeout' | 'error', seconds, last output line)."""
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable] + PYTEST + list(tests), cwd=scratch, env=_env(scratch),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)      # pytest and whatever it started
        proc.communicate()
        return "timeout", time.monotonic() - start, ""
    lines = [l for l in out.splitlines() if l.strip()]
    last = lines[-1] if lines else ""
    # 1: a test failed; 2: interrupted by an error (collection, import); below 0: the test
    # process died of a signal (a segfault in a jitted loop that wrote out of bounds): all
    # catches. 3-5 (internal error, usage, no tests) say the run itself is broken: "error".
    rc = proc.returncode
    status = "failed" if rc in (1, 2) or rc < 0 else "passed" if rc == 0 else "error"
    if rc < 0:
        last = f"died of signal {-rc}"
    return status, time.monotonic() - start, last


def check_scratch_imports_itself(scratch, package="engine"):
    code = f"import {package}, os; print(os.path.realpath({package}.__file__))"
    out = subprocess.run([sys.executable, "-c", code], cwd=scratch, env=_env(scratch),
                         stdout=subprocess.PIPE, text=True, check=True).stdout.strip()
    if not out.startswith(os.path.realpath(scratch) + os.sep):
        raise RuntimeError(f"the scratch copy imports another engine ({out}); refusing to run")


def run_module(files, mutants, args, log=print, root=ROOT, package="engine"):
    """Run `mutants` (of the files in `files`: {source: tests}) in a scratch copy of `root`,
    each against its file's tests; {"counts", "mutants"}."""
    scratch = scratch_copy(root)
    try:
        check_scratch_imports_itself(scratch, package)
        baseline = {}
        results = []
        for n, m in enumerate(mutants, 1):
            tests = tuple(files[m.path])
            if tests not in baseline:
                status, secs, last = run_tests(scratch, tests, timeout=args.baseline_timeout)
                if status != "passed":
                    raise RuntimeError(f"the unmutated tests {' '.join(tests)} did not pass "
                                       f"({status}): {last}")
                baseline[tests] = secs
                log(f"  baseline {' '.join(tests)}: {secs:.1f} s")
            limit = max(args.min_timeout, args.timeout_factor * baseline[tests])
            target = os.path.join(scratch, m.path)
            with open(target, encoding="utf-8") as f:
                original = f.read()
            try:
                with open(target, "w", encoding="utf-8") as f:
                    f.write(m.code)
                status, secs, last = run_tests(scratch, tests, timeout=limit)
            finally:
                with open(target, "w", encoding="utf-8") as f:
                    f.write(original)
            outcome = {"failed": "killed", "passed": "survived"}.get(status, status)
            results.append({"id": m.id, "line": m.line, "operator": m.operator, "diff": m.diff,
                            "outcome": outcome, "seconds": round(secs, 1), "last_line": last[-200:]})
            log(f"  [{n}/{len(mutants)}] {outcome:8s} {m.id} (line {m.line}, {secs:.1f} s)")
            if outcome != "killed":
                log("      " + m.diff.replace("\n", "\n      "))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    counts = {k: sum(r["outcome"] == k for r in results) for k in ("killed", "timeout", "survived", "error")}
    counts["total"] = len(results)
    counts["score"] = round((counts["killed"] + counts["timeout"]) / max(1, len(results)), 3)
    return {"counts": counts, "mutants": results}


def _survivors(path, name, label, files):
    """The run `label` of module `name` in the JSON file `path`, and its mutants that were not
    killed, rebuilt from the sources (which must not have changed since)."""
    with open(path, encoding="utf-8") as f:
        earlier = json.load(f)["modules"][name][label]
    left = [r for r in earlier["mutants"] if r["outcome"] in ("survived", "error")]
    mutants = pick_mutants(files, [r["id"] for r in left]) if left else []
    recorded = {r["id"]: r["diff"] for r in left}
    for m in mutants:
        if m.diff != recorded[m.id]:
            raise ValueError(f"{m.id} is no longer the mutant recorded in {path} "
                             "(the source changed): draw a new sample")
    return earlier, mutants


def _combine(earlier, rerun):
    """The earlier run's mutants with the outcomes of `rerun` (its survivors run again): a
    mutant killed earlier stays killed, since only tests were added."""
    new = {r["id"]: dict(r, rerun=True) for r in rerun["mutants"]}
    results = [new.get(r["id"], r) for r in earlier["mutants"]]
    counts = {k: sum(r["outcome"] == k for r in results) for k in ("killed", "timeout", "survived", "error")}
    counts["total"] = len(results)
    counts["score"] = round((counts["killed"] + counts["timeout"]) / max(1, len(results)), 3)
    return {"counts": counts, "mutants": results}


def _merge_json(path, command, args, name, label, pool, result):
    data = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    data.setdefault("tool", "tools/mutation.py (mutmut operators + number-1, drop-statement, swap-args)")
    entry = data.setdefault("modules", {}).setdefault(name, {})
    entry["files"] = MODULES[name]
    entry[label] = {"command": command, "seed": args.seed, "sample": args.sample,
                    "candidates": pool, **result}
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="tools/mutation.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--module", required=True, choices=sorted(MODULES) + ["all"],
                   help="module group to mutate")
    p.add_argument("--sample", type=int, default=40, help="mutants drawn per module (default 40)")
    p.add_argument("--all-mutants", action="store_true", help="run every mutant, not a sample")
    p.add_argument("--seed", type=int, default=0, help="seed of the draw (default 0)")
    p.add_argument("--mutants", default=None,
                   help="comma-separated mutant ids (path:index) to run instead of a sample")
    p.add_argument("--survivors-of", default=None, metavar="LABEL",
                   help="rerun only the mutants that survived the run LABEL recorded in --json "
                        "(same sample); the others count as killed again")
    p.add_argument("--list", action="store_true", help="print the drawn mutants, run nothing")
    p.add_argument("--timeout-factor", type=float, default=3.0,
                   help="a mutant's time limit in units of the unmutated run (default 3)")
    p.add_argument("--min-timeout", type=float, default=60.0,
                   help="the least time limit of a mutant, seconds (default 60)")
    p.add_argument("--baseline-timeout", type=float, default=900.0, help=argparse.SUPPRESS)
    p.add_argument("--json", default=None, help="merge the results into this JSON file")
    p.add_argument("--label", default="run", help="key of this run in --json (e.g. before, after)")
    args = p.parse_args(argv)
    if args.sample <= 0:
        p.error(f"--sample must be positive, not {args.sample}")
    if args.timeout_factor <= 0 or args.min_timeout <= 0:
        p.error("--timeout-factor and --min-timeout must be positive")
    if args.mutants and args.module == "all":
        p.error("--mutants needs one --module, not all")
    if args.survivors_of and not (args.json and os.path.isfile(args.json)):
        p.error("--survivors-of needs --json naming the file that holds that run")
    if args.survivors_of and args.mutants:
        p.error("--survivors-of and --mutants exclude each other")
    if args.json and os.path.isdir(args.json):
        p.error(f"--json {args.json} is a folder")
    return p, args


def main(argv=None):
    p, args = parse_args(sys.argv[1:] if argv is None else argv)
    command = "python tools/mutation.py " + " ".join(sys.argv[1:] if argv is None else argv)
    names = sorted(MODULES) if args.module == "all" else [args.module]
    summary = []
    for name in names:
        files = MODULES[name]
        earlier = None
        if args.survivors_of:
            try:
                earlier, mutants = _survivors(args.json, name, args.survivors_of, files)
            except ValueError as exc:
                p.error(f"--survivors-of: {exc}")
            pool = earlier.get("candidates")
        elif args.mutants:
            try:
                mutants = pick_mutants(files, [i.strip() for i in args.mutants.split(",") if i.strip()])
            except ValueError as exc:
                p.error(f"--mutants: {exc}")
            pool = None
        else:
            mutants, pool = sample_mutants(files, None if args.all_mutants else args.sample, args.seed)
        print(f"{name}: {len(mutants)} mutants" + (f" drawn from {pool}" if pool else "")
              + f" (seed {args.seed})", flush=True)
        if args.list:
            for m in mutants:
                print(f"  {m.id} line {m.line} [{m.operator}]\n      " + m.diff.replace("\n", "\n      "))
            continue
        try:
            result = run_module(files, mutants, args, log=lambda s: print(s, flush=True))
        except RuntimeError as exc:
            print(f"tools/mutation.py: {exc}", file=sys.stderr)
            return 1
        if earlier is not None:
            result = _combine(earlier, result)
            args.seed, args.sample = earlier["seed"], earlier["sample"]
        c = result["counts"]
        summary.append((name, c))
        if args.json:
            _merge_json(args.json, command, args, name, args.label, pool, result)
    for name, c in summary:
        print(f"{name:10s} killed {c['killed'] + c['timeout']:3d} / {c['total']:3d} "
              f"(timeouts {c['timeout']}, errors {c['error']})  score {c['score']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
