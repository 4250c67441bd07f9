// How Trace and Click answers are read once generation ends: a constrained
// answer the token budget cut keeps what is complete, or fails with
// RESOURCE_EXHAUSTED when nothing is; free answers are read as they are.
#include <gtest/gtest.h>

#include "magma/agent/tasks.h"

namespace magma::agent {
namespace {

using vision::Grid256Point;

// FinishTrace only asks whether the answer was constrained; it never starts the grammar.
class NeverStarted : public engine::Grammar {
 public:
  std::unique_ptr<engine::Constraint> Start() const override { return nullptr; }
  int32_t MinTokens(int32_t) const override { return 1; }
  size_t TableBytes() const override { return 0; }
};

PreparedTrace Tom(bool constrained) {
  PreparedTrace p;
  p.format = TraceFormat::kMagmaTom;
  p.frame = vision::ImageFrame::Identity({512, 256});
  if (constrained) p.request.grammar = std::make_shared<NeverStarted>();
  return p;
}

engine::GenerationResult Ended(std::string text, engine::FinishReason reason, int tokens) {
  engine::GenerationResult r;
  r.finish_reason = reason;
  r.text = std::move(text);
  r.token_ids.assign(tokens, 7);
  return r;
}

constexpr char kCut[] = "\"Mark 1\": \"[[10,20],[12,22]]\"\n\n\"Mark 2\": \"[[30,4";

TEST(FinishTraceTest, ABudgetCutKeepsTheCompleteTraces) {
  auto out = FinishTrace(Tom(true), Ended(kCut, engine::FinishReason::kLength, 40));
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_EQ(out->answer.traces.size(), 1u);
  EXPECT_EQ(out->answer.traces[0].mark, 1);
  EXPECT_EQ(out->answer.traces[0].future, (std::vector<Grid256Point>{{10, 20}, {12, 22}}));
  ASSERT_EQ(out->traces.size(), 1u);
  // g / 256 * size on a 512x256 image.
  EXPECT_EQ(out->traces[0].points, (std::vector<vision::PixelPoint>{{20, 20}, {24, 22}}));
  // A trace is complete at its closing quote, blank line or not.
  auto one_newline = FinishTrace(
      Tom(true), Ended("\"Mark 1\": \"[[1,2]]\"\n\n\"Mark 2\": \"[[3,4]]\"\n", engine::FinishReason::kLength, 30));
  ASSERT_TRUE(one_newline.ok()) << one_newline.status();
  ASSERT_EQ(one_newline->answer.traces.size(), 2u);
  EXPECT_EQ(one_newline->answer.traces[1].future, (std::vector<Grid256Point>{{3, 4}}));
  // The head's points end in ']' too, never in ']"': a cut inside the first
  // trace keeps nothing.
  auto in_first = FinishTrace(Tom(true), Ended("Mark 1 at [1,2] should be moved, and their future positions are:\n\n"
                                               "\"Mark 1\": \"[[10,20],[1",
                                               engine::FinishReason::kLength, 30));
  EXPECT_EQ(in_first.status().code(), absl::StatusCode::kResourceExhausted) << in_first.status();
}

// The grammar lets a constrained answer end after its head, or at once: no
// mark moves.
TEST(FinishTraceTest, AConstrainedHeadWithoutTracesMovesNoMark) {
  auto out = FinishTrace(Tom(true), Ended("Mark 1 at [1,2] should be moved, and their future positions are:\n\n",
                                          engine::FinishReason::kStopToken, 20));
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_TRUE(out->traces.empty());
}

// Constrained answers have no head: each trace starts where its mark was
// drawn, and its future is the answer's points.
TEST(FinishTraceTest, ATraceWithoutAHeadStartsAtItsMark) {
  PreparedTrace p = Tom(true);
  p.marks = {{1, {100, 50}}, {2, {300, 200}}};
  auto out = FinishTrace(p, Ended("\"Mark 2\": \"[[10,20],[12,22]]\"\n\n", engine::FinishReason::kGrammar, 20));
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_EQ(out->traces.size(), 1u);
  EXPECT_EQ(out->traces[0].mark, 2);
  EXPECT_TRUE(out->traces[0].has_start);
  // g / 256 * size on a 512x256 image, after the mark's own point.
  EXPECT_EQ(out->traces[0].points, (std::vector<vision::PixelPoint>{{300, 200}, {20, 20}, {24, 22}}));
  // A head's start is kept as the answer gives it.
  auto headed = FinishTrace(Tom(false), Ended("Mark 1 at [64,128] should be moved, and their future positions are:\n\n"
                                              "\"Mark 1\": \"[[10,20]]\"\n\n",
                                              engine::FinishReason::kStopToken, 30));
  ASSERT_TRUE(headed.ok()) << headed.status();
  ASSERT_EQ(headed->traces.size(), 1u);
  EXPECT_TRUE(headed->traces[0].has_start);
  EXPECT_EQ(headed->traces[0].points, (std::vector<vision::PixelPoint>{{128, 128}, {20, 20}}));
}

TEST(FinishTraceTest, ABudgetCutInsideTheFirstTraceIsResourceExhausted) {
  auto out = FinishTrace(Tom(true), Ended("\"Mark 1\": \"[[10,20],[1", engine::FinishReason::kLength, 12));
  ASSERT_EQ(out.status().code(), absl::StatusCode::kResourceExhausted) << out.status();
  EXPECT_EQ(out.status().message(), "the answer ran out of tokens (12) before its first trace was complete");
}

TEST(FinishTraceTest, ABudgetCutPathIsResourceExhausted) {
  PreparedTrace path = Tom(true);
  path.format = TraceFormat::kHamsterPath;
  const std::string cut = "<ans>[(0.1, 0.2), (0.3";
  auto out = FinishTrace(path, Ended(cut, engine::FinishReason::kLength, 15));
  ASSERT_EQ(out.status().code(), absl::StatusCode::kResourceExhausted) << out.status();
  EXPECT_EQ(out.status().message(), "the answer ran out of tokens (15) before its path was complete");
  // Unconstrained, the same text is an answer that could not be read.
  path.request.grammar = nullptr;
  EXPECT_EQ(FinishTrace(path, Ended(cut, engine::FinishReason::kLength, 15)).status().code(),
            absl::StatusCode::kInternal);
  // A whole path is read whatever ended the answer.
  path.request.grammar = std::make_shared<NeverStarted>();
  auto whole = FinishTrace(path, Ended("<ans>[(0.5, 0.25)]</ans>", engine::FinishReason::kGrammar, 12));
  ASSERT_TRUE(whole.ok()) << whole.status();
  ASSERT_EQ(whole->path.size(), 1u);
  EXPECT_EQ(whole->path_pixels[0], (vision::PixelPoint{256, 64}));
}

// A free answer may mention the tags before its path, as the prompt does.
TEST(FinishTraceTest, TheLastAnsBlockThatParsesIsThePath) {
  PreparedTrace path = Tom(false);
  path.format = TraceFormat::kHamsterPath;
  auto out = FinishTrace(path, Ended("I'll put points between <ans> and </ans> tags.\n<ans>[(0.5, 0.25)]</ans>",
                                     engine::FinishReason::kStopToken, 30));
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_EQ(out->path_pixels.size(), 1u);
  EXPECT_EQ(out->path_pixels[0], (vision::PixelPoint{256, 64}));
  auto none = FinishTrace(path, Ended("<ans> and </ans>", engine::FinishReason::kStopToken, 8));
  EXPECT_EQ(none.status().code(), absl::StatusCode::kInternal);
  EXPECT_NE(none.status().message().find("the model's path is malformed"), std::string::npos) << none.status();
}

TEST(FinishTraceTest, AConstrainedAnswerMayMoveNoMark) {
  for (auto reason : {engine::FinishReason::kStopToken, engine::FinishReason::kGrammar}) {
    auto out = FinishTrace(Tom(true), Ended("", reason, 1));
    ASSERT_TRUE(out.ok()) << out.status();
    EXPECT_TRUE(out->traces.empty());
  }
}

TEST(FinishTraceTest, FreeAnswersAreReadAsTheyAre) {
  // No trimming and no empty answer: the parser's message says what is wrong.
  auto cut = FinishTrace(Tom(false), Ended(kCut, engine::FinishReason::kLength, 40));
  EXPECT_EQ(cut.status().code(), absl::StatusCode::kInternal) << cut.status();
  auto empty = FinishTrace(Tom(false), Ended("", engine::FinishReason::kStopToken, 1));
  EXPECT_EQ(empty.status().code(), absl::StatusCode::kInternal) << empty.status();
  EXPECT_NE(empty.status().message().find("no traces"), std::string::npos) << empty.status();
  // A complete answer is the same either way.
  const std::string full = "\"Mark 2\": \"[[1,2]]\"\n\n";
  auto free = FinishTrace(Tom(false), Ended(full, engine::FinishReason::kStopToken, 9));
  auto constrained = FinishTrace(Tom(true), Ended(full, engine::FinishReason::kGrammar, 9));
  ASSERT_TRUE(free.ok() && constrained.ok());
  EXPECT_EQ(free->answer.traces[0].future, constrained->answer.traces[0].future);
}

PreparedClick TwoMarks(bool constrained) {
  PreparedClick p;
  p.frame = vision::ImageFrame::Identity({400, 200});
  for (int id : {0, 1}) {
    vision::Mark m;
    m.id = id;
    m.box = {10.0 + 200 * id, 20, 110.0 + 200 * id, 60};
    m.centre = {60.0 + 200 * id, 40};
    m.centre_norm = {m.centre.x / 400, m.centre.y / 200};
    p.marks.push_back(m);
  }
  if (constrained) p.request.grammar = std::make_shared<NeverStarted>();
  return p;
}

TEST(FinishClickTest, ABudgetCutBeforeTheMarkIsResourceExhausted) {
  auto cut = FinishClick(TwoMarks(true), Ended("Mark:", engine::FinishReason::kLength, 2));
  ASSERT_EQ(cut.status().code(), absl::StatusCode::kResourceExhausted) << cut.status();
  EXPECT_EQ(cut.status().message(), "the answer ran out of tokens (2) before it named a mark");
  // A free answer cut the same way names no element.
  auto free = FinishClick(TwoMarks(false), Ended("Mark:", engine::FinishReason::kLength, 2));
  EXPECT_EQ(free.status().code(), absl::StatusCode::kNotFound) << free.status();
  // A whole answer is read whatever ended it: mark 1's centre.
  auto whole = FinishClick(TwoMarks(true), Ended("Mark: 1", engine::FinishReason::kLength, 4));
  ASSERT_TRUE(whole.ok()) << whole.status();
  EXPECT_EQ(whole->mark, 1);
  EXPECT_EQ(whole->click, (vision::PixelPoint{260, 40}));
}

}  // namespace
}  // namespace magma::agent
