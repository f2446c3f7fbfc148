#!/usr/bin/env bash
# GPU validation for the offline GPU machine (`make gpu-check`, i.e.
#   PYTHON=python3 bash benchmarks/gpu_check.sh):
#   1 env        nvidia-smi -L, python/torch/triton/torchvision versions, nvcc --version
#   2 build      setup.py build_ext --inplace --force (attnkernels._C for sm_90), then import check
#   3 pytest     the whole test suite on the GPU (-n 8 when pytest-xdist is importable), with
#   4 memcheck   compute-sanitizer --tool memcheck  over benchmarks/sanitize_se.py and
#     racecheck  compute-sanitizer --tool racecheck over it running alongside (background)
#   5 bench      benchmarks/host_overhead.py (host time per call), then
#                benchmarks/bench_se.py --quick --triton-variants pipelined,batched --cuda-variants split,pipelined,fused,batched
#                then the other ops' benchmarks, short: bench_cbam.py, bench_bam.py, bench_sca.py
#                (--quick --compile-modes fwd: torch.compile only where a target names it) and
#                sca_decoder.py (--quick --no-compile), sharing OPS_BENCH_S seconds by weight
#                (OPS_WEIGHTS); each stops starting configs at half its share, and at its step's
#                timeout still writes its tables (harness.stop_on_sigterm: the step is then
#                STOPPED, not a failure); their first configs are the rows the issues' targets are
#                read from (each table's "Targets")
#   6 report     benchmarks/results/<gpu>-<date>.md (status + key line of each step + the
#                benchmark tables); logs in benchmarks/results/<gpu>-<date>/; copies in $OUT if set.
# Every step runs even when an earlier one failed; the exit status is 1 if any step failed,
# timed out or was skipped (an op benchmark stopped at its share with its tables written is not). The whole run stays inside GPU_CHECK_BUDGET_S (default 530 s):
# each step's timeout is min(its nominal timeout, time left minus a reserve for later steps).
# Environment: PYTHON (python3), CUDA_HOME (/usr/local/cuda), TORCH_CUDA_ARCH_LIST (9.0),
# GPU_CHECK_BUDGET_S (530), GPU_CHECK_STEPS (env,build,pytest,sanitize,bench), BENCH_RESERVE_S
# (210: seconds kept for the benchmarks when sizing the earlier steps), OPS_BENCH_S (130: of those,
# the seconds for the CBAM / BAM / SCA / decoder benchmarks; 0 skips them), OPS_WEIGHTS
# ("40 35 35 20": their shares of OPS_BENCH_S, in that order; what one leaves goes to the next).
set -u

cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
PYTHON=${PYTHON:-python3}
export PYTHON
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET  # real GPU kernels, not the interpreter
START=$(date +%s)
BUDGET_S=${GPU_CHECK_BUDGET_S:-530}
DEADLINE=$((START + BUDGET_S))
STEPS=${GPU_CHECK_STEPS:-env,build,pytest,sanitize,bench}
DATE=$(date +%F)

GPU=$(timeout 90 "$PYTHON" benchmarks/bench_se.py --print-gpu-tag 2>/dev/null | tail -n 1 | tr -cd 'a-z0-9._-')
[ -n "$GPU" ] || GPU=gpu
TAG="$GPU-$DATE"
RES="benchmarks/results"
DIR="$RES/$TAG"
REPORT="$RES/$TAG.md"
mkdir -p "$DIR"
echo "gpu-check: tag $TAG, logs in $DIR/, report $REPORT, budget ${BUDGET_S}s"

