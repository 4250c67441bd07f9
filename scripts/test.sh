#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh) and runs the whole test suite.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${MAGMA_BUILD_DIR:-$ROOT/build}"
start=$(date +%s)
"$ROOT/scripts/setup.sh"
cd "$BUILD_DIR"
ctest --output-on-failure -j "${MAGMA_JOBS:-2}" --timeout 900
echo "test.sh: setup, build and tests took $(( $(date +%s) - start )) s"
