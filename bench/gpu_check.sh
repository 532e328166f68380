#!/usr/bin/env bash
# The GPU acceptance run of dixc's CUDA kernels, in one call on a lent GPU machine (the `device`
# tool: H100/H200, a CUDA build of torch, nvcc, CuPy; no PySCF there, so it travels as wheels).
#
# Here, once (wheels for the machine's Python 3.12; .whl/ is git-ignored):
#   bench/gpu_check.sh --fetch-wheels
# Then, through the device tool, from the repo root, with carry [".whl"]:
#   bash bench/gpu_check.sh              # build gpu-tests bench suite, timeout_s 600
#   bash bench/gpu_check.sh suite        # a stage the deadline skipped, in a second call at once
#                                        # (reuses the build while the machine is warm)
# Stages: build (DIXC_CUDA=ON wheel, against the machine's torch), gpu-tests (pytest -m gpu),
# bench (bench/bench_cuda.py --float32, then bench/bench_becke.py --device cuda), suite (the
# rest of the tests, with pytest-xdist; all of them when gpu-tests did not run in the same call).
# Each stage writes its log to $OUT as it goes (DIXC_GPU_OUT, else ./gpu-check-out), so what ran
# before a time-out still comes back (7 files, within the tool's 8); DIXC_GPU_DEADLINE (seconds,
# default 570) bounds the whole call and each stage gets what is left of it, a stage with too
# little left is skipped and says so.
# Measured results go to bench/README.md ("GPU") and the issue note.
set -uo pipefail

PYV=3.12
WHEELS=(pyscf==2.14.0 expecttest==0.3.0)
PURE=(geometric==1.1.1) # sdist only on PyPI: built here into a py3-none-any wheel
if [[ "${1:-}" == "--fetch-wheels" ]]; then
  # manylinux wheels of what the device image lacks (its package list: ../.library/device/KINDS.md)
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}" || exit 1
  python3 -m pip wheel -q --no-deps -w .whl "${PURE[@]}" || exit 1
  ls -l .whl
  exit 0
fi

OUT="${OUT:-${DIXC_GPU_OUT:-$PWD/gpu-check-out}}"
mkdir -p "$OUT"
T0=$SECONDS
DEADLINE=${DIXC_GPU_DEADLINE:-570}
STAGES=("$@")
[[ ${#STAGES[@]} -eq 0 ]] && STAGES=(build gpu-tests bench suite)
SITE=/tmp/dixc-gpu-site      # carried wheels
DIXC_SITE=/tmp/dixc-gpu-dixc # the dixc wheel built here
BUILD=/tmp/dixc-gpu-build
export PYTHONUNBUFFERED=1 PYTHONPATH="$DIXC_SITE:$SITE${PYTHONPATH:+:$PYTHONPATH}"

build() {
  # DIXC_CUDA=ON fails the build (instead of silently dropping CUDA) when torch or nvcc lack CUDA.
  rm -rf /tmp/dixc-gpu-wheel "$DIXC_SITE"
  DIXC_CUDA=ON CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) python3 -m pip wheel --no-build-isolation \
    --no-deps -w /tmp/dixc-gpu-wheel -C build-dir="$BUILD" -v . || return 1
  python3 -m pip install -q --no-deps --no-compile --target "$DIXC_SITE" /tmp/dixc-gpu-wheel/dixc-*.whl || return 1
  (cd /tmp && python3 -c "import torch, dixc; print(torch.ops.dixc.build_info()); assert dixc.ops.has_cuda(), 'built without CUDA kernels'")
}
# a dixc with CUDA kernels built by this script (not another install the image might hold)
built() {
  (cd /tmp && python3 -c "import dixc, sys; sys.exit(0 if dixc.__file__.startswith('$DIXC_SITE/') and dixc.ops.has_cuda() else 1)") 2>/dev/null
}
if [[ "${1:-}" == __build ]]; then  # the build stage, run under timeout by run_stage
  build
  exit $?
fi

log() { echo "[gpu_check $((SECONDS - T0))s] $*" | tee -a "$OUT/summary.txt"; }
left() { echo $((DEADLINE - (SECONDS - T0))); }
# run_stage NAME MIN_SECONDS CMD...: runs CMD with what is left of the deadline, logs to $OUT/NAME.log
run_stage() {
  local name=$1 need=$2 budget rc
  shift 2
  budget=$(left)
  if ((budget < need)); then
    log "$name: skipped, ${budget}s left (needs ${need}s); run it in a second call"
    return 1
  fi
  log "$name: start (limit ${budget}s): $*"
  timeout --signal=INT --kill-after=10 "$budget" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  log "$name: rc=$rc; last lines:"
  tail -n 5 "$OUT/$name.log" | tee -a "$OUT/summary.txt"
  return $rc
}

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
  nvcc --version | tail -n 2
  python3 -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"
  nproc
} >"$OUT/env.txt" 2>&1
log "env: $(tail -n 3 "$OUT/env.txt" | tr '\n' ' ')"

if compgen -G ".whl/*.whl" >/dev/null && [[ ! -d $SITE ]]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .whl/*.whl \
    || { log "installing the carried wheels failed"; exit 1; }
fi
python3 -c "import pyscf" 2>/dev/null || { log "no PySCF: carry .whl (bench/gpu_check.sh --fetch-wheels)"; exit 1; }


status=0
for stage in "${STAGES[@]}"; do
  # every stage needs the build: made once per machine, kept in /tmp while it stays warm
  built || run_stage build 60 bash "$0" __build || { status=1; break; }
  case $stage in
    build) ;;
    gpu-tests)
      gpu_done=1
      run_stage gpu-tests 60 python3 -m pytest -m gpu -q -p no:cacheprovider --durations=15 || status=1 ;;
    bench)
      # one log (the tool brings back 8 files): bench_cuda's tables, then bench_becke's
      run_stage bench 90 bash -c "python3 bench/bench_cuda.py --markdown --float32 --json '$OUT/bench_cuda.json' \
        && python3 bench/bench_becke.py --device cuda --molecules ethanol alkane8 --repeat 3" || status=1 ;;
    suite)
      # every test, CUDA ones included (those not already run by gpu-tests in this call);
      # pytest-xdist workers with 2 threads each
      expr=""
      [[ -n ${gpu_done:-} ]] && expr="not gpu"
      if ! python3 -c "import importlib.util as u, sys; sys.exit(u.find_spec('qm9pack') is None)"; then
        # qm9pack's 104 MB wheel cannot travel (64 MiB a call); its tests are CPU-only data tests
        log "suite: without the tests marked qm9pack (no qm9pack here; CI runs them)"
        expr="${expr:+$expr and }not qm9pack"
      fi
      sel=()
      [[ -n $expr ]] && sel=(-m "$expr")
      par=()
      python3 -c "import xdist" 2>/dev/null && par=(-n "${DIXC_GPU_WORKERS:-8}" --dist loadfile)
      OMP_NUM_THREADS=2 run_stage suite 120 python3 -m pytest -q -p no:cacheprovider "${sel[@]}" \
        "${par[@]}" --durations=20 || status=1 ;;
    *) log "unknown stage '$stage' (build, gpu-tests, bench, suite)"; status=2 ;;
  esac
done
log "done: status $status in $((SECONDS - T0))s"
exit $status