# ---- bookkeeping --------------------------------------------------------------------------
S_ID=(); S_NAME=(); S_STATUS=(); S_SECS=(); S_KEY=()
FAILED=0
record() {  # id name status secs key
  S_ID+=("$1"); S_NAME+=("$2"); S_STATUS+=("$3"); S_SECS+=("$4"); S_KEY+=("$5")
  case "$3" in OK|STOPPED*) ;; *) FAILED=1 ;; esac
  echo "   -> $3 (${4}s) $5"
}
want() { case ",$STEPS," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
timeout_for() {  # nominal reserve -> seconds this step may use (0 = none left)
  local left=$((DEADLINE - $(date +%s) - $2))
  [ "$left" -lt "$1" ] || left=$1
  [ "$left" -ge 15 ] || left=0
  echo "$left"
}
# run_step id name timeout cmd... : runs cmd with `timeout`, output to $DIR/<id>.log.
# Sets STEP_RC, STEP_SECS, STEP_STATUS, STEP_LOG; never exits.
run_step() {
  local id=$1 name=$2 t=$3
  shift 3
  STEP_LOG="$DIR/$id.log"
  STEP_RC=0; STEP_SECS=0
  if [ "$t" -le 0 ]; then
    STEP_STATUS=SKIPPED; STEP_RC=-1
    echo "skipped: no time left in the ${BUDGET_S}s budget" > "$STEP_LOG"
    echo "== [$id] $name: SKIPPED (no time left)"
    return 0
  fi
  echo "== [$id] $name (timeout ${t}s; log $STEP_LOG)"
  { echo "\$ $*"; echo "# timeout ${t}s, $(date -Is)"; } > "$STEP_LOG"
  local t0
  t0=$(date +%s)
  timeout -s "${STEP_SIGNAL:-TERM}" -k 20 "$t" "$@" >> "$STEP_LOG" 2>&1
  STEP_RC=$?
  STEP_SECS=$(( $(date +%s) - t0 ))
  case "$STEP_RC" in
    0) STEP_STATUS=OK ;;
    124|137) STEP_STATUS="TIMEOUT(${t}s)" ;;
    *) STEP_STATUS="FAIL(rc=$STEP_RC)" ;;
  esac
  if [ "$STEP_STATUS" != OK ]; then
    echo "   last lines of $STEP_LOG:"
    tail -n 15 "$STEP_LOG" | sed 's/^/   | /'
  fi
  return 0
}
oneline() { tr '\n' ' ' | sed 's/|/\//g; s/  */ /g; s/ $//' | cut -c1-300; }
joinkey() {  # non-empty arguments joined with "; "
  local out="" a
  for a in "$@"; do
    a=$(printf '%s' "$a" | sed 's/^ *//; s/ *$//')
    [ -z "$a" ] && continue
    out="${out:+$out; }$a"
  done
  printf '%s' "$out"
}

# ---- 1 env --------------------------------------------------------------------------------
NVCC=$(command -v nvcc 2>/dev/null || echo "$CUDA_HOME/bin/nvcc")
ENV_PY='
import sys
print("python", sys.version.split()[0])
try:
    import torch
    print("torch", torch.__version__, "cuda", torch.version.cuda)
    if torch.cuda.is_available():
        print("gpu", torch.cuda.get_device_name(0), "sm_%d%d" % torch.cuda.get_device_capability(0))
    else:
        print("gpu none (torch.cuda.is_available() is False)")
except Exception as e:
    print("torch import failed:", e)
for m in ("triton", "torchvision", "timm", "pytest", "xdist", "pytest_benchmark", "matplotlib"):
    try:
        print(m, __import__(m).__version__)
    except Exception as e:
        print(m, "n/a", type(e).__name__)
'
if want env; then
  run_step 01-env "environment" "$(timeout_for 30 0)" bash -c \
    "nvidia-smi -L; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv; \"\$PYTHON\" -c '$ENV_PY'; \"$NVCC\" --version"
  key=$(joinkey "$(grep -m1 '^GPU 0' "$STEP_LOG" | cut -c1-80)" "$(grep -m1 '^torch ' "$STEP_LOG")" \
    "$(grep -m1 '^triton ' "$STEP_LOG")" "nvcc $(grep -m1 -o 'release [0-9.]*' "$STEP_LOG" | cut -d' ' -f2)")
  record env "environment" "$STEP_STATUS" "$STEP_SECS" "$key"
