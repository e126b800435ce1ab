#!/usr/bin/env bash
# gpu_check.sh -- the bounded first run of the engine on a GPU machine (no network needed).
#
#   OUT=/some/dir bash tools/gpu_check.sh
#
# Run from anywhere (it works in the repository that holds it). Stages, each under its own
# time budget (seconds; a stage that overruns is interrupted and the next one starts), all
# within GPU_CHECK_LIMIT (default 480 s = 8 minutes) of wall time:
#
#   stage        budget  what
#   environment      20  nvidia-smi, Python / NumPy / CuPy / CUDA versions, the device
#   detect           20  does CuPy see a GPU? (engine.backend.gpu_available)
#   install          40  pip install --no-build-isolation --no-deps -e . (offline; the
#                        repository stays on PYTHONPATH whatever pip says)
#   kernels          45  every (file, dtype) module through the real loader
#                        (engine.backend.kernels: NVRTC + name expressions), every kernel's
#                        registers, shared and local memory, max threads per block
#   tests           150  python -m pytest -m gpu (per-test timeout with pytest-timeout,
#                        4 workers with pytest-xdist, when importable), JUnit + full log
#   offsets          60  tests/backend/test_large_offsets.py (> 2^31-element offsets in every
#                        kernel, ~45 GB of device memory at most)
#   syncs            30  device-to-host reads of one training step per output, against
#                        engine/backend/syncs.py
#   bench           100  every tools/bench_*.py --device gpu --quick --json (softmax 25,
#                        adaptive 20, factored 15, ffi 15, meprop 10, distributed 15)
#
# Writes under $OUT (at most 8 files): gpu_check.log (everything printed), pytest.log (the
# verbose test log), junit.xml (the tests, offsets and syncs stages' suites), kernels.json,
# syncs.json, bench.json (every benchmark's rows, keyed by script) and summary.json (each
# stage's status and seconds). Exit status: 0 when every stage that ran passed (on a machine
# without a GPU every GPU stage is skipped and the status is 0), 1 otherwise, 2 on bad usage.
#
# Environment: OUT (required), PYTHON (default python3), GPU_CHECK_LIMIT (seconds, default 480),
# GPU_CHECK_INSTALL=0 (skip the pip install), GPU_CHECK_WORKERS (pytest-xdist workers, 4).
set -uo pipefail

