// The checkpoint's description of itself: config.json (Magma layout: text
// fields copied to the top level, `text_config`, `vision_config`) and
// preprocessor_config.json. Plain data, no libtorch.
#ifndef MAGMA_MODEL_MODEL_CONFIG_H_
#define MAGMA_MODEL_MODEL_CONFIG_H_

#include <array>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "magma/vision/image.h"

namespace magma::model {

// Llama decoder hyper-parameters (text_config).
struct TextConfig {
  int64_t hidden_size = 0;
  int64_t num_layers = 0;         // num_hidden_layers
  int64_t num_heads = 0;          // num_attention_heads
  int64_t num_kv_heads = 0;       // num_key_value_heads (defaults to num_heads)
  int64_t head_dim = 0;           // head_dim, else hidden_size / num_heads
  int64_t intermediate_size = 0;
  int64_t vocab_size = 0;         // from the config; the embedding tensor is authoritative
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  int64_t bos_token_id = -1;
  int64_t eos_token_id = -1;
  int64_t pad_token_id = -1;
};

// Vision side (vision_config).
struct VisionConfig {
  std::string backbone;           // vision_backbone, e.g. "convnextxxlarge"
  std::string anyres_strategy;    // img_anyres_strategy: "crop" or "global"
  std::string feature_layer;      // vision_feature_layer: "clip_vis_dense"
  std::string projector_type;     // mm_projector_type: "mlp2x_gelu"
  int64_t mm_hidden_size = 0;     // vision feature channels
  bool use_im_start_end = false;  // mm_use_im_start_end (creates unused separators in the reference)
};

// Image preprocessing (preprocessor_config.json).
struct PreprocessConfig {
  std::array<float, 3> mean = {0.48145466f, 0.4578275f, 0.40821073f};
  std::array<float, 3> std = {0.26862954f, 0.26130258f, 0.27577711f};
  int64_t base_img_size = 512;    // side of one crop, pixels
  int64_t num_crops = 4;          // most crops per image
};

struct ModelConfig {
  std::string architecture;       // architectures[0]
  int64_t image_token_index = -1;
  // mm_use_image_start_end: the prompt wraps each image token in
  // <image_start> ... <image_end>. Default false.
  bool use_image_start_end = false;
  TextConfig text;
  VisionConfig vision;
  PreprocessConfig preprocess;
};

// The any-res preprocessing options of a checkpoint (crop size, crop count,
// mean and std): what every caller of vision::PreprocessAnyres must use.
vision::AnyresOptions AnyresOptionsOf(const PreprocessConfig& preprocess);

// Reads dir/config.json and dir/preprocessor_config.json. A missing required
// field gives INVALID_ARGUMENT naming the file and the field (e.g.
// "config.json: text_config.hidden_size is required"). A missing
// preprocessor_config.json falls back to the vision_config's img_size and
// max_num_crops with CLIP statistics.
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& dir);

// Parses the two JSON documents (the preprocessor one may be empty).
absl::StatusOr<ModelConfig> ParseModelConfig(const std::string& config_json,
                                             const std::string& preprocessor_json);

}  // namespace magma::model

#endif  // MAGMA_MODEL_MODEL_CONFIG_H_
