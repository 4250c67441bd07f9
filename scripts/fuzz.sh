#!/usr/bin/env bash
# Builds the parser fuzz targets with clang (libFuzzer + ASan + UBSan) in a
# separate build directory and runs each for a number of seconds.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]      (default 60)
#
# MAGMA_FUZZ_BUILD_DIR overrides the build directory (default build-fuzz/),
# MAGMA_JOBS the build parallelism (default 2). Seeds come from
# fuzz/corpus/<parser>/; the growing corpus and any crash inputs stay in the
# build directory. Exits non-zero if a target finds a crash.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${MAGMA_FUZZ_BUILD_DIR:-$ROOT/build-fuzz}"
SECONDS_PER_TARGET="${1:-60}"
PARSERS=(ui_answer trace_answer path_answer dataset_statistics)

CC=clang CXX=clang++ cmake -S "$ROOT" -B "$BUILD_DIR" \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DMAGMA_BUILD_TESTS=OFF -DMAGMA_BUILD_BENCHMARKS=OFF \
  -DMAGMA_BUILD_FUZZERS=ON -DMAGMA_SANITIZE=ON \
  -DCMAKE_CXX_FLAGS="-fsanitize=fuzzer-no-link -fno-sanitize-recover=all" >/dev/null
targets=()
for p in "${PARSERS[@]}"; do targets+=("fuzz_$p"); done
cmake --build "$BUILD_DIR" -j "${MAGMA_JOBS:-2}" --target "${targets[@]}"

status=0
for p in "${PARSERS[@]}"; do
  corpus="$BUILD_DIR/fuzz-corpus/$p"
  artifacts="$BUILD_DIR/fuzz-artifacts/$p/"
  mkdir -p "$corpus" "$artifacts"
  log="$BUILD_DIR/fuzz-$p.log"
  set +e
  "$BUILD_DIR/fuzz/fuzz_$p" -max_total_time="$SECONDS_PER_TARGET" -print_final_stats=1 \
    -artifact_prefix="$artifacts" "$corpus" "$ROOT/fuzz/corpus/$p" >"$log" 2>&1
  rc=$?
  set -e
  execs=$(grep -m1 'stat::number_of_executed_units' "$log" | awk '{print $2}' || true)
  if [[ $rc -ne 0 ]]; then
    status=1
    echo "fuzz_$p: FAILED (exit $rc) after ${execs:-?} executions; see $log and $artifacts"
  else
    echo "fuzz_$p: ${execs:-?} executions in ${SECONDS_PER_TARGET} s, no crash"
  fi
done
exit $status
