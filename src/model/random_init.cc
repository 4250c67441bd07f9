#include "magma/model/random_init.h"

#include <cmath>
#include <filesystem>
#include <fstream>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "magma/tokenizer/bpe_trainer.h"
#include "magma/tokenizer/chat.h"

namespace magma::model {
namespace {

using nlohmann::json;

struct Spec {
  std::string name;
  std::vector<int64_t> shape;
  enum Kind { kMatrix, kBias, kScale, kLayerScale, kEmbed, kRowSep } kind;
  int64_t fan_in = 1;
};

std::vector<Spec> Plan(const Preset& p) {
  std::vector<Spec> specs;
  const std::string trunk = "vision_tower.clip_vision_model.trunk.";
  const auto& d = p.vision_dims;
  const int64_t k = p.stem_patch;
  specs.push_back({trunk + "stem.0.weight", {d[0], 3, k, k}, Spec::kMatrix, 3 * k * k});
  specs.push_back({trunk + "stem.0.bias", {d[0]}, Spec::kBias});
  specs.push_back({trunk + "stem.1.weight", {d[0]}, Spec::kScale});
  specs.push_back({trunk + "stem.1.bias", {d[0]}, Spec::kBias});
  for (size_t s = 0; s < d.size(); ++s) {
    const std::string st = absl::StrCat(trunk, "stages.", s, ".");
    if (s > 0) {
      specs.push_back({st + "downsample.0.weight", {d[s - 1]}, Spec::kScale});
      specs.push_back({st + "downsample.0.bias", {d[s - 1]}, Spec::kBias});
      specs.push_back({st + "downsample.1.weight", {d[s], d[s - 1], 2, 2}, Spec::kMatrix, d[s - 1] * 4});
      specs.push_back({st + "downsample.1.bias", {d[s]}, Spec::kBias});
    }
    for (int64_t j = 0; j < p.vision_depths[s]; ++j) {
      const std::string b = absl::StrCat(st, "blocks.", j, ".");
      specs.push_back({b + "gamma", {d[s]}, Spec::kLayerScale});
      specs.push_back({b + "conv_dw.weight", {d[s], 1, 7, 7}, Spec::kMatrix, 49});
      specs.push_back({b + "conv_dw.bias", {d[s]}, Spec::kBias});
      specs.push_back({b + "norm.weight", {d[s]}, Spec::kScale});
      specs.push_back({b + "norm.bias", {d[s]}, Spec::kBias});
      specs.push_back({b + "mlp.fc1.weight", {4 * d[s], d[s]}, Spec::kMatrix, d[s]});
      specs.push_back({b + "mlp.fc1.bias", {4 * d[s]}, Spec::kBias});
      specs.push_back({b + "mlp.fc2.weight", {d[s], 4 * d[s]}, Spec::kMatrix, 4 * d[s]});
      specs.push_back({b + "mlp.fc2.bias", {d[s]}, Spec::kBias});
    }
  }
  const int64_t h = p.hidden, hd = p.hidden / p.heads;
  specs.push_back({"multi_modal_projector.proj.0.weight", {h, d.back()}, Spec::kMatrix, d.back()});
  specs.push_back({"multi_modal_projector.proj.0.bias", {h}, Spec::kBias});
  specs.push_back({"multi_modal_projector.proj.2.weight", {h, h}, Spec::kMatrix, h});
  specs.push_back({"multi_modal_projector.proj.2.bias", {h}, Spec::kBias});
  specs.push_back({"multi_modal_projector.row_seperator", {1, 1, h}, Spec::kRowSep});
  const std::string lm = "language_model.model.";
  specs.push_back({lm + "embed_tokens.weight", {p.vocab, h}, Spec::kEmbed});
  for (int64_t i = 0; i < p.layers; ++i) {
    const std::string l = absl::StrCat(lm, "layers.", i, ".");
    specs.push_back({l + "self_attn.q_proj.weight", {p.heads * hd, h}, Spec::kMatrix, h});
    specs.push_back({l + "self_attn.k_proj.weight", {p.kv_heads * hd, h}, Spec::kMatrix, h});
    specs.push_back({l + "self_attn.v_proj.weight", {p.kv_heads * hd, h}, Spec::kMatrix, h});
    specs.push_back({l + "self_attn.o_proj.weight", {h, p.heads * hd}, Spec::kMatrix, p.heads * hd});
    specs.push_back({l + "mlp.gate_proj.weight", {p.intermediate, h}, Spec::kMatrix, h});
    specs.push_back({l + "mlp.up_proj.weight", {p.intermediate, h}, Spec::kMatrix, h});
    specs.push_back({l + "mlp.down_proj.weight", {h, p.intermediate}, Spec::kMatrix, p.intermediate});
    specs.push_back({l + "input_layernorm.weight", {h}, Spec::kScale});
    specs.push_back({l + "post_attention_layernorm.weight", {h}, Spec::kScale});
  }
  specs.push_back({lm + "norm.weight", {h}, Spec::kScale});
  specs.push_back({"language_model.lm_head.weight", {p.vocab, h}, Spec::kMatrix, h});
  return specs;
}

json TextConfigJson(const Preset& p) {
  return {{"architectures", {"LlamaForCausalLM"}},
          {"model_type", "llama"},
          {"hidden_size", p.hidden},
          {"num_hidden_layers", p.layers},
          {"num_attention_heads", p.heads},
          {"num_key_value_heads", p.kv_heads},
          {"intermediate_size", p.intermediate},
          {"vocab_size", p.vocab},
          {"max_position_embeddings", p.max_positions},
          {"rms_norm_eps", 1e-5},
          {"rope_theta", p.rope_theta},
          {"rope_scaling", nullptr},
          {"hidden_act", "silu"},
          {"attention_bias", false},
          {"mlp_bias", false},
          {"tie_word_embeddings", false},
          {"bos_token_id", 1},
          {"eos_token_id", 2},
          {"pad_token_id", 0},
          {"torch_dtype", p.storage_dtype == "F32" ? "float32" : "bfloat16"}};
}

// A byte-level BPE learned on the task prompts and a little English, with
// the Llama-3 chat tokens and <image> at the top of the model's id space.
absl::Status WriteSmallTokenizer(const Preset& p, const std::string& dir) {
  namespace tk = magma::tokenizer;
  std::vector<std::string> corpus = {
      tk::kMagmaSystemPrompt,
      "In this view I need to click a button to \"open the settings\"? Provide the coordinates and the mark index "
      "of the containing bounding box if applicable.",
      "What action should the robot take to put the red block on the blue plate?",
      "The image is split into 256x256 grids and is labeled with numeric marks [1, 2, ...].",
      "The robot is doing: pick up the cup. To finish the task, how to move the numerical marks in the image with "
      "speed 8 for the next 16 steps?",
      "Answer the question briefly. What color is the circle? The circle is red. How many buttons are there? Three.",
      "Mark: 3. Mark 3 at [120,45], Mark 7 at [20,200] should be moved, and their future positions are:",
      "the quick brown fox jumps over the lazy dog while the robot arm moves the green cube to the left of the bowl",
      "<ans>[(0.25, 0.32), (0.32, 0.17), <action>Close Gripper</action>, (0.74, 0.21)]</ans>",
      "Yes. No. Open Settings. Click the OK button. Search for files. Submit the form. Cancel."};
  const int32_t merges = static_cast<int32_t>(std::min<int64_t>(600, p.vocab - 256 - 16));
  tk::BpeTrainOptions options;
  options.num_merges = std::max(0, merges);
  options.added_tokens = tk::Llama3StyleAddedTokens(static_cast<int32_t>(p.vocab), static_cast<int32_t>(p.image_token_index));
  return tk::TrainByteLevelBpe(corpus, options, dir);
}

}  // namespace

absl::StatusOr<Preset> GetPreset(const std::string& name) {
  Preset p;
  p.name = name;
  if (name == "tiny") {
    p.vision_depths = {1, 1, 2, 1};
    p.vision_dims = {16, 32, 64, 128};
    p.img_size = 64;
    p.hidden = 64, p.layers = 2, p.heads = 4, p.kv_heads = 2, p.intermediate = 128, p.vocab = 512;
    p.max_positions = 2048;
    p.storage_dtype = "F32";
    p.max_shard_bytes = 512 << 10;  // several shards even for a tiny model
  } else if (name == "small") {
    p.vision_depths = {2, 2, 6, 2};
    p.vision_dims = {96, 192, 384, 768};
    p.hidden = 1024, p.layers = 8, p.heads = 16, p.kv_heads = 4, p.intermediate = 4096, p.vocab = 32000;
  } else if (name == "1b") {
    p.vision_depths = {3, 3, 9, 3};
    p.vision_dims = {128, 256, 512, 1024};
    p.hidden = 2048, p.layers = 16, p.heads = 32, p.kv_heads = 8, p.intermediate = 8192, p.vocab = 32000;
  } else if (name == "8b") {
    p.vision_depths = {3, 4, 30, 3};
    p.vision_dims = {384, 768, 1536, 3072};
    p.hidden = 4096, p.layers = 32, p.heads = 32, p.kv_heads = 8, p.intermediate = 14336, p.vocab = 128320;
    p.max_positions = 8192;
    p.max_shard_bytes = int64_t{5} << 30;
  } else {
    return absl::InvalidArgumentError(absl::StrCat("unknown preset '", name, "': expected tiny, small, 1b or 8b"));
  }
  p.image_token_index = p.vocab - 1;
  return p;
}

absl::Status WriteRandomModel(const Preset& p, uint64_t seed, const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return absl::PermissionDeniedError(absl::StrCat("cannot create ", dir, ": ", ec.message()));
  const bool f32 = p.storage_dtype == "F32";
  const int64_t elem = f32 ? 4 : 2;

  json config = TextConfigJson(p);
  config["architectures"] = {"MagmaForCausalLM"};
  config["model_type"] = "magma";
  config["image_token_index"] = p.image_token_index;
  config["text_config"] = TextConfigJson(p);
  config["vision_config"] = {{"vision_backbone", "convnextxxlarge"},
                             {"img_anyres_strategy", "crop"},
                             {"vision_feature_layer", "clip_vis_dense"},
                             {"mm_projector_type", "mlp2x_gelu"},
                             {"mm_hidden_size", p.vision_dims.back()},
                             {"hidden_size", p.hidden},
                             {"img_size", p.img_size},
                             {"max_num_crops", p.max_crops},
                             {"mm_use_im_start_end", false},
                             {"mm_use_row_seperator", true}};
  std::ofstream(fs::path(dir) / "config.json") << config.dump(2) << "\n";
  json pre = {{"image_processor_type", "MagmaImageProcessor"},
              {"anyres_strategy", "crop"},
              {"base_img_size", p.img_size},
              {"num_crops", p.max_crops},
              {"do_convert_rgb", true},
              {"image_mean", {0.48145466, 0.4578275, 0.40821073}},
              {"image_std", {0.26862954, 0.26130258, 0.27577711}}};
  std::ofstream(fs::path(dir) / "preprocessor_config.json") << pre.dump(2) << "\n";

  // Assign tensors to shards by size.
  std::vector<Spec> specs = Plan(p);
  std::vector<std::vector<const Spec*>> shards(1);
  int64_t shard_bytes = 0, total_bytes = 0;
  for (const Spec& s : specs) {
    int64_t n = elem;
    for (int64_t d : s.shape) n *= d;
    if (shard_bytes > 0 && shard_bytes + n > p.max_shard_bytes) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().push_back(&s);
    shard_bytes += n;
    total_bytes += n;
  }
  c10::InferenceMode guard;
  at::Generator gen = at::detail::createCPUGenerator(seed);
  json weight_map = json::object();
  for (size_t si = 0; si < shards.size(); ++si) {
    const std::string file = absl::StrFormat("model-%05d-of-%05d.safetensors", si + 1, shards.size());
    json header = json::object();
    header["__metadata__"] = {{"format", "pt"}};
    int64_t offset = 0;
    for (const Spec* s : shards[si]) {
      int64_t n = elem;
      for (int64_t d : s->shape) n *= d;
      header[s->name] = {{"dtype", p.storage_dtype}, {"shape", s->shape}, {"data_offsets", {offset, offset + n}}};
      offset += n;
      weight_map[s->name] = file;
    }
    std::string text = header.dump();
    text.append((8 - text.size() % 8) % 8, ' ');
    std::ofstream out(fs::path(dir) / file, std::ios::binary | std::ios::trunc);
    const uint64_t len = text.size();
    out.write(reinterpret_cast<const char*>(&len), 8);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    // Data in the order the offsets were assigned.
    for (const Spec* s : shards[si]) {
      at::Tensor t;
      switch (s->kind) {
        case Spec::kMatrix:
          t = at::normal(0.0, 1.0 / std::sqrt(static_cast<double>(s->fan_in)), s->shape, gen);
          break;
        case Spec::kBias:
          t = at::normal(0.0, 0.02, s->shape, gen);
          break;
        case Spec::kScale:
          t = at::empty(s->shape, at::kFloat).uniform_(0.9, 1.1, gen);
          break;
        case Spec::kLayerScale:
          t = p.layer_scale_init > 0 ? at::full(s->shape, p.layer_scale_init, at::kFloat)
                                     : at::empty(s->shape, at::kFloat).uniform_(0.9, 1.1, gen);
          break;
        case Spec::kEmbed:
          t = at::normal(0.0, 1.0, s->shape, gen);
          break;
        case Spec::kRowSep:
          t = at::normal(0.0, 0.5, s->shape, gen);
          break;
      }
      t = t.to(f32 ? at::kFloat : at::kBFloat16).contiguous();
      out.write(static_cast<const char*>(t.data_ptr()), static_cast<std::streamsize>(t.numel() * elem));
    }
    if (!out) return absl::DataLossError(absl::StrCat("writing ", file, " failed"));
  }
  json index = {{"metadata", {{"total_size", total_bytes}}}, {"weight_map", weight_map}};
  std::ofstream(fs::path(dir) / "model.safetensors.index.json") << index.dump(2) << "\n";
  return p.write_tokenizer ? WriteSmallTokenizer(p, dir) : absl::OkStatus();
}

}  // namespace magma::model
