#!/usr/bin/env bash
# The GPU check in one command: install the bundle, prove the served ensemble right, then time it.
#
#   bash benchmarks/gpu_check.sh OUTDIR [--device cuda|cpu] [--quick] [--bundle DIR] [--work DIR]
#                                       [--budget-s S] [--keep-work] [--emulate-image]
#
# PYTHON (default python3) is the interpreter that holds torch (on the GPU machine: Python 3.12,
# torch with CUDA). The bundle (`make gpu-bundle`, default DIR: gpu_bundle/ of this checkout) must
# be built for that interpreter's Python version.
#
# 1. checks: the Python version against the bundle's, torch importable, and with --device cuda
#    that torch sees a GPU; the libpython the Python-backend stub loads.
# 2. installs the bundle under WORK/env (gpu_bundle --install: sha256 of every archive checked):
#    the server at WORK/env/triton ($COVIDCT_TRITON_DIR, with numpy 1.26 for the stub in
#    stub-site/), the client packages at WORK/env/site. They go on PYTHONPATH in front of the
#    interpreter's own site-packages (a --target install rather than a venv: the interpreter
#    stays the one with torch, so the launcher hands the stub torch's site-packages unchanged,
#    and no .pth file is needed to reach a site that is not the system one).
#    --emulate-image also refuses imports of anything neither the GPU machine's image nor the
#    bundle holds (covidct.benchmarks.gpu_image.guard_imports): a dry run here then fails where the
#    GPU machine would.
# 3. correctness first: tests/unit/test_device_numerics.py on the device (the torch numerics equal
#    the numpy implementation they replaced), then covidct.benchmarks.gpu_parity (export seeded random
#    weights, serve with KIND_GPU instances - KIND_CPU with --device cpu - compare every output
#    with the in-process reference).
# 4. then covidct.benchmarks.gpu_run on the same repository: paper 002's Table 5 slice counts with the naive
#    FP32 loop, throughput at concurrency 1-16 with the GPU memory peak (--quick: tiny sizes).
# Each phase runs under `timeout` within --budget-s seconds in all (default 420: with the 10 s kill
# grace and a stopped server's 30 s shutdown the whole check stays under 8 minutes).
# OUTDIR gets gpu_check.md/.json/.log, parity/, benchmark/ (reports, no weights) and all of it
# packed as gpu_check_results.tar.gz; WORK holds the environment, the repository and the
# benchmark's copies (default: a fresh temporary folder, removed at the end unless --keep-work;
# a folder given with --work is left in place).
# Exit status: 0 when every phase passed, 1 with a "gpu_check: FAILED: ..." line otherwise.
set -euo pipefail

usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[ $# -ge 1 ] && [ "${1#-}" = "$1" ] || usage
OUTDIR=$1; shift
DEVICE=cuda QUICK=0 BUNDLE="" WORK="" BUDGET_S=420 KEEP_WORK=0 EMULATE=0
while [ $# -gt 0 ]; do
  case $1 in
    --device) DEVICE=${2:?--device needs cuda or cpu}; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --bundle) BUNDLE=${2:?--bundle needs a folder}; shift 2 ;;
    --work) WORK=${2:?--work needs a folder}; shift 2 ;;
    --budget-s) BUDGET_S=${2:?--budget-s needs seconds}; shift 2 ;;
    --keep-work) KEEP_WORK=1; shift ;;
    --emulate-image) EMULATE=1; shift ;;
    *) echo "gpu_check: unknown option $1" >&2; usage ;;
  esac
done
case $DEVICE in cuda|cpu) ;; *) echo "gpu_check: --device $DEVICE; expected cuda or cpu" >&2; exit 2 ;; esac

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
BUNDLE=$(cd "${BUNDLE:-$REPO/gpu_bundle}" 2>/dev/null && pwd) || { echo "gpu_check: FAILED: no bundle folder" \
  "${BUNDLE:-$REPO/gpu_bundle} (run \`make gpu-bundle\` where pip can download)" >&2; exit 1; }
mkdir -p "$OUTDIR" && OUTDIR=$(cd "$OUTDIR" && pwd)
OWN_WORK=0
[ -n "$WORK" ] || { WORK=$(mktemp -d "${TMPDIR:-/tmp}/covidct-gpu-check.XXXXXX"); OWN_WORK=1; }
mkdir -p "$WORK" && WORK=$(cd "$WORK" && pwd)
cd "$REPO"
exec > >(tee "$OUTDIR/gpu_check.log") 2>&1

START=$SECONDS
RESULT=FAILED REASON="" PHASES="" PYVER="" TORCH="" GPU_NAME=""
phase_s() { PHASES="$PHASES${PHASES:+, }\"$1\": $2"; }
remaining() { echo $((BUDGET_S - (SECONDS - START))); }

