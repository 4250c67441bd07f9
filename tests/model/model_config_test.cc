#include "magma/model/model_config.h"

#include <fstream>
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
  EXPECT_NE(c.status().message().find("base_img_size"), std::string::npos);
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
