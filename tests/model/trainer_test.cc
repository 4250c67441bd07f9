#include "magma/model/trainer.h"

#include <filesystem>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "magma/model/random_init.h"
#include "testing/temp_dir.h"

namespace magma::model {
namespace {

std::unique_ptr<MagmaModel> Tiny(const std::string& dir, const std::string& dtype) {
  auto preset = GetPreset("tiny");
  EXPECT_TRUE(WriteRandomModel(*preset, 21, dir).ok());
  LoadOptions o;
  o.dtype = dtype;
  o.log_progress = false;
  auto m = MagmaModel::Load(dir, o);
  EXPECT_TRUE(m.ok()) << m.status();
  return m.ok() ? *std::move(m) : nullptr;
}

TrainExample Example() {
  at::manual_seed(4);
  TrainExample e;
  e.prompt_ids = {1, 17, 511, 44, 45};  // 511: the tiny preset's image token
  e.images.push_back({at::randn({2, 3, 64, 64}), 1, 2});
  e.target_ids = {100, 200, 300, 400};
  return e;
}

TEST(TrainerTest, MemorisesOneExample) {
  testing::TempDir dir;
  auto m = Tiny(dir.File("m"), "float32");
  ASSERT_NE(m, nullptr);
  TrainOptions o;
  o.learning_rate = 3e-3;
  o.warmup_steps = 5;
  o.total_steps = 60;
  auto trainer = Trainer::Create(m.get(), o);
  ASSERT_TRUE(trainer.ok()) << trainer.status();
  const std::vector<TrainExample> batch = {Example()};
  auto before = (*trainer)->Loss(batch);
  ASSERT_TRUE(before.ok()) << before.status();
  EXPECT_GT(*before, 3.0);  // about log(512) for random weights
  for (int i = 0; i < 60; ++i) ASSERT_TRUE((*trainer)->Step(batch).ok());
  auto after = (*trainer)->Loss(batch);
  ASSERT_TRUE(after.ok());
  EXPECT_LT(*after, 0.1 * *before) << *before << " -> " << *after;
  EXPECT_EQ((*trainer)->step(), 60);

  // Greedy decoding now reproduces the targets.
  const TrainExample& e = batch[0];
  auto f = m->EncodeImage(e.images[0].crops, 1, 2);
  ASSERT_TRUE(f.ok());
  auto embeds = m->EmbedPrompt(e.prompt_ids, {*f});
  ASSERT_TRUE(embeds.ok());
  KvCache cache(m->config().text, 1, 64, at::kFloat);
  const int slot = cache.Allocate();
  auto logits = m->Prefill(embeds->detach(), &cache, slot);
  ASSERT_TRUE(logits.ok()) << logits.status();
  std::vector<int64_t> got = {logits->argmax().item<int64_t>()};
  for (int i = 1; i < 4; ++i) {
    auto step = m->Decode({got.back()}, {slot}, &cache);
    ASSERT_TRUE(step.ok()) << step.status();
    got.push_back((*step)[0].argmax().item<int64_t>());
  }
  EXPECT_EQ(got, e.target_ids);

  // The saved weights load back as a checkpoint with the same answer.
  const std::string out = dir.File("trained");
  std::filesystem::create_directories(out);
  for (const char* f : {"config.json", "preprocessor_config.json"}) {
    std::filesystem::copy_file(dir.File("m") + "/" + f, out + "/" + f);
  }
  ASSERT_TRUE(m->SaveWeights(out + "/model.safetensors").ok());
  LoadOptions lo;
  lo.dtype = "float32";
  auto reloaded = MagmaModel::Load(out, lo);
  ASSERT_TRUE(reloaded.ok()) << reloaded.status();
  auto f2 = (*reloaded)->EncodeImage(e.images[0].crops, 1, 2);
  auto embeds2 = (*reloaded)->EmbedPrompt(e.prompt_ids, {*f2});
  KvCache cache2((*reloaded)->config().text, 1, 64, at::kFloat);
  auto logits2 = (*reloaded)->Prefill(*embeds2, &cache2, cache2.Allocate());
  ASSERT_TRUE(logits2.ok());
  EXPECT_EQ(logits2->argmax().item<int64_t>(), e.target_ids[0]);
  EXPECT_LE((*logits2 - logits->detach()).abs().max().item<double>(), 1e-4);
}

TEST(TrainerTest, NeedsAFloat32Model) {
  testing::TempDir dir;
  auto m = Tiny(dir.File("m"), "bfloat16");
  ASSERT_NE(m, nullptr);
  auto trainer = Trainer::Create(m.get(), {});
  EXPECT_EQ(trainer.status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(TrainerTest, LearningRateWarmsUpThenDecays) {
  testing::TempDir dir;
  auto m = Tiny(dir.File("m"), "float32");
  TrainOptions o;
  o.learning_rate = 1e-3;
  o.warmup_steps = 3;
  o.total_steps = 13;
  auto trainer = Trainer::Create(m.get(), o);
  ASSERT_TRUE(trainer.ok());
  // Step 0 of 3 warm-up steps: peak * 1 / 4.
  EXPECT_NEAR((*trainer)->learning_rate(), 0.25e-3, 1e-12);
}

}  // namespace
}  // namespace magma::model