usage() { echo "usage: OUT=/some/dir bash tools/gpu_check.sh   (see the header of the script)" >&2; exit 2; }
[[ $# -eq 0 ]] || usage
[[ -n "${OUT:-}" ]] || { echo "gpu_check.sh: set OUT to the folder for the results" >&2; exit 2; }
mkdir -p "$OUT" || { echo "gpu_check.sh: cannot create OUT=$OUT" >&2; exit 2; }
OUT=$(cd "$OUT" && pwd)

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 2
PY=${PYTHON:-python3}
LIMIT=${GPU_CHECK_LIMIT:-480}
START=$(date +%s)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1
export ENGINE_CACHE="$WORK/engine-cache"
export PYTHONPATH="$REPO:$REPO/tests${PYTHONPATH:+:$PYTHONPATH}"

LOG="$OUT/gpu_check.log"
: > "$LOG"
STATUS="$WORK/status.tsv"             # stage <TAB> status <TAB> seconds <TAB> note
: > "$STATUS"

say() { echo "$*" | tee -a "$LOG"; }
elapsed() { echo $(( $(date +%s) - START )); }

# stage order and (budget, minimum useful time); a stage's timeout is its budget, or less when
# the time left minus the minimum of the stages after it is less
STAGES=(environment detect install kernels tests offsets syncs bench)
declare -A BUDGET=([environment]=20 [detect]=20 [install]=40 [kernels]=45 [tests]=150
                   [offsets]=60 [syncs]=30 [bench]=100)
declare -A FLOOR=([environment]=5 [detect]=10 [install]=10 [kernels]=15 [tests]=30
                  [offsets]=20 [syncs]=10 [bench]=15)

reserve_after() {          # minimum time of the stages after $1, plus 10 s to finish
    local seen=0 total=10 s
    for s in "${STAGES[@]}"; do
        if (( seen )); then total=$(( total + FLOOR[$s] )); fi
        [[ $s == "$1" ]] && seen=1
    done
    echo "$total"
}

budget_for() {             # seconds stage $1 may take now (0: no time left)
    local left=$(( LIMIT - $(elapsed) - $(reserve_after "$1") ))
    local b=${BUDGET[$1]}
    (( left < b )) && b=$left
    (( b < FLOOR[$1] )) && b=0
    echo "$b"
}

record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "${4:-}" >> "$STATUS"; }

# run_stage NAME CMD...: run CMD under the stage's budget, its output into the log
run_stage() {
    local name=$1; shift
    local b; b=$(budget_for "$name")
    if (( b == 0 )); then
        say "=== [$(elapsed)s] SKIPPED $name: no time left in the ${LIMIT} s limit"
        record "$name" "skipped" 0 "no time left"
        return 0
    fi
    say "=== [$(elapsed)s] $name (budget ${b} s)"
    local t0 rc; t0=$(date +%s)
    # the stage runs in a child bash (its functions are exported); timeout signals its whole
    # process group (SIGINT: pytest still writes its JUnit file), then kills it 5 s later
    timeout -s INT -k 5 "$b" bash -c '"$@"' stage "$@" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    local dt=$(( $(date +%s) - t0 ))
    if (( rc == 0 )); then
        record "$name" "ok" "$dt"
        say "=== [$(elapsed)s] $name: ok in ${dt} s"
    elif (( rc == 124 || rc == 137 )); then
        record "$name" "timeout" "$dt" "interrupted at its ${b} s budget"
        say "=== [$(elapsed)s] $name: TIMEOUT after ${dt} s (budget ${b} s)"
    else
        record "$name" "failed" "$dt" "exit status $rc"
        say "=== [$(elapsed)s] $name: FAILED (exit status $rc) in ${dt} s"
    fi
    return 0
}

write_summary() {          # summary.json from the status table; prints the table
    "$PY" - "$STATUS" "$OUT/summary.json" "$(elapsed)" "$LIMIT" "$1" <<'PY' | tee -a "$LOG"
import json, sys
status, out, seconds, limit, gpu = sys.argv[1:6]
rows = [line.rstrip("\n").split("\t") for line in open(status) if line.strip()]
stages = [{"stage": r[0], "status": r[1], "seconds": int(r[2]), "note": r[3] if len(r) > 3 else ""}
          for r in rows]
json.dump({"gpu": gpu, "seconds": int(seconds), "limit_seconds": int(limit), "stages": stages},
          open(out, "w"), indent=1)
print("=== summary")
for s in stages:
    print(f"  {s['stage']:12s} {s['status']:8s} {s['seconds']:4d} s  {s['note']}")
print(f"  total        {int(seconds)} s of {limit} s")
PY
}

# ------------------------------------------------------------------ environment
stage_environment() {
    date -u
    uname -srm
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,clocks.sm,clocks.max.sm,temperature.gpu,power.limit --format=csv || true
    else
        echo "nvidia-smi: not found"
    fi
    command -v nvcc >/dev/null 2>&1 && nvcc --version | tail -n 2
    "$PY" - <<'PY'
import importlib, sys
print("python", sys.version.split()[0], sys.executable)
for name in ("numpy", "scipy", "numba", "h5py", "pytest", "xdist", "pytest_timeout", "torch", "cupy"):
    try:
        module = importlib.import_module(name)
        print(f"{name:15s} {getattr(module, '__version__', '?')}")
    except Exception as exc:
        print(f"{name:15s} not importable ({type(exc).__name__}: {str(exc)[:120]})")
try:
    import cupy
    rt = cupy.cuda.runtime
    print("cuda runtime", rt.runtimeGetVersion(), "driver", rt.driverGetVersion())
except Exception as exc:
    print("cuda: no runtime information", f"({type(exc).__name__}: {str(exc)[:120]})")
PY
}

# ------------------------------------------------------------------ detect
detect_gpu() {             # prints "yes <name>" or "no <reason>"; status 1 if the engine is broken
    "$PY" - <<'PY'
from engine.backend import gpu_available
ok, info = gpu_available()
print(("yes " if ok else "no ") + str(info).replace("\n", " "))
PY
}

# ------------------------------------------------------------------ install
stage_install() {
    if [[ "${GPU_CHECK_INSTALL:-1}" == "0" ]]; then
        echo "install skipped (GPU_CHECK_INSTALL=0); the engine is imported from PYTHONPATH=$REPO"
        return 0
    fi
    if "$PY" -m pip install -q --no-build-isolation --no-deps -e "$REPO"; then
        echo "pip: installed the engine in editable mode (no build isolation, no dependencies)"
        (cd / && env -u PYTHONPATH "$PY" -c "import engine, rawkernels; print('installed: import engine ->', engine.__file__)")
    else
        echo "pip install failed: the engine is imported from PYTHONPATH=$REPO instead"
    fi
    "$PY" -c "import engine; print('engine used by the next stages:', engine.__file__)"
}

# ------------------------------------------------------------------ kernels
stage_kernels() {
    "$PY" - "$OUT/kernels.json" <<'PY'
import json, sys, time
import numpy
from engine.backend import kernels

rows, bad = [], 0
for file in sorted(kernels.KERNELS):
    for dtype in (numpy.float32, numpy.float64):
        dt = numpy.dtype(dtype).name
        t0 = time.perf_counter()
        try:
            kernels.get_module(file, dtype)
        except Exception as exc:
            bad += 1
            print(f"FAIL  {file} {dt}: module: {type(exc).__name__}: {exc}")
            rows.append({"file": file, "dtype": dt, "error": f"{type(exc).__name__}: {exc}"})
            continue
        compile_s = time.perf_counter() - t0
        print(f"module {file} <{dt}>: {compile_s:.2f} s (NVRTC or CuPy's cache)")
        for name in kernels.KERNELS[file]:
            row = {"file": file, "dtype": dt, "kernel": name, "module_seconds": round(compile_s, 3)}
            try:
                fn = kernels.get_kernel(file, name, dtype)
                attrs = dict(getattr(fn, "attributes", {}) or {})
            except Exception as exc:
                bad += 1
                row["error"] = f"{type(exc).__name__}: {exc}"
                print(f"FAIL  {kernels.name_expression(name, dtype)}: {row['error']}")
                rows.append(row)
                continue
            row.update({k: attrs.get(k) for k in ("num_regs", "shared_size_bytes", "local_size_bytes",
                                                   "const_size_bytes", "max_threads_per_block",
                                                   "ptx_version", "binary_version")})
            fits = attrs.get("max_threads_per_block", kernels.BLOCK) >= kernels.BLOCK
            bad += not fits
            row["ok"] = bool(fits)
            spill = " SPILLS to local memory" if attrs.get("local_size_bytes") else ""
            print(f"{'ok  ' if fits else 'FAIL'}  {kernels.name_expression(name, dtype):34s} "
                  f"regs {row['num_regs']} smem {row['shared_size_bytes']} B "
                  f"local {row['local_size_bytes']} B maxthreads {row['max_threads_per_block']} "
                  f"(launch block {kernels.BLOCK}) sm_{row['binary_version']}{spill}")
            rows.append(row)
json.dump(rows, open(sys.argv[1], "w"), indent=1)
print(f"{len(rows)} kernel instances, {bad} failure(s)")
sys.exit(1 if bad else 0)
PY
}

# ------------------------------------------------------------------ tests
stage_tests() {
    local opts=(-m gpu -p no:cacheprovider -rfEs -v --durations=25 --basetemp="$WORK/pytest"
                --ignore=tests/backend/test_large_offsets.py
                --junitxml="$WORK/junit_tests.xml" -o junit_suite_name=gpu_tests)
    if "$PY" -c "import pytest_timeout" 2>/dev/null; then
        opts+=(--timeout=90)
        echo "per-test timeout: 90 s (pytest-timeout)"
    else
        echo "pytest-timeout not importable: only the stage's budget bounds the tests"
    fi
    if "$PY" -c "import xdist" 2>/dev/null; then
        opts+=(-n "${GPU_CHECK_WORKERS:-4}")
        echo "pytest-xdist: ${GPU_CHECK_WORKERS:-4} workers"
    fi
    local rc
    OPENBLAS_NUM_THREADS=4 NUMBA_NUM_THREADS=4 "$PY" -m pytest tests "${opts[@]}" > "$OUT/pytest.log" 2>&1
    rc=$?
    tail -n 60 "$OUT/pytest.log"
    return $rc
}

# ------------------------------------------------------------------ offsets
stage_offsets() {
    local opts=(-m gpu -p no:cacheprovider -rfEs -v --basetemp="$WORK/pytest-offsets"
                --junitxml="$WORK/junit_offsets.xml" -o junit_suite_name=large_offsets)
    "$PY" -c "import pytest_timeout" 2>/dev/null && opts+=(--timeout=50)
    "$PY" -m pytest tests/backend/test_large_offsets.py "${opts[@]}"
}

# ------------------------------------------------------------------ syncs
stage_syncs() {
    "$PY" - "$OUT/syncs.json" <<'PY'
"""Device-to-host reads of one steady-state training step (after two warm-up steps) per case
of tests/backend/test_host_syncs.py, counted by engine.backend.syncs.count_device_reads."""
import importlib.util, json, sys
import numpy, scipy.sparse
from engine import Adam, Engine, MLPLanguageModel
from engine.backend import get_backend, syncs

spec = importlib.util.spec_from_file_location("host_syncs", "tests/backend/test_host_syncs.py")
cases = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cases)
be = get_backend("gpu")


def lm():
    model = MLPLanguageModel(40, context=3, embed_dim=8, hidden=(16,))
    rng = numpy.random.default_rng(1)
    return model, Adam(1e-3), lambda _: (rng.integers(0, 40, (cases.B, 3)).astype(numpy.int32),
                                         rng.integers(0, 40, cases.B).astype(numpy.int32))


rows, bad = {}, 0
makers = dict(cases.CASES, **{"embedding-lm": lm})
for case in sorted(makers):
    model, optimizer, data = makers[case]()
    engine = Engine(model, optimizer, device=be, seed=0, dtype="float32", verbose=False)
    x, y = data(numpy.random.default_rng(0))
    if getattr(model, "sparse_input", False):
        x[numpy.abs(x) < 1.0] = 0
        x = be.to_device_csr(scipy.sparse.csr_matrix(x))
    else:
        x = be.asarray(x)
    declared, real = cases._count_one_step(engine, x, be.asarray(y))
    want = syncs.READS_PER_STEP[case]
    ok = declared == want and real.count == want
    bad += not ok
    rows[case] = {"documented": want, "declared": declared, "device_reads": real.count, "ok": ok}
    if not ok:
        rows[case]["where"] = real.where
    print(f"{'ok  ' if ok else 'FAIL'}  {case:28s} documented {want}  declared {declared}  "
          f"device reads {real.count}")
    if not ok:
        print("\n".join(real.where))
json.dump(rows, open(sys.argv[1], "w"), indent=1)
sys.exit(1 if bad else 0)
PY
}