fi
ENV_LOG="$DIR/01-env.log"
info() { [ -f "$ENV_LOG" ] && grep -m1 "^$1 " "$ENV_LOG" | cut -d' ' -f2- ; }

# ---- 2 build ------------------------------------------------------------------------------
if want build; then
  run_step 02-build "build the extension in place" "$(timeout_for 200 250)" bash -c \
    "CUDA_HOME=\"$CUDA_HOME\" TORCH_CUDA_ARCH_LIST=\"${TORCH_CUDA_ARCH_LIST:-9.0}\" MAX_JOBS=16 \"\$PYTHON\" setup.py -q build_ext --inplace --force \
     && echo 'BUILD DONE' && \"\$PYTHON\" -c 'import attnkernels._C as c, attnkernels as ak; print(\"import ok:\", c.__file__); print(\"backends on cuda:\", ak.available_backends(\"cuda\"))'"
  key=$(joinkey "built in ${STEP_SECS}s" "$(grep -m1 '^backends on cuda' "$STEP_LOG")" \
    "$(grep 'attnkernels setup:' "$STEP_LOG" | oneline)")
  [ "$STEP_STATUS" = OK ] || key=$(joinkey "$key" "$(grep -m3 -E 'error|Error' "$STEP_LOG" | oneline)")
  record build "build (setup.py build_ext --inplace)" "$STEP_STATUS" "$STEP_SECS" "$key"
fi

# ---- 3 pytest, with 4 compute-sanitizer alongside ----------------------------------------
# The sanitizer runs are correctness checks too: they run in the background while pytest runs
# (16 cores), so the benchmark that follows has the GPU to itself.
SAN=""
if want sanitize; then
  SAN=$(command -v compute-sanitizer 2>/dev/null || true)
  for c in "$CUDA_HOME/bin/compute-sanitizer" "$CUDA_HOME/compute-sanitizer/compute-sanitizer"; do
    [ -n "$SAN" ] || { [ -x "$c" ] && SAN=$c; }
  done
  san_t=$(timeout_for 240 "${BENCH_RESERVE_S:-210}")
  [ "$san_t" -gt 0 ] || SAN=""  # no time left: reported as not run below
  if [ -n "$SAN" ]; then
    # racecheck covers the hand-written CUDA kernels: Triton's generated cross-warp reductions
    # (tl.sum of a replicated layout) have every replica write the same value to the same
    # shared-memory word, which racecheck reports as same-PC write-write hazards (seen on an
    # H100, 2026-11-25, with every result correct); memcheck covers both backends.
    for tool in memcheck racecheck; do
      log="$DIR/04-$tool.log"
      if [ "$tool" = racecheck ]; then san_args=(--backends cuda); else san_args=(); fi
      { echo "\$ compute-sanitizer --tool $tool $PYTHON benchmarks/sanitize_se.py ${san_args[*]:-}"; echo "# timeout ${san_t}s"; } > "$log"
      ( t0=$(date +%s)
        timeout -k 10 "$san_t" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SAN" --tool "$tool" --error-exitcode 3 \
          "$PYTHON" benchmarks/sanitize_se.py ${san_args[@]+"${san_args[@]}"} >> "$log" 2>&1
        echo "$? $(( $(date +%s) - t0 ))" > "$DIR/04-$tool.rc" ) &
    done
  fi
