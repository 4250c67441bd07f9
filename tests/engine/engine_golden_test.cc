// The engine on the tiny golden model through the libtorch runner.
#include <map>

#include <gtest/gtest.h>

#include "magma/engine/engine.h"
#include "magma/engine/magma_runner.h"
#include "magma/model/model.h"
#include "magma/vision/image.h"

namespace magma::engine {
namespace {

const std::string kGolden = std::string(MAGMA_TEST_DATA_DIR) + "/magma-tiny-a";

std::unique_ptr<model::MagmaModel> LoadGolden() {
  model::LoadOptions o;
  o.dtype = "float32";
  o.log_progress = false;
  auto m = model::MagmaModel::Load(kGolden, o);
  EXPECT_TRUE(m.ok()) << m.status();
  return m.ok() ? *std::move(m) : nullptr;
}

std::vector<GenerationRequest> Requests() {
  auto rgb = vision::ReadRgb(kGolden + "/image.png");
  EXPECT_TRUE(rgb.ok());
  vision::AnyresOptions ao;
  ao.base = 64;
  auto crops = std::make_shared<vision::Crops>(vision::PreprocessAnyres(*rgb, ao));
  std::vector<GenerationRequest> reqs(3);
  reqs[0].prompt_ids = {1, 17, 305, 44, 511, 9, 128, 77, 250, 3};  // the golden prompt
  reqs[0].images.push_back({crops, "golden"});
  reqs[1].prompt_ids = {1, 5, 9, 200, 7};
  reqs[2].prompt_ids = {1, 300, 301, 302, 17, 18, 19, 20, 21, 22, 23, 24};
  for (auto& r : reqs) {
    r.max_new_tokens = 8;
    r.sampling.temperature = 0;
  }
  return reqs;
}

std::map<int, GenerationResult> Generate(const model::MagmaModel* m, const std::vector<GenerationRequest>& reqs,
                                    std::vector<int> which, const EngineOptions& options) {
  MagmaRunnerOptions ro;
  ro.slots = 4;
  ro.context_tokens = 128;
  Engine engine(MakeMagmaRunner(m, ro), nullptr, options);
  std::mutex mu;
  std::condition_variable cv;
  std::map<int, GenerationResult> out;
  for (int i : which) {
    RequestCallbacks cb;
    cb.on_done = [&, i](GenerationResult r) {
      std::lock_guard<std::mutex> lock(mu);
      out[i] = std::move(r);
      cv.notify_all();
    };
    EXPECT_TRUE(engine.Submit(reqs[i], cb).ok());
  }
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return out.size() == which.size(); });
  return out;
}

TEST(EngineGoldenTest, GoldenPromptGivesTheReferenceTokens) {
  auto m = LoadGolden();
  ASSERT_NE(m, nullptr);
  auto r = Generate(m.get(), Requests(), {0}, {});
  EXPECT_EQ(r[0].token_ids, (std::vector<int32_t>{104, 185, 155, 468, 221, 25, 163, 508}));
  EXPECT_EQ(r[0].timings.prompt_tokens, 29);
}

TEST(EngineGoldenTest, BatchedGenerationEqualsOneAtATime) {
  auto m = LoadGolden();
  ASSERT_NE(m, nullptr);
  const auto reqs = Requests();
  std::map<int, std::vector<int32_t>> alone;
  for (int i = 0; i < 3; ++i) alone[i] = Generate(m.get(), reqs, {i}, {})[i].token_ids;
  EngineOptions small_chunks;
  small_chunks.prefill_chunk_tokens = 7;  // prompts split across iterations
  for (const EngineOptions& o : {EngineOptions{}, small_chunks}) {
    auto together = Generate(m.get(), reqs, {2, 0, 1}, o);
    for (int i = 0; i < 3; ++i) EXPECT_EQ(together[i].token_ids, alone[i]) << "request " << i;
  }
}

}  // namespace
}  // namespace magma::engine