# ------------------------------------------------------------------ bench
stage_bench() {            # each script under its own share of the stage's budget
    local stage_budget=$1 name b rc t0 total=0 failed=0
    declare -A SHARE=([softmax]=25 [adaptive]=20 [factored]=15 [ffi]=15 [meprop]=10 [distributed]=15)
    local scripts=(tools/bench_*.py)
    mkdir -p "$WORK/bench"
    for script in "${scripts[@]}"; do
        name=$(basename "$script" .py); name=${name#bench_}
        b=${SHARE[$name]:-15}
        (( total + b > stage_budget )) && b=$(( stage_budget - total ))
        if (( b < 5 )); then
            echo "--- SKIPPED $script: the bench stage's budget is spent"
            echo "{\"rc\": null, \"skipped\": \"no time left\"}" > "$WORK/bench/$name.status"
            continue
        fi
        echo "--- $script --device gpu --quick (budget ${b} s)"
        t0=$(date +%s)
        timeout -s INT -k 3 "$b" "$PY" "$script" --device gpu --quick --json "$WORK/bench/$name.json"
        rc=$?
        total=$(( total + $(date +%s) - t0 ))
        (( rc != 0 )) && failed=1
        echo "{\"rc\": $rc, \"seconds\": $(( $(date +%s) - t0 )), \"budget\": $b}" > "$WORK/bench/$name.status"
        echo "--- $script: exit status $rc in $(( $(date +%s) - t0 )) s"
    done
    "$PY" - "$WORK/bench" "$OUT/bench.json" <<'PY'
import glob, json, os, sys
folder, out = sys.argv[1:3]
merged = {}
for status in sorted(glob.glob(os.path.join(folder, "*.status"))):
    name = os.path.basename(status)[:-len(".status")]
    entry = json.load(open(status))
    rows = os.path.join(folder, name + ".json")
    entry["rows"] = json.load(open(rows)) if os.path.exists(rows) else None
    merged["bench_" + name] = entry
json.dump(merged, open(out, "w"), indent=1)
for name, entry in merged.items():
    print(f"bench.json: {name}: {len(entry['rows'] or [])} rows, exit status {entry.get('rc')}")
PY
    return $failed
}

merge_junit() {            # the suites of the tests, offsets and syncs stages -> $OUT/junit.xml
    "$PY" - "$OUT/junit.xml" "$WORK"/junit_*.xml <<'PY'
import sys, xml.etree.ElementTree as ET
out, files = sys.argv[1], sys.argv[2:]
root = ET.Element("testsuites")
for path in files:
    try:
        tree = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        print(f"junit: {path} unreadable ({exc})")
        continue
    for suite in ([tree] if tree.tag == "testsuite" else tree.findall("testsuite")):
        root.append(suite)
        n = {k: suite.get(k, "0") for k in ("tests", "failures", "errors", "skipped")}
        print(f"junit {suite.get('name')}: {n['tests']} tests, {n['failures']} failures, "
              f"{n['errors']} errors, {n['skipped']} skipped, {suite.get('time')} s")
        if n["tests"] != "0" and n["skipped"] == n["tests"]:
            print(f"!!! every test of {suite.get('name')} was skipped (the reasons are in the log)")
        for case in suite.iter("testcase"):
            for kind in ("failure", "error"):
                e = case.find(kind)
                if e is not None:
                    print(f"{kind.upper()}: {case.get('classname')}::{case.get('name')}: "
                          f"{(e.get('message') or '')[:300]}")
ET.ElementTree(root).write(out, encoding="utf-8", xml_declaration=True)
PY
}

# ------------------------------------------------------------------ main
export PY OUT WORK REPO
export -f stage_environment detect_gpu stage_install stage_kernels stage_tests stage_offsets \
    stage_syncs stage_bench
say "gpu_check.sh: repository $REPO, results in $OUT, limit ${LIMIT} s"
run_stage environment stage_environment

say "=== [$(elapsed)s] detect"
t0=$(date +%s)
DETECT=$(timeout -k 5 "${BUDGET[detect]}" bash -c detect_gpu 2>>"$LOG")
rc=$?
say "$DETECT"
if (( rc != 0 )) || [[ -z "$DETECT" ]]; then
    record detect failed $(( $(date +%s) - t0 )) "the engine does not import (exit status $rc)"
    say "=== detect: FAILED: the engine does not import with $PY (see above)"
    for s in install kernels tests offsets syncs bench; do record "$s" skipped 0 "detect failed"; done
    write_summary "unknown"
    exit 1
fi
record detect ok $(( $(date +%s) - t0 )) "${DETECT}"

if [[ $DETECT != yes* ]]; then
    reason=${DETECT#no }
    for s in install kernels tests offsets syncs bench; do
        say "=== SKIPPED $s: no GPU ($reason)"
        record "$s" skipped 0 "no GPU"
    done
    say "every GPU stage was skipped: no GPU ($reason)"
    write_summary "none: $reason"
    exit 0
fi

run_stage install stage_install
run_stage kernels stage_kernels
run_stage tests stage_tests
run_stage offsets stage_offsets
run_stage syncs stage_syncs
b=$(budget_for bench)
if (( b > 0 )); then
    run_stage bench stage_bench "$b"
else
    say "=== SKIPPED bench: no time left"; record bench skipped 0 "no time left"
fi
merge_junit 2>&1 | tee -a "$LOG"
if command -v nvidia-smi >/dev/null 2>&1; then       # clocks and throttling after the load
    timeout 10 nvidia-smi --query-gpu=name,memory.used,clocks.sm,clocks.mem,clocks_throttle_reasons.active,temperature.gpu,power.draw --format=csv 2>&1 | tee -a "$LOG"
fi
write_summary "${DETECT#yes }"
if cut -f2 "$STATUS" | grep -qvE '^(ok|skipped)$'; then
    say "gpu_check.sh: some stages did not pass (see the summary)"
    exit 1
fi
say "gpu_check.sh: every stage passed"
exit 0