fi
if want pytest; then
  XDIST=()
  if "$PYTHON" -c "import xdist" >/dev/null 2>&1; then XDIST=(-n 8); fi
  # a test that hangs (say a GPU spin-wait) is killed on its own and reported, the run goes on
  if "$PYTHON" -c "import pytest_timeout" >/dev/null 2>&1; then XDIST+=(--timeout=180 --timeout-method=thread); fi
  # SIGINT when the step's time is up: pytest still prints its failures and the counts so far
  STEP_SIGNAL=INT run_step 03-pytest "pytest tests ${XDIST[*]:-}" "$(timeout_for 330 "${BENCH_RESERVE_S:-210}")" \
    "$PYTHON" -m pytest -q tests -p no:cacheprovider --durations=15 ${XDIST[@]+"${XDIST[@]}"}
  key=$(grep -E '[0-9]+ (passed|failed|error|errors|skipped)|no tests ran' "$STEP_LOG" | tail -n 1 | sed 's/=//g' | oneline)
  [ -n "$key" ] || key="no pytest summary line (see log)"
  fails=$(grep -E '^(FAILED|ERROR) ' "$STEP_LOG" | head -n 5 | oneline)
  [ -z "$fails" ] || key="$key; $fails"
  record pytest "pytest (whole suite)" "$STEP_STATUS" "$STEP_SECS" "$key"
fi
if want sanitize; then
  wait
  for tool in memcheck racecheck; do
    log="$DIR/04-$tool.log"
    if [ -z "$SAN" ]; then
      echo "compute-sanitizer not found (PATH, \$CUDA_HOME/bin)" > "$log"
      record "$tool" "compute-sanitizer $tool" "FAIL(no compute-sanitizer)" 0 "compute-sanitizer not found"
      continue
    fi
    read -r rc secs < "$DIR/04-$tool.rc" 2>/dev/null || { rc=-1; secs=0; }
    case "$rc" in 0) st=OK ;; 124|137) st="TIMEOUT" ;; *) st="FAIL(rc=$rc)" ;; esac
    key=$(joinkey "$(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$log" | tail -n 2 | sed 's/=//g' | oneline)" \
      "$(grep -m1 'cases ran' "$log" | oneline)")
    record "$tool" "compute-sanitizer $tool (during pytest)" "$st" "$secs" "$key"
  done
fi

