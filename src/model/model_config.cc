#include "magma/model/model_config.h"

#include <filesystem>
#include <fstream>
#include <iterator>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "magma/util/file.h"

namespace magma::model {
namespace {

using nlohmann::json;

absl::Status Missing(const std::string& file, const std::string& field, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(file, ": ", field, " ", what));
}

// Reads an integer field; `required` turns absence into an error.
absl::Status GetInt(const json& obj, const std::string& prefix, const char* key, bool required,
                    int64_t* out) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) {
    return required ? Missing("config.json", prefix + key, "is required") : absl::OkStatus();
  }
  if (!it->is_number_integer()) return Missing("config.json", prefix + key, "must be an integer");
  *out = it->get<int64_t>();
  return absl::OkStatus();
}

absl::Status GetDouble(const json& obj, const std::string& prefix, const char* key, double* out) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_number()) return Missing("config.json", prefix + key, "must be a number");
  *out = it->get<double>();
  return absl::OkStatus();
}

std::string GetString(const json& obj, const char* key, const std::string& fallback) {
  auto it = obj.find(key);
  return (it != obj.end() && it->is_string()) ? it->get<std::string>() : fallback;
}

#define MAGMA_RETURN_IF_ERROR(expr)      \
  do {                                   \
    absl::Status _s = (expr);            \
    if (!_s.ok()) return _s;             \
  } while (0)

}  // namespace

