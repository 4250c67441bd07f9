#include "magma/train/synthetic_tasks.h"

#include <gtest/gtest.h>

#include "magma/tokenizer/bpe_trainer.h"
#include "testing/temp_dir.h"

namespace magma::train {
namespace {

class SyntheticTasksTest : public ::testing::Test {
 protected:
  void SetUp() override {
    tokenizer::BpeTrainOptions o;
    o.num_merges = 300;
    o.reserved_pieces = 256;
    const auto corpus = SyntheticTasks::CorpusTexts(40);
    ASSERT_TRUE(tokenizer::TrainByteLevelBpe(corpus, o, dir_.File("probe")).ok());
    const int32_t base = (*tokenizer::LoadTokenizer(dir_.File("probe")))->base_vocab_size();
    vocab_ = base + 7;
    o.added_tokens = tokenizer::Llama3StyleAddedTokens(vocab_, vocab_ - 1);
    ASSERT_TRUE(tokenizer::TrainByteLevelBpe(corpus, o, dir_.path()).ok());
    auto tok = tokenizer::LoadTokenizer(dir_.path());
    ASSERT_TRUE(tok.ok()) << tok.status();
    vision::AnyresOptions anyres;
    anyres.base = 64;
    anyres.max_crops = 2;
    auto ctx = agent::MakeTaskContext(std::shared_ptr<const tokenizer::Tokenizer>(std::move(*tok)), vocab_ - 1, false,
                                      anyres, std::nullopt);
    ASSERT_TRUE(ctx.ok()) << ctx.status();
    ctx_ = std::make_unique<agent::TaskContext>(*std::move(ctx));
    tasks_ = std::make_unique<SyntheticTasks>(ctx_.get(), worlds::UiWorldOptions{}, worlds::RobotWorldOptions{});
  }
  testing::TempDir dir_;
  int32_t vocab_ = 0;
  std::unique_ptr<agent::TaskContext> ctx_;
  std::unique_ptr<SyntheticTasks> tasks_;
};

TEST_F(SyntheticTasksTest, ClickTargetsTheInstructedMark) {
  for (uint64_t seed = 0; seed < 20; ++seed) {
    auto e = tasks_->Click(seed);
    ASSERT_TRUE(e.ok()) << e.status();
    EXPECT_EQ(e->example.images.size(), 1u);
    EXPECT_EQ(std::count(e->example.prompt_ids.begin(), e->example.prompt_ids.end(), vocab_ - 1), 1);
    // The target spells "Mark: N" then ends the turn.
    std::vector<int32_t> ids(e->example.target_ids.begin(), e->example.target_ids.end() - 1);
    EXPECT_EQ(ctx_->tokenizer->Decode(ids), e->target_text);
    EXPECT_EQ(e->example.target_ids.back(), ctx_->stop_ids.back());
    // The mark is the instructed widget's (marks count from 0 in box order).
    const auto screen = worlds::RenderScreen(seed);
    const auto instructions = worlds::Instructions(screen);
    EXPECT_EQ(e->target_text, "Mark: " + std::to_string(instructions[seed % instructions.size()].target));
  }
}

TEST_F(SyntheticTasksTest, ActTargetsAreSevenActionTokens) {
  for (uint64_t seed = 0; seed < 20; ++seed) {
    auto e = tasks_->Act(seed);
    ASSERT_TRUE(e.ok()) << e.status();
    ASSERT_EQ(e->example.target_ids.size(), 8u);
    for (int i = 0; i < 7; ++i) EXPECT_TRUE(ctx_->action_codec->IsActionToken(e->example.target_ids[i]));
    // Action tokens are the reserved top of the base vocabulary: text never encodes to them.
    EXPECT_GE(e->example.target_ids[0], vocab_ - 7 - 256);
  }
}

TEST_F(SyntheticTasksTest, PathAndQuestionTargetsDecodeToTheirText) {
  for (uint64_t seed = 0; seed < 10; ++seed) {
    for (auto e : {tasks_->Path(seed), tasks_->Question(seed)}) {
      ASSERT_TRUE(e.ok()) << e.status();
      std::vector<int32_t> ids(e->example.target_ids.begin(), e->example.target_ids.end() - 1);
      EXPECT_EQ(ctx_->tokenizer->Decode(ids), e->target_text);
    }
  }
  // The mixture covers every kind.
  std::set<TaskKind> kinds;
  for (uint64_t seed = 0; seed < 10; ++seed) kinds.insert(tasks_->Mixed(seed)->kind);
  EXPECT_EQ(kinds.size(), 4u);
}

}  // namespace
}  // namespace magma::train
