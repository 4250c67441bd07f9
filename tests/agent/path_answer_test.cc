#include "magma/agent/path_answer.h"

#include <gtest/gtest.h>

namespace magma::agent {
namespace {

using vision::Gripper;
using vision::PathWaypoint;

constexpr Gripper C = Gripper::kClosed;
constexpr Gripper O = Gripper::kOpen;

struct ValidCase {
  const char* text;
  std::vector<std::tuple<double, double, Gripper>> want;
};

class PathValidTest : public ::testing::TestWithParam<ValidCase> {};

TEST_P(PathValidTest, Parses) {
  auto got = ParsePathAnswer(GetParam().text);
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->size(), GetParam().want.size());
  for (size_t i = 0; i < got->size(); ++i) {
    const auto& [x, y, g] = GetParam().want[i];
    EXPECT_EQ((*got)[i].point.x, x) << i;
    EXPECT_EQ((*got)[i].point.y, y) << i;
    EXPECT_EQ((*got)[i].gripper, g) << i;
  }
}

// Gripper states follow the reference's process_answer by hand: the path
// starts closed; a tag sets the point before it and every later one.
INSTANTIATE_TEST_SUITE_P(
    Table, PathValidTest,
    ::testing::Values(
        ValidCase{"<ans>[(0.25, 0.32), (0.32, 0.17)]</ans>", {{0.25, 0.32, C}, {0.32, 0.17, C}}},
        ValidCase{"<ans>[(0.1, 0.2), (0.3, 0.4), <action>Open Gripper</action>, (0.5, 0.6), "
                  "<action>Close Gripper</action>, (0.7,0.8)]</ans>",
                  {{0.1, 0.2, C}, {0.3, 0.4, O}, {0.5, 0.6, C}, {0.7, 0.8, C}}},
        ValidCase{"<ans>[(0.5,0.5),<action>Open Gripper</action>,(0.6,0.6)]</ans>", {{0.5, 0.5, O}, {0.6, 0.6, O}}},
        // Two tags in a row: the second wins for the point before them.
        ValidCase{"<ans>[(0,1), <action>Open Gripper</action>, <action>Close Gripper</action>]</ans>", {{0, 1, C}}},
        // Reasoning around the tags, newlines, a trailing comma, integers,
        // exponents and a leading '+' are Python list syntax too.
        ValidCase{"Let me think.\n<ans>\n[ ( 1 , 0. ) ,\n (.5, 5e-1), (+0.25, 1E0), ]\n</ans> done",
                  {{1, 0, C}, {0.5, 0.5, C}, {0.25, 1, C}}}));

struct InvalidCase {
  const char* text;
  size_t position;
  const char* reason;
};

class PathInvalidTest : public ::testing::TestWithParam<InvalidCase> {};

TEST_P(PathInvalidTest, FailsWithPositionAndReason) {
  auto got = ParsePathAnswer(GetParam().text);
  ASSERT_FALSE(got.ok()) << GetParam().text;
  EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument);
  const std::string msg(got.status().message());
  EXPECT_NE(msg.find("at position " + std::to_string(GetParam().position) + ":"), std::string::npos) << msg;
  EXPECT_NE(msg.find(GetParam().reason), std::string::npos) << msg;
}

INSTANTIATE_TEST_SUITE_P(
    Table, PathInvalidTest,
    ::testing::Values(InvalidCase{"[(0.1, 0.2)]", 0, "no <ans> tag"},
                      InvalidCase{"<ans>[(0.1, 0.2)]", 17, "not closed by </ans>"},
                      InvalidCase{"<ans>(0.1, 0.2)</ans>", 5, "expected '['"},
                      InvalidCase{"<ans>[(0.1 0.2)]</ans>", 11, "expected ','"},
                      InvalidCase{"<ans>[(1.5, 0.2)]</ans>", 7, "x = 1.5 is outside [0, 1]"},
                      InvalidCase{"<ans>[(0.5, -0.01)]</ans>", 12, "y = -0.01 is outside [0, 1]"},
                      InvalidCase{"<ans>[<action>Open Gripper</action>, (0.1,0.2)]</ans>", 6,
                                  "gripper action before the first point"},
                      InvalidCase{"<ans>[]</ans>", 5, "no points"},
                      InvalidCase{"<ans>[(0.1,0.2) (0.3,0.4)]</ans>", 16, "expected ',' or ']'"},
                      InvalidCase{"<ans>[(0.1,0.2)] extra</ans>", 17, "expected </ans>"},
                      InvalidCase{"<ans>[(0.1,0.2), <action>Jump</action>]</ans>", 17, "unknown gripper action"},
                      InvalidCase{"<ans>[(0.1,0.2),, (0.3,0.4)]</ans>", 16, "expected '(' or a gripper"},
                      InvalidCase{"<ans>[(1e999, 0.2)]</ans>", 7, "number out of range"},
                      InvalidCase{"<ans>[(0.1,0.2)</ans>", 15, "not closed by ']'"},
                      InvalidCase{"<ans>[(abc, 0.2)]</ans>", 7, "expected a number"},
                      InvalidCase{"<ans>[(1e, 0.2)]</ans>", 9, "expected exponent digits"},
                      InvalidCase{"<ans>[(0.1, 0.2, 0.3)]</ans>", 15, "expected ')'"}));

TEST(PathAnswerTest, FormatRoundTrips) {
  const std::vector<PathWaypoint> path = {
      {{0.1, 0.2}, C}, {{0.3, 0.4}, O}, {{0.5, 0.6}, O}, {{0.7, 0.8}, C}, {{1.0 / 3, 0}, C}};
  const std::string text = FormatPathAnswer(path);
  EXPECT_EQ(text,
            "<ans>[(0.1, 0.2), (0.3, 0.4), <action>Open Gripper</action>, (0.5, 0.6), (0.7, 0.8), "
            "<action>Close Gripper</action>, (0.3333333333333333, 0)]</ans>");
  auto back = ParsePathAnswer(text);
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_EQ(back->size(), path.size());
  for (size_t i = 0; i < path.size(); ++i) {
    EXPECT_EQ((*back)[i].point, path[i].point);
    EXPECT_EQ((*back)[i].gripper, path[i].gripper);
  }
}

TEST(PathAnswerTest, PixelsInTheOriginalImage) {
  auto frame = vision::ImageFrame::Create({1280, 720}, {512, 512});
  ASSERT_TRUE(frame.ok());
  const auto px = PathToPixels({{{0.25, 0.5}, C}, {{1, 0}, O}}, *frame);
  ASSERT_EQ(px.size(), 2u);
  EXPECT_EQ(px[0], (vision::PixelPoint{320, 360}));
  EXPECT_EQ(px[1], (vision::PixelPoint{1280, 0}));
}

TEST(PathAnswerTest, LimitsThePointCount) {
  std::string text = "<ans>[";
  for (int i = 0; i <= kMaxPathPoints; ++i) text += "(0.5,0.5),";
  text += "]</ans>";
  auto got = ParsePathAnswer(text);
  ASSERT_FALSE(got.ok());
  EXPECT_NE(got.status().message().find("more than 10000 points"), std::string::npos) << got.status();
}

}  // namespace
}  // namespace magma::agent
