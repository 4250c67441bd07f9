#!/usr/bin/env bash
# Installs what magma-serve needs on Debian 12 and builds it into build/.
# Idempotent: a second run with nothing to do takes seconds.
#
#   scripts/setup.sh            # Release build with tests
#   MAGMA_BUILD_DIR=out scripts/setup.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${MAGMA_BUILD_DIR:-$ROOT/build}"
JOBS="${MAGMA_JOBS:-2}"

PACKAGES=(
  build-essential cmake ccache pkg-config
  libtorch-dev libopenblas0-openmp
  libopencv-dev
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler grpc-proto libabsl-dev
  libspdlog-dev nlohmann-json3-dev
  libsentencepiece-dev sentencepiece libpcre2-dev
  libcpp-httplib-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  python3-grpcio python3-numpy
)

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# libtorch's fp32 matmul goes through the system BLAS; make sure it is OpenBLAS
# (reference BLAS is ~15x slower).
if [ -e /usr/lib/x86_64-linux-gnu/openblas-openmp/libblas.so.3 ]; then
  current="$(readlink -f /usr/lib/x86_64-linux-gnu/libblas.so.3 || true)"
  case "$current" in
    *openblas*) ;;
    *) $SUDO update-alternatives --set libblas.so.3-x86_64-linux-gnu \
         /usr/lib/x86_64-linux-gnu/openblas-openmp/libblas.so.3 >/dev/null ;;
  esac
fi

export CCACHE_DIR="${CCACHE_DIR:-$HOME/.cache/ccache}"
if [ ! -f "$BUILD_DIR/CMakeCache.txt" ]; then
  cmake -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DMAGMA_BUILD_TESTS=ON \
    -DCMAKE_CXX_COMPILER_LAUNCHER=ccache >/dev/null
fi
cmake --build "$BUILD_DIR" -j "$JOBS"