finish() {
  local code=$?
  set +e
  if [ -d "$WORK/benchmark" ]; then  # reports only: no weights, ONNX files or repository copies
    mkdir -p "$OUTDIR/benchmark"
    (cd "$WORK/benchmark" && find . \( -name model_repository -o -name checkpoints -o -name repositories \) -prune \
      -o -type f \( -name '*.md' -o -name '*.json' -o -name '*.png' -o -name '*.prom' -o -name '*.log' \) -print0 \
      | xargs -0 -r cp --parents -t "$OUTDIR/benchmark")
  fi
  [ "$code" = 0 ] && [ "$RESULT" = PASSED ] || { RESULT=FAILED; REASON=${REASON:-"exit status $code"}; }
  # reports name the folders as $WORK and $OUTDIR: the same run reads the same anywhere
  find "$OUTDIR" -type f \( -name '*.md' -o -name '*.json' \) -exec sed -i -e "s#$WORK#\$WORK#g" \
    -e "s#$OUTDIR#\$OUTDIR#g" {} +
  printf '{\n  "result": "%s",\n  "reason": "%s",\n  "device": "%s",\n  "quick": %s,\n  "python": "%s",\n' \
    "$RESULT" "${REASON//\"/\'}" "$DEVICE" "$([ $QUICK = 1 ] && echo true || echo false)" "$PYVER" \
    > "$OUTDIR/gpu_check.json"
  printf '  "torch": "%s",\n  "gpu": "%s",\n  "emulated_image": %s,\n  "budget_s": %s,\n  "phases_s": {%s},\n' \
    "$TORCH" "$GPU_NAME" "$([ $EMULATE = 1 ] && echo true || echo false)" "$BUDGET_S" "$PHASES" \
    >> "$OUTDIR/gpu_check.json"
  printf '  "wall_s": %s\n}\n' "$((SECONDS - START))" >> "$OUTDIR/gpu_check.json"
  {
    echo "# GPU check: $RESULT"
    echo
    echo "\`bash benchmarks/gpu_check.sh OUTDIR --device $DEVICE$([ $QUICK = 1 ] && echo ' --quick')\`:" \
      "Python $PYVER, torch $TORCH, device ${GPU_NAME:-CPU}; wall time $((SECONDS - START)) s" \
      "(budget $BUDGET_S s); phases (s): ${PHASES//\"/}.${REASON:+ Failure: $REASON.}"
    echo
    [ -f "$OUTDIR/parity/gpu_parity.md" ] && sed 's/^#/##/' "$OUTDIR/parity/gpu_parity.md" && echo
    [ -f "$OUTDIR/benchmark/gpu_run.md" ] && sed 's/^#/##/' "$OUTDIR/benchmark/gpu_run.md"
  } > "$OUTDIR/gpu_check.md"
  tar -C "$OUTDIR" --exclude=gpu_check_results.tar.gz -czf "$WORK/gpu_check_results.tar.gz" . \
    && mv "$WORK/gpu_check_results.tar.gz" "$OUTDIR/"
  # a server whose client was stopped by `timeout` got SIGTERM with it and shuts down within
  # its --exit-timeout-secs (30 s): wait for it before its files go
  for _ in $(seq 35); do pgrep -f "$WORK/env/triton/" > /dev/null || break; sleep 1; done
  [ "$KEEP_WORK" = 1 ] || [ "$OWN_WORK" = 0 ] || rm -rf "$WORK"
  if [ "$RESULT" = PASSED ]; then
    echo "gpu_check: PASSED in $((SECONDS - START)) s; reports in $OUTDIR"
  else
    echo "gpu_check: FAILED: $REASON (reports and log in $OUTDIR)" >&2
  fi
  [ "$RESULT" = PASSED ] && exit 0
  exit 1
}
trap finish EXIT
fail() { REASON=$*; exit 1; }

# 1. interpreter, torch, GPU, libpython -------------------------------------------------------
PYVER=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])') || fail "cannot run the interpreter $PY"
BUNDLE_PY=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["python_version"])' \
  "$BUNDLE/manifest.json") || fail "no readable $BUNDLE/manifest.json (run \`make gpu-bundle\`)"
[ "$PYVER" = "$BUNDLE_PY" ] || fail "$PY is Python $PYVER but the bundle was built for Python $BUNDLE_PY" \
  "(rebuild: python -m covidct.benchmarks.gpu_bundle --out gpu_bundle --python-version $PYVER)"
