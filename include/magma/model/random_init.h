// Random Magma-layout checkpoints for tests, benchmarks and scale tests:
// config.json, preprocessor_config.json, safetensors shards with an index,
// exactly as a Hugging Face Magma directory is laid out.
#ifndef MAGMA_MODEL_RANDOM_INIT_H_
#define MAGMA_MODEL_RANDOM_INIT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace magma::model {

struct Preset {
  std::string name;
  // Vision tower (ConvNeXt).
  std::vector<int64_t> vision_depths;
  std::vector<int64_t> vision_dims;
  // The stem's kernel and stride; with the stages' halvings, feature rows
  // must come out 32 pixels apart (4 with four stages, 2 with five).
  int64_t stem_patch = 4;
  int64_t img_size = 512;   // crop side
  int64_t max_crops = 4;
  // ConvNeXt layer scale (gamma): 0 = near 1 (uniform 0.9..1.1, a tower
  // whose blocks all contribute, for benchmarks); > 0 = this value (timm's
  // 1e-6 for training from scratch: blocks start as identities and the
  // tower's output stays at the scale of the token embeddings).
  double layer_scale_init = 0;
  // Llama decoder.
  int64_t hidden = 0, layers = 0, heads = 0, kv_heads = 0, intermediate = 0, vocab = 0;
  int64_t max_positions = 4096;
  double rope_theta = 500000.0;
  int64_t image_token_index = 0;
  // Storage dtype of the weights: "F32" or "BF16".
  std::string storage_dtype = "BF16";
  // Shard size limit in bytes.
  int64_t max_shard_bytes = int64_t{2} << 30;
  // Also write a small byte-level BPE tokenizer (the caller brings its own
  // otherwise).
  bool write_tokenizer = true;
};

// "tiny", "small", "1b" or "8b"; INVALID_ARGUMENT listing them otherwise.
absl::StatusOr<Preset> GetPreset(const std::string& name);

// Writes a random model of `preset` into `dir` (created if needed). Weights
// are N(0, 1/sqrt(fan_in)) for matrices, norms and layer scales near 1,
// generated tensor by tensor so that memory stays small for any size.
absl::Status WriteRandomModel(const Preset& preset, uint64_t seed, const std::string& dir);

}  // namespace magma::model

#endif  // MAGMA_MODEL_RANDOM_INIT_H_
