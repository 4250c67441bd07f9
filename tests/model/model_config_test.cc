#include "magma/model/model_config.h"

#include <fstream>
#include <functional>
#include <iterator>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace magma::model {
namespace {

const std::string kGolden = std::string(MAGMA_TEST_DATA_DIR) + "/magma-tiny-a";

std::string Read(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

TEST(ModelConfigTest, ReadsGoldenConfig) {
  auto c = LoadModelConfig(kGolden);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->architecture, "MagmaForCausalLM");
  EXPECT_EQ(c->image_token_index, 511);
  EXPECT_EQ(c->text.hidden_size, 64);
  EXPECT_EQ(c->text.num_layers, 2);
  EXPECT_EQ(c->text.num_heads, 4);
  EXPECT_EQ(c->text.num_kv_heads, 2);
  EXPECT_EQ(c->text.head_dim, 16);
  EXPECT_EQ(c->text.intermediate_size, 128);
  EXPECT_DOUBLE_EQ(c->text.rope_theta, 500000.0);
  EXPECT_DOUBLE_EQ(c->text.rms_norm_eps, 1e-5);
  EXPECT_EQ(c->vision.mm_hidden_size, 128);
  EXPECT_EQ(c->vision.anyres_strategy, "crop");
  EXPECT_EQ(c->preprocess.base_img_size, 64);
  EXPECT_EQ(c->preprocess.num_crops, 4);
  EXPECT_FLOAT_EQ(c->preprocess.mean[0], 0.48145466f);
}

class MissingFieldTest : public ::testing::TestWithParam<std::pair<std::string, std::string>> {};

TEST_P(MissingFieldTest, ErrorNamesTheField) {
  nlohmann::json j = nlohmann::json::parse(Read(kGolden + "/config.json"));
  const auto& [section, key] = GetParam();
  if (section.empty()) {
    j.erase(key);
  } else {
    j[section].erase(key);
  }
  auto c = ParseModelConfig(j.dump(), "");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  const std::string field = section.empty() ? key : section + "." + key;
  EXPECT_NE(c.status().message().find(field), std::string::npos) << c.status();
  EXPECT_NE(c.status().message().find("config.json"), std::string::npos) << c.status();
}

INSTANTIATE_TEST_SUITE_P(Fields, MissingFieldTest,
                         ::testing::Values(std::make_pair("text_config", "hidden_size"),
                                           std::make_pair("text_config", "num_hidden_layers"),
                                           std::make_pair("text_config", "num_attention_heads"),
                                           std::make_pair("text_config", "intermediate_size"),
                                           std::make_pair("text_config", "vocab_size"),
                                           std::make_pair("vision_config", "mm_hidden_size"),
                                           std::make_pair(std::string(), "image_token_index"),
                                           std::make_pair(std::string(), "vision_config")));

TEST(ModelConfigTest, BadPreprocessorValuesAreNamed) {
  const std::string config = Read(kGolden + "/config.json");
  auto c = ParseModelConfig(config, R"({"image_mean":[0.5,0.5]})");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("image_mean"), std::string::npos);
  c = ParseModelConfig(config, R"({"base_img_size":50})");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("preprocessor_config.json: base_img_size (50) must be a multiple of 32"),
            std::string::npos)
      << c.status();
}

// Values that would load and then fail every request (or crash the first
// image) are refused at load, naming the file and field they come from.
TEST(ModelConfigTest, SizesThatCannotWorkAreRefusedAtLoad) {
  const nlohmann::json golden = nlohmann::json::parse(Read(kGolden + "/config.json"));
  const std::pair<std::function<void(nlohmann::json*)>, std::string> cases[] = {
      {[](nlohmann::json* j) { (*j)["vision_config"]["img_size"] = 0; }, "vision_config.img_size must be positive"},
      {[](nlohmann::json* j) { (*j)["vision_config"]["img_size"] = 336; },
       "config.json: vision_config.img_size (336) must be a multiple of 32"},
      {[](nlohmann::json* j) { (*j)["vision_config"]["max_num_crops"] = -1; },
       "vision_config.max_num_crops must be positive"},
      {[](nlohmann::json* j) { (*j)["text_config"]["head_dim"] = 7; }, "must be positive and even"},
      {[](nlohmann::json* j) { (*j)["text_config"]["max_position_embeddings"] = 0; },
       "max_position_embeddings (0) must be in 1..16777216"},
      {[](nlohmann::json* j) { (*j)["text_config"]["rope_theta"] = -1.0; }, "rope_theta (-1) must be positive"},
  };
  for (const auto& [edit, message] : cases) {
    nlohmann::json j = golden;
    edit(&j);
    auto c = ParseModelConfig(j.dump(), "");
    ASSERT_FALSE(c.ok()) << message;
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << c.status();
    EXPECT_NE(c.status().message().find(message), std::string::npos) << c.status();
  }
}

TEST(ModelConfigTest, UnsupportedFeaturesAreRefusedNotIgnored) {
  nlohmann::json j = nlohmann::json::parse(Read(kGolden + "/config.json"));
  j["text_config"]["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  auto c = ParseModelConfig(j.dump(), "");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("rope_scaling"), std::string::npos);
}

}  // namespace
}  // namespace magma::model
