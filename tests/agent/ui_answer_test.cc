#include "magma/agent/ui_answer.h"

#include <gtest/gtest.h>

namespace magma::agent {
namespace {

using vision::Mark;
using vision::PixelBox;
using vision::PixelPoint;

// A 1000x500 screenshot seen by the model at 500x250, with three marks
// (ids from 0, as Magma's UI demo numbers them).
std::vector<Mark> Table() {
  std::vector<Mark> marks;
  const PixelBox boxes[] = {{10, 10, 110, 60}, {200, 100, 400, 300}, {220, 120, 260, 160}};
  for (int i = 0; i < 3; ++i) {
    Mark m;
    m.id = i;
    m.box = boxes[i];
    m.centre = boxes[i].centre();
    marks.push_back(m);
  }
  return marks;
}

vision::ImageFrame Frame() {
  auto f = vision::ImageFrame::Create({1000, 500}, {500, 250});
  EXPECT_TRUE(f.ok());
  return *f;
}

struct ValidCase {
  const char* text;
  UiRule rule;
  size_t position;
  PixelPoint click;
  int mark;  // -1: none
};

class UiValidTest : public ::testing::TestWithParam<ValidCase> {};

TEST_P(UiValidTest, ResolvesToOriginalPixels) {
  const ValidCase& c = GetParam();
  auto got = ParseUiAnswer(c.text, Table(), Frame());
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->rule, c.rule) << UiRuleName(got->rule);
  EXPECT_EQ(got->position, c.position);
  EXPECT_NEAR(got->click.x, c.click.x, 1e-9);
  EXPECT_NEAR(got->click.y, c.click.y, 1e-9);
  EXPECT_NEAR(got->click_norm.x, c.click.x / 1000, 1e-12);
  EXPECT_NEAR(got->click_norm.y, c.click.y / 500, 1e-12);
  if (c.mark < 0) {
    EXPECT_FALSE(got->mark.has_value());
  } else {
    ASSERT_TRUE(got->mark.has_value());
    EXPECT_EQ(*got->mark, c.mark);
    EXPECT_EQ(*got->element_box, Table()[c.mark].box);
  }
}

// Clicks by hand: a mark's centre; <box> centre / 1000 * (1000, 500);
// floats * (1000, 500). The containing mark is the smallest box holding it.
INSTANTIATE_TEST_SUITE_P(
    Table, UiValidTest,
    ::testing::Values(ValidCase{"Mark: 1", UiRule::kMark, 0, {300, 200}, 1},
                      ValidCase{"The answer is Mark: 2.", UiRule::kMark, 14, {240, 140}, 2},
                      ValidCase{"Coordinate: (0.9, 0.9). Mark: 0", UiRule::kMark, 24, {60, 35}, 0},
                      ValidCase{"<box>(100,200),(300,400)</box>", UiRule::kMilliBox, 0, {200, 150}, 1},
                      ValidCase{"Click <box>( 300 , 400 ),( 100 , 200 )</box>", UiRule::kMilliBox, 6, {200, 150}, 1},
                      ValidCase{"(0.24, 0.28)", UiRule::kPoint, 1, {240, 140}, 2},
                      ValidCase{"[0.1, 0.2, 0.3, 0.4]", UiRule::kNormBox, 1, {200, 150}, 1},
                      // Mark 9 is not in the table: the coordinates decide.
                      ValidCase{"Coordinate: (0.5, 0.5). Mark: 9", UiRule::kPoint, 13, {500, 250}, -1},
                      ValidCase{"0.05 0.04", UiRule::kPoint, 0, {50, 20}, 0}));

TEST(UiAnswerTest, MilliBoxKeepsTheAnswerBox) {
  auto got = ParseUiAnswer("<box>(100,200),(300,400)</box>", {}, Frame());
  ASSERT_TRUE(got.ok());
  ASSERT_TRUE(got->answer_box.has_value());
  EXPECT_EQ(*got->answer_box, (PixelBox{100, 100, 300, 200}));
  EXPECT_FALSE(got->mark.has_value());
}

struct InvalidCase {
  const char* text;
  bool with_table;
  size_t position;
  const char* reason;
};

class UiInvalidTest : public ::testing::TestWithParam<InvalidCase> {};

TEST_P(UiInvalidTest, FailsWithPositionAndReason) {
  const InvalidCase& c = GetParam();
  auto got = ParseUiAnswer(c.text, c.with_table ? Table() : std::vector<Mark>{}, Frame());
  ASSERT_FALSE(got.ok()) << c.text;
  EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument);
  const std::string msg(got.status().message());
  EXPECT_NE(msg.find("at position " + std::to_string(c.position) + ":"), std::string::npos) << msg;
  EXPECT_NE(msg.find(c.reason), std::string::npos) << msg;
}

INSTANTIATE_TEST_SUITE_P(
    Table, UiInvalidTest,
    ::testing::Values(InvalidCase{"Mark: 1", false, 0, "mark 1 is not in the table (the mark table is empty)"},
                      InvalidCase{"Mark: 7", true, 0, "mark 7 is not in the table (the mark table has 3 marks)"},
                      InvalidCase{"<box>(100,200),(300)</box>", true, 19, "expected ','"},
                      InvalidCase{"<box>(100,2000),(300,400)</box>", true, 10, "y1 = 2000 is outside 0..1000"},
                      InvalidCase{"<box>(100,200),(300,400)", true, 24, "expected '</box>'"},
                      InvalidCase{"(0.5, 1.5)", true, 6, "coordinate 1.5 is outside [0, 1]"},
                      InvalidCase{"-0.2, 0.3", true, 0, "coordinate -0.2 is outside [0, 1]"},
                      InvalidCase{"0.1 0.2 0.3", true, 11, "found 3"}, InvalidCase{"nothing here", true, 12, "found 0"},
                      InvalidCase{"1 2 3 4 5 6 7", true, 8, "found more than 5"},
                      InvalidCase{
                          "(0.5, 99999999999999999999999999999999999999999999999999999999999999999999999999999999"
                          "9999999999999999999999999999999999999999999999999999999999999999999999999999999999999"
                          "9999999999999999999999999999999999999999999999999999999999999999999999999999999999999"
                          "99999999999999999999999999999999999999999999999999999)",
                          true, 6, "outside [0, 1]"}));

TEST(UiRuleTest, Names) {
  EXPECT_STREQ(UiRuleName(UiRule::kMark), "mark");
  EXPECT_STREQ(UiRuleName(UiRule::kMilliBox), "milli_box");
  EXPECT_STREQ(UiRuleName(UiRule::kPoint), "point");
  EXPECT_STREQ(UiRuleName(UiRule::kNormBox), "norm_box");
}

}  // namespace
}  // namespace magma::agent
