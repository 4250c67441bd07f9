#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh) and runs magma-serve with
# configs/default.textproto. Extra arguments go to magma-serve, e.g.
#   scripts/serve.sh --listen 0.0.0.0:50051 --log_level debug
# magma-serve runs in the repository's root: relative paths in the extra
# arguments are taken from there. MAGMA_BUILD_DIR, as for setup.sh, is taken
# from the current directory.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="$(realpath -m "${MAGMA_BUILD_DIR:-$ROOT/build}")"
export MAGMA_BUILD_DIR="$BUILD_DIR"
"$ROOT/scripts/setup.sh"
cd "$ROOT"
MODEL_DIR="models/magma-tiny"
if [ ! -f "$MODEL_DIR/config.json" ]; then
  # No trained checkpoint in this tree: serve a randomly initialised model of
  # the same architecture so that the whole path can be exercised.
  MODEL_DIR="$BUILD_DIR/models/random-tiny"
  if [ ! -f "$MODEL_DIR/tokenizer.json" ]; then
    "$BUILD_DIR/src/tools/magma-cli" init --preset tiny --seed 0 --out "$MODEL_DIR" --overwrite
  fi
  echo "serve: models/magma-tiny not found; serving random weights from $MODEL_DIR" >&2
  exec "$BUILD_DIR/src/tools/magma-serve" --config configs/default.textproto --model_dir "$MODEL_DIR" "$@"
fi
exec "$BUILD_DIR/src/tools/magma-serve" --config configs/default.textproto "$@"