absl::StatusOr<ModelConfig> ParseModelConfig(const std::string& config_json,
                                             const std::string& preprocessor_json) {
  json root = json::parse(config_json, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded() || !root.is_object()) {
    return absl::InvalidArgumentError("config.json: not a JSON object");
  }
  ModelConfig c;
  if (auto it = root.find("architectures"); it != root.end() && it->is_array() && !it->empty() &&
                                            (*it)[0].is_string()) {
    c.architecture = (*it)[0].get<std::string>();
  } else {
    c.architecture = "MagmaForCausalLM";
  }
  MAGMA_RETURN_IF_ERROR(GetInt(root, "", "image_token_index", true, &c.image_token_index));

  // text_config holds the Llama fields; the top-level copies are the fallback.
  const json* text = &root;
  std::string prefix;
  if (auto it = root.find("text_config"); it != root.end() && it->is_object()) {
    text = &*it;
    prefix = "text_config.";
  }
  TextConfig& t = c.text;
  MAGMA_RETURN_IF_ERROR(GetInt(*text, prefix, "hidden_size", true, &t.hidden_size));
  MAGMA_RETURN_IF_ERROR(GetInt(*text, prefix, "num_hidden_layers", true, &t.num_layers));
  MAGMA_RETURN_IF_ERROR(GetInt(*text, prefix, "num_attention_heads", true, &t.num_heads));
  t.num_kv_heads = t.num_heads;
  MAGMA_RETURN_IF_ERROR(GetInt(*text, prefix, "num_key_value_heads", false, &t.num_kv_heads));
  MAGMA_RETURN_IF_ERROR(GetInt(*text, prefix, "intermediate_size", true, &t.intermediate_size));
  MAGMA_RETURN_IF_ERROR(GetInt(*text, prefix, "vocab_size", true, &t.vocab_size));
  t.max_position_embeddings = 2048;
  MAGMA_RETURN_IF_ERROR(GetInt(*text, prefix, "max_position_embeddings", false, &t.max_position_embeddings));
  MAGMA_RETURN_IF_ERROR(GetDouble(*text, prefix, "rms_norm_eps", &t.rms_norm_eps));
  MAGMA_RETURN_IF_ERROR(GetDouble(*text, prefix, "rope_theta", &t.rope_theta));
  if (t.num_heads <= 0 || t.hidden_size <= 0 || t.num_layers <= 0 || t.intermediate_size <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.json: ", prefix, "{hidden_size, num_hidden_layers, num_attention_heads, "
                     "intermediate_size} must be positive"));
  }
  t.head_dim = t.hidden_size / t.num_heads;
  MAGMA_RETURN_IF_ERROR(GetInt(*text, prefix, "head_dim", false, &t.head_dim));
  // RoPE rotates pairs of a head's channels; positions index its tables.
  if (t.head_dim <= 0 || t.head_dim % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("config.json: ", prefix, "head_dim (", t.head_dim,
                                                   ", or hidden_size / num_attention_heads) ",
                                                   "must be positive and even"));
  }
  if (t.max_position_embeddings < 1 || t.max_position_embeddings > (int64_t{1} << 24)) {
    return absl::InvalidArgumentError(absl::StrCat("config.json: ", prefix, "max_position_embeddings (",
                                                   t.max_position_embeddings, ") must be in 1..16777216"));
  }
  if (!(t.rope_theta > 0) || !(t.rms_norm_eps >= 0)) {
    return absl::InvalidArgumentError(absl::StrCat("config.json: ", prefix, "rope_theta (", t.rope_theta,
                                                   ") must be positive and rms_norm_eps (", t.rms_norm_eps,
                                                   ") non-negative"));
  }
  if (t.num_kv_heads <= 0 || t.num_heads % t.num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("config.json: ", prefix, "num_attention_heads (", t.num_heads,
                                                   ") must be a multiple of num_key_value_heads (",
                                                   t.num_kv_heads, ")"));
  }
  if (auto it = text->find("rope_scaling"); it != text->end() && !it->is_null()) {
    return absl::UnimplementedError(absl::StrCat("config.json: ", prefix, "rope_scaling is not supported"));
  }
  MAGMA_RETURN_IF_ERROR(GetInt(*text, prefix, "bos_token_id", false, &t.bos_token_id));
  MAGMA_RETURN_IF_ERROR(GetInt(*text, prefix, "pad_token_id", false, &t.pad_token_id));
  if (auto it = text->find("eos_token_id"); it != text->end()) {
    if (it->is_number_integer()) t.eos_token_id = it->get<int64_t>();
    if (it->is_array() && !it->empty() && (*it)[0].is_number_integer()) t.eos_token_id = (*it)[0].get<int64_t>();
  }

  auto vit = root.find("vision_config");
  if (vit == root.end() || !vit->is_object()) return Missing("config.json", "vision_config", "is required");
  const json& v = *vit;
  c.vision.backbone = GetString(v, "vision_backbone", "convnextxxlarge");
  c.vision.anyres_strategy = GetString(v, "img_anyres_strategy", "crop");
  c.vision.feature_layer = GetString(v, "vision_feature_layer", "clip_vis_dense");
  c.vision.projector_type = GetString(v, "mm_projector_type", "mlp2x_gelu");
  MAGMA_RETURN_IF_ERROR(GetInt(v, "vision_config.", "mm_hidden_size", true, &c.vision.mm_hidden_size));
  if (auto it = v.find("mm_use_im_start_end"); it != v.end() && it->is_boolean()) {
    c.vision.use_im_start_end = it->get<bool>();
  }
  if (c.vision.anyres_strategy != "crop" && c.vision.anyres_strategy != "global") {
    return absl::InvalidArgumentError(absl::StrCat("config.json: vision_config.img_anyres_strategy must be "
                                                   "\"crop\" or \"global\" (got \"",
                                                   c.vision.anyres_strategy, "\")"));
  }
  if (c.vision.projector_type != "mlp2x_gelu") {
    return absl::UnimplementedError(absl::StrCat("config.json: vision_config.mm_projector_type \"",
                                                 c.vision.projector_type, "\" is not supported (mlp2x_gelu)"));
  }
  if (c.vision.feature_layer != "clip_vis_dense") {
    return absl::UnimplementedError(absl::StrCat("config.json: vision_config.vision_feature_layer \"",
                                                 c.vision.feature_layer,
                                                 "\" is not supported (clip_vis_dense)"));
  }
  // Top-level switch of the reference prompt builder: "<image>" becomes
  // "<image_start><image><image_end>" in the prompt text.
  if (auto it = root.find("mm_use_image_start_end"); it != root.end() && it->is_boolean()) {
    c.use_image_start_end = it->get<bool>();
  }
  // Defaults for the preprocessor from the vision config's training keys.
  PreprocessConfig& p = c.preprocess;
  MAGMA_RETURN_IF_ERROR(GetInt(v, "vision_config.", "img_size", false, &p.base_img_size));
  MAGMA_RETURN_IF_ERROR(GetInt(v, "vision_config.", "max_num_crops", false, &p.num_crops));
  // Where each preprocessing size comes from, for the messages below.
  std::string size_source = "config.json: vision_config.img_size";
  if (p.base_img_size <= 0) return absl::InvalidArgumentError(absl::StrCat(size_source, " must be positive"));
  if (p.num_crops <= 0) {
    return absl::InvalidArgumentError("config.json: vision_config.max_num_crops must be positive");
  }

  if (!preprocessor_json.empty()) {
    json pp = json::parse(preprocessor_json, nullptr, /*allow_exceptions=*/false);
    if (pp.is_discarded() || !pp.is_object()) {
      return absl::InvalidArgumentError("preprocessor_config.json: not a JSON object");
    }
    for (const char* key : {"image_mean", "image_std"}) {
      auto it = pp.find(key);
      if (it == pp.end()) continue;
      if (!it->is_array() || it->size() != 3) {
        return Missing("preprocessor_config.json", key, "must be a list of 3 numbers");
      }
      auto& dst = std::string(key) == "image_mean" ? p.mean : p.std;
      for (int i = 0; i < 3; ++i) {
        if (!(*it)[i].is_number()) return Missing("preprocessor_config.json", key, "must be a list of 3 numbers");
        dst[i] = (*it)[i].get<float>();
      }
    }
    for (const char* key : {"base_img_size", "num_crops"}) {
      auto it = pp.find(key);
      if (it == pp.end()) continue;
      if (!it->is_number_integer() || it->get<int64_t>() <= 0) {
        return Missing("preprocessor_config.json", key, "must be a positive integer");
      }
      (std::string(key) == "base_img_size" ? p.base_img_size : p.num_crops) = it->get<int64_t>();
      if (std::string(key) == "base_img_size") size_source = "preprocessor_config.json: base_img_size";
    }
  }
  for (float s : p.std) {
    if (!(s > 0)) return Missing("preprocessor_config.json", "image_std", "must be positive");
  }
  if (p.base_img_size % 32 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(size_source, " (", p.base_img_size, ") must be a multiple of 32 (the tower stride)"));
  }
  return c;
}

vision::AnyresOptions AnyresOptionsOf(const PreprocessConfig& p) {
  vision::AnyresOptions o;
  o.mean = p.mean;
  o.std = p.std;
  o.base = static_cast<int>(p.base_img_size);
  o.max_crops = static_cast<int>(p.num_crops);
  return o;
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& dir) {
  namespace fs = std::filesystem;
  auto config = util::ReadFile((fs::path(dir) / "config.json").string(), "config.json");
  if (!config.ok()) {
    return absl::NotFoundError(absl::StrCat("no readable config.json in model directory '", dir, "'"));
  }
  // No preprocessor_config.json: the defaults; one that cannot be read: an error.
  std::string preprocessor;
  auto pre = util::ReadFile((fs::path(dir) / "preprocessor_config.json").string(), "preprocessor_config.json");
  if (pre.ok()) {
    preprocessor = *std::move(pre);
  } else if (pre.status().code() != absl::StatusCode::kNotFound) {
    return pre.status();
  }
  return ParseModelConfig(*config, preprocessor);
}

}  // namespace magma::model