TORCH_INFO=$("$PY" -c 'import torch; c = torch.cuda.is_available()
print(torch.__version__, torch.version.cuda or "none", int(c), torch.cuda.get_device_name(0) if c else "-", sep="|")') \
  || fail "torch is not importable by $PY"
IFS='|' read -r TORCH TORCH_CUDA HAS_GPU GPU_NAME <<< "$TORCH_INFO"
[ "$GPU_NAME" != - ] || GPU_NAME=""
echo "gpu_check: Python $PYVER ($PY), torch $TORCH (CUDA build: $TORCH_CUDA), GPU: ${GPU_NAME:-none}"
if [ "$DEVICE" = cuda ]; then
  [ "$HAS_GPU" = 1 ] || fail "torch $TORCH (CUDA build: $TORCH_CUDA) sees no GPU; use --device cpu for a dry run"
else
  GPU_NAME=""  # the CPU path uses no GPU
fi
"$PY" - <<'EOF' || fail "the Python-backend stub needs libpython$PYVER.so.1.0, found neither in the interpreter's LIBDIR nor by the loader"
import ctypes, os, sys, sysconfig
name = "libpython%d.%d.so.1.0" % sys.version_info[:2]
for candidate in (os.path.join(sysconfig.get_config_var("LIBDIR") or "", name), name):
    try:
        ctypes.CDLL(candidate)
        print("gpu_check: stub's libpython:", candidate)
        break
    except OSError:
        continue
else:
    sys.exit(1)
EOF

# 2. the bundle ---------------------------------------------------------------------------------
T0=$SECONDS
rm -rf "$WORK/env"
PYTHONPATH="$REPO" "$PY" -m covidct.benchmarks.gpu_bundle --install "$BUNDLE" --dest "$WORK/env" \
  || fail "the bundle $BUNDLE did not install (see the message above)"
export COVIDCT_TRITON_DIR="$WORK/env/triton"
export PYTHONPATH="$WORK/env/site:$REPO${PYTHONPATH:+:$PYTHONPATH}"
if [ "$EMULATE" = 1 ]; then
  mkdir -p "$WORK/env/guard"
  printf 'from covidct.benchmarks.gpu_image import guard_imports\n\nguard_imports()\n' > "$WORK/env/guard/sitecustomize.py"
  export PYTHONPATH="$WORK/env/guard:$PYTHONPATH"
fi
export PYTHONUNBUFFERED=1
"$PY" -c 'import covidct.benchmarks.gpu_parity, covidct.benchmarks.gpu_run, covidct.benchmarks.paper_comparison, covidct.benchmarks.throughput
import covidct.client.submit, covidct.app.triton_server, covidct.export.repository, tritonclient.grpc
from covidct.app.triton_install import locate_triton; print("gpu_check: server", locate_triton().server_bin)' \
  || fail "the run's modules do not import with the bundle installed (see the traceback above)"
phase_s install $((SECONDS - T0))

# 3. correctness ----------------------------------------------------------------------------------
# 3a. the per-slice numerics on this device equal the numpy implementation they replaced
LIMIT=$(remaining); [ "$LIMIT" -gt 60 ] || fail "no time left for the numerics tests (budget $BUDGET_S s)"
T0=$SECONDS rc=0
timeout -k 10 120 "$PY" -m pytest -q -p no:cacheprovider "$REPO/tests/unit/test_device_numerics.py" -k "$DEVICE" \
  -rs --junitxml="$OUTDIR/numerics.xml" || rc=$?
phase_s numerics $((SECONDS - T0))
[ "$rc" = 0 ] || fail "the torch numerics on $DEVICE differ from the numpy reference (pytest exit $rc; see the log)"
# 3b. the served ensemble on this device equals the in-process CPU reference
QUICK_ARG=(); [ "$QUICK" = 1 ] && QUICK_ARG=(--quick)
LIMIT=$(remaining); [ "$LIMIT" -gt 30 ] || fail "no time left for the parity check (budget $BUDGET_S s)"
T0=$SECONDS rc=0
timeout -k 10 "$LIMIT" "$PY" -m covidct.benchmarks.gpu_parity --out "$OUTDIR/parity" --device "$DEVICE" \
  --repository-out "$WORK" "${QUICK_ARG[@]}" || rc=$?
phase_s parity $((SECONDS - T0))
[ "$rc" != 124 ] && [ "$rc" != 137 ] || fail "the parity check ran out of the budget ($LIMIT s left of $BUDGET_S s)"
[ "$rc" = 0 ] || fail "served outputs differ from the in-process reference, or the parity run broke (exit $rc;" \
  "$OUTDIR/parity/gpu_parity.md and the log)"

# 4. benchmark ------------------------------------------------------------------------------------
BENCH_ARGS=(--repeats 3 --naive-repeats 2 --instances 1)  # Table 5 slice counts, concurrency 1-16
[ "$QUICK" = 1 ] && BENCH_ARGS=(--quick)
LIMIT=$(( $(remaining) - 10 )); [ "$LIMIT" -gt 30 ] || fail "no time left for the benchmark (budget $BUDGET_S s)"
T0=$SECONDS rc=0
timeout -k 10 "$LIMIT" "$PY" -m covidct.benchmarks.gpu_run --out "$WORK/benchmark" --device "$DEVICE" \
  --model-repository "$WORK/model_repository" "${BENCH_ARGS[@]}" || rc=$?
phase_s benchmark $((SECONDS - T0))
[ "$rc" != 124 ] && [ "$rc" != 137 ] || fail "the benchmark ran out of the budget ($LIMIT s; partial reports kept)"
[ "$rc" = 0 ] || fail "the benchmark failed (exit $rc; see the log)"
RESULT=PASSED