# ---- 5 benchmark --------------------------------------------------------------------------
BENCH="$DIR/bench-se"
if want bench; then
  # host time per call of each layer (ext, functional, module, autograd) vs eager: the batch-1 gap
  run_step 05-host "host_overhead.py" "$(timeout_for 60 "${BENCH_RESERVE_S:-210}")" \
    "$PYTHON" benchmarks/host_overhead.py --calls 2000 --csv "$DIR/host-overhead.csv"
  key=$(grep -E '^  (ak.se no_grad|module no_grad|module fwd\+bwd|eager fwd no_grad|eager fwd\+bwd) ' "$STEP_LOG" \
    | sed 's/  */ /g; s/^ //' | oneline)
  record host "host time per call (host_overhead.py)" "$STEP_STATUS" "$STEP_SECS" "$key"
  OPS_S=${OPS_BENCH_S:-130}
  t=$(timeout_for 240 $((10 + OPS_S)))
  budget=$((t - 60)); [ "$budget" -ge 20 ] || budget=20
  run_step 05-bench "bench_se.py --quick" "$t" \
    "$PYTHON" benchmarks/bench_se.py --quick --triton-variants pipelined,batched --cuda-variants split,pipelined,fused,batched --out "$DIR" --name bench-se --budget-s "$budget"
  key=$(joinkey "$(grep -m1 '^copy bandwidth' "$STEP_LOG" | oneline)" \
    "$(grep -m1 -E '^bench_se: [0-9]+ rows' "$STEP_LOG" | oneline)" \
    "$(grep -m1 -E '^bench_se: time budget' "$STEP_LOG" | oneline)" \
    "$(grep -m1 '^Correctness guard' "$STEP_LOG" | oneline)")
  [ "$STEP_STATUS" = OK ] || key=$(joinkey "$key" "$(tail -n 2 "$STEP_LOG" | oneline)")
  record bench "benchmark (bench_se.py --quick)" "$STEP_STATUS" "$STEP_SECS" "$key"
  # the other ops, short: eager, the official code where there is one, the kernels, and
  # torch.compile in the forward only (the targets name compile for the forward only; each
  # compile costs seconds); the decoder without compile. Each op's step gets its weight's share of
  # the time left for the ops (OPS_WEIGHTS), stops starting configs at half of it and, at its
  # timeout (SIGTERM), writes the tables of the rows it has. A column whose op is not in
  # attnkernels yet is skipped with a note.
  if [ "$OPS_S" -gt 0 ]; then
    read -r -a OPS_W <<< "${OPS_WEIGHTS:-40 35 35 20}"
    OPS_END=$(( $(date +%s) + OPS_S ))
    [ "$OPS_END" -le $((DEADLINE - 5)) ] || OPS_END=$((DEADLINE - 5))
    i=0
    for op in cbam bam sca sca_decoder; do
      script=bench_$op.py; [ "$op" = sca_decoder ] && script=sca_decoder.py
      wsum=0; for w in "${OPS_W[@]:$i}"; do wsum=$((wsum + w)); done
      share=$(( (OPS_END - $(date +%s)) * ${OPS_W[$i]:-0} / (wsum > 0 ? wsum : 1) ))
      i=$((i + 1))
      [ "$share" -ge 15 ] || share=0
      compile=(--compile-modes fwd); [ "$op" = sca_decoder ] && compile=(--no-compile)
      # (the timeout 5 s short of the share: the SIGTERM'd run then writes its report within it)
      run_step "05-bench-$op" "$script --quick ${compile[*]}" $((share > 0 ? share - 5 : 0)) \
        "$PYTHON" "benchmarks/$script" --quick "${compile[@]}" --out "$DIR" --name "bench-$op" \
        --budget-s $((share / 2))
      key=$(joinkey "$(grep -m1 -E ' [0-9]+ rows in ' "$STEP_LOG" | oneline)" \
        "$(grep -m1 -E 'time budget|stopped by' "$STEP_LOG" | oneline)" \
        "$(grep -E 'skipped:|has no .* yet' "$STEP_LOG" | head -n 2 | oneline)" \
        "$(grep -m1 '^Correctness guard' "$STEP_LOG" | oneline)")
      # time-boxed by design: a run its timeout stopped after writing its tables is STOPPED, not a
      # failure (its key line says where it stopped)
      if [ "${STEP_STATUS#TIMEOUT}" != "$STEP_STATUS" ] && grep -q "^wrote .*bench-$op\.md" "$STEP_LOG"; then
        STEP_STATUS="STOPPED(${share}s share)"
      fi
      case "$STEP_STATUS" in OK|STOPPED*) ;; *) key=$(joinkey "$key" "$(tail -n 2 "$STEP_LOG" | oneline)") ;; esac
      record "bench-$op" "benchmark ($script --quick ${compile[*]})" "$STEP_STATUS" "$STEP_SECS" "$key"
    done
  fi
fi

# ---- 6 report -----------------------------------------------------------------------------
TOTAL=$(( $(date +%s) - START ))
{
  echo "# attnkernels GPU check: $TAG"
  echo
  echo "- GPU: $(info gpu || echo n/a) ($(grep -m1 '^GPU 0' "$ENV_LOG" 2>/dev/null | cut -c1-100))"
  echo "- torch: $(info torch || echo n/a); triton: $(info triton || echo n/a); torchvision: $(info torchvision || echo n/a); python: $(info python || echo n/a)"
  echo "- nvcc: $(grep -m1 -o 'release [0-9.]*, V[0-9.]*' "$ENV_LOG" 2>/dev/null || echo n/a); driver: $(sed -n '/^name, driver_version/{n;p;}' "$ENV_LOG" 2>/dev/null | cut -d, -f2 | tr -d ' ')"
  echo "- date: $(date -Is); git: $(git rev-parse --short HEAD 2>/dev/null || echo n/a)$(git diff --quiet HEAD 2>/dev/null || echo ' (+ uncommitted changes)')"
  echo "- total: ${TOTAL}s of the ${BUDGET_S}s budget; logs: $DIR/"
  echo
  echo "| step | status | time | key line |"
  echo "|---|---|---|---|"
  for i in ${S_ID[@]+"${!S_ID[@]}"}; do
    echo "| ${S_NAME[$i]} | ${S_STATUS[$i]} | ${S_SECS[$i]}s | ${S_KEY[$i]} |"
  done
  echo
  if [ -f "$DIR/03-pytest.log" ] && grep -qE '^(FAILED|ERROR) ' "$DIR/03-pytest.log"; then
    echo "## pytest failures"; echo; echo '```'
    grep -E '^(FAILED|ERROR) ' "$DIR/03-pytest.log" | head -n 40
    echo '```'; echo
  fi
  for tool in memcheck racecheck; do
    if [ -f "$DIR/04-$tool.log" ]; then
      echo "## compute-sanitizer $tool"; echo; echo '```'
      grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|^\[(MISMATCH|ERROR)\]|cases ran|not available|skip\]' "$DIR/04-$tool.log" | head -n 30
      grep -m 10 -E '^========= (Invalid|Race|Error|Program hit)' "$DIR/04-$tool.log"
      echo '```'; echo
    fi
  done
  if [ -f "$DIR/05-host.log" ]; then
    echo "## Host time per call (benchmarks/host_overhead.py)"; echo; echo '```'
    grep -E '^(host time|  )' "$DIR/05-host.log" | head -n 16
    echo '```'; echo
  fi
  if [ -f "$BENCH.md" ]; then
    cat "$BENCH.md"
  else
    echo "## SE benchmark"; echo; echo "not produced (see $DIR/05-bench.log)"
  fi
  for op in cbam bam sca sca_decoder; do
    # the summaries only: each table's detail stays in its own .md (logs directory)
    [ -f "$DIR/bench-$op.md" ] && { echo; awk '/^### Detail/{exit} {print}' "$DIR/bench-$op.md"; }
  done
} > "$REPORT" 2>/dev/null
echo
echo "== report: $REPORT"
awk '/^### Detail/{exit} {print}' "$REPORT"

if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
  cp "$REPORT" "$OUT/$TAG.md" 2>/dev/null
  [ -f "$BENCH.csv" ] && cp "$BENCH.csv" "$OUT/$TAG-bench-se.csv"
  [ -f "$BENCH.png" ] && cp "$BENCH.png" "$OUT/$TAG-bench-se.png"
  [ -f "$DIR/host-overhead.csv" ] && cp "$DIR/host-overhead.csv" "$OUT/$TAG-host-overhead.csv"
  # the other ops' CSVs in one file (the device tool brings back at most 8 files from $OUT)
  for op in cbam bam sca sca_decoder; do
    [ -f "$DIR/bench-$op.csv" ] && { echo "==== bench-$op.csv"; cat "$DIR/bench-$op.csv"; }
  done > "$OUT/$TAG-bench-ops.csv.txt"
  [ -s "$OUT/$TAG-bench-ops.csv.txt" ] || rm -f "$OUT/$TAG-bench-ops.csv.txt"
  # one file of log tails
  for l in 02-build 03-pytest 04-memcheck 04-racecheck 05-host 05-bench 05-bench-cbam 05-bench-bam 05-bench-sca 05-bench-sca_decoder; do
    [ -f "$DIR/$l.log" ] && { echo "==== $l.log (last 400 lines)"; tail -n 400 "$DIR/$l.log"; }
  done > "$OUT/$TAG-logs.txt"
  echo "copied the report, the benchmark CSV/PNG, the host-overhead CSV and the log tails to \$OUT ($(ls "$OUT" | wc -l) files)"
fi

n_ok=0
for s in ${S_STATUS[@]+"${S_STATUS[@]}"}; do [ "$s" = OK ] && n_ok=$((n_ok + 1)); done
echo "gpu-check: $n_ok/${#S_STATUS[@]} steps OK in ${TOTAL}s"
exit "$FAILED"
