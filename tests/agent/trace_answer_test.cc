#include "magma/agent/trace_answer.h"

#include <gtest/gtest.h>

namespace magma::agent {
namespace {

using vision::Grid256Point;

const char kFull[] =
    "Mark 3 at [120,88], Mark 7 at [40,200] should be moved, and their future positions are:\n\n"
    "\"Mark 3\": \"[[121,90],[125,97]]\"\n\n\"Mark 7\": \"[[41,198]]\"";

TEST(TraceAnswerTest, ParsesTheTrainingFormat) {
  auto got = ParseTraceAnswer(kFull);
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->traces.size(), 2u);
  const MarkTrace& a = got->traces[0];
  EXPECT_EQ(a.mark, 3);
  ASSERT_TRUE(a.start.has_value());
  EXPECT_EQ(*a.start, (Grid256Point{120, 88}));
  EXPECT_EQ(a.future, (std::vector<Grid256Point>{{121, 90}, {125, 97}}));
  EXPECT_EQ(got->traces[1].mark, 7);
  EXPECT_EQ(*got->traces[1].start, (Grid256Point{40, 200}));
  EXPECT_EQ(got->traces[1].future, (std::vector<Grid256Point>{{41, 198}}));
}

TEST(TraceAnswerTest, HeadIsOptionalAndTracesMayBeWrapped) {
  auto bare = ParseTraceAnswer("\"Mark 1\": \"[[0,0],[255,255]]\"");
  ASSERT_TRUE(bare.ok()) << bare.status();
  EXPECT_FALSE(bare->traces[0].start.has_value());
  EXPECT_EQ(bare->traces[0].future, (std::vector<Grid256Point>{{0, 0}, {255, 255}}));
  auto wrapped = ParseTraceAnswer(
      "Mark 2 at [5,6] should be moved, and their future positions are:\n\n<trace_start>\"Mark 2\": \"[ [7, 8] ]\"\n\n"
      "<trace_end>\n");
  ASSERT_TRUE(wrapped.ok()) << wrapped.status();
  EXPECT_EQ(wrapped->traces[0].future, (std::vector<Grid256Point>{{7, 8}}));
  // Comma-joined entries and an empty future are accepted too.
  auto commas = ParseTraceAnswer("\"Mark 1\": \"[]\", \"Mark 2\": \"[[1,1]]\"");
  ASSERT_TRUE(commas.ok()) << commas.status();
  EXPECT_TRUE(commas->traces[0].future.empty());
}

// The head only places the starts: it may name marks without traces (they
// do not move), omit marks with traces (they have no start) or name a mark
// twice (the first entry counts).
TEST(TraceAnswerTest, HeadAndTracesNeedNotAgree) {
  auto got = ParseTraceAnswer(
      "Mark 3 at [1,2], Mark 5 at [9,9], Mark 3 at [4,5] should be moved, and their future positions are:\n\n"
      "\"Mark 3\": \"[[2,3]]\"\n\n\"Mark 4\": \"[[7,7]]\"");
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->traces.size(), 2u);
  EXPECT_EQ(got->traces[0].mark, 3);
  ASSERT_TRUE(got->traces[0].start.has_value());
  EXPECT_EQ(*got->traces[0].start, (Grid256Point{1, 2}));
  EXPECT_EQ(got->traces[1].mark, 4);
  EXPECT_FALSE(got->traces[1].start.has_value());
}

TEST(TraceAnswerTest, FormatRoundTrips) {
  auto got = ParseTraceAnswer(kFull);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(FormatTraceAnswer(*got), kFull);
}

TEST(TraceAnswerTest, PixelsScaleGridCellsByTheOriginalSize) {
  auto got = ParseTraceAnswer(kFull);
  ASSERT_TRUE(got.ok());
  auto frame = vision::ImageFrame::Create({512, 256}, {256, 256});
  ASSERT_TRUE(frame.ok());
  const auto px = TracesToPixels(*got, *frame);
  ASSERT_EQ(px.size(), 2u);
  // g / 256 * size: 120 -> 240 on 512 px, 88 -> 88 on 256 px.
  ASSERT_EQ(px[0].points.size(), 3u);
  EXPECT_EQ(px[0].points[0], (vision::PixelPoint{240, 88}));
  EXPECT_EQ(px[0].points[2], (vision::PixelPoint{250, 97}));
  EXPECT_EQ(px[1].points[1], (vision::PixelPoint{82, 198}));
}

struct InvalidCase {
  const char* text;
  size_t position;
  const char* reason;
};

class TraceInvalidTest : public ::testing::TestWithParam<InvalidCase> {};

TEST_P(TraceInvalidTest, FailsWithPositionAndReason) {
  auto got = ParseTraceAnswer(GetParam().text);
  ASSERT_FALSE(got.ok()) << GetParam().text;
  EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument);
  const std::string msg(got.status().message());
  EXPECT_NE(msg.find("at position " + std::to_string(GetParam().position) + ":"), std::string::npos) << msg;
  EXPECT_NE(msg.find(GetParam().reason), std::string::npos) << msg;
}

INSTANTIATE_TEST_SUITE_P(
    Table, TraceInvalidTest,
    ::testing::Values(
        InvalidCase{"", 0, "no traces"}, InvalidCase{"  \n ", 4, "no traces"},
        InvalidCase{"\"Mark 3\": \"[[256,1]]\"", 13, "x = 256 is outside the grid 0..255"},
        InvalidCase{"\"Mark 3\": \"[[1,-1]]\"", 15, "y = -1 is outside the grid"},
        InvalidCase{"\"Mark 3\": \"[[1,2]]\" trailing", 20, "expected '\"Mark'"},
        InvalidCase{"\"Mark 3\": \"[]\"\n\"Mark 3\": \"[]\"", 15, "mark 3 has two traces"},
        InvalidCase{"\"Mark 3\": [[1,2]]", 10, "expected '\"'"},
        InvalidCase{"\"Mark 3\": \"[[1,2],]\"", 18, "expected '['"},
        InvalidCase{"\"Mark 3\": \"[[1.5,2]]\"", 14, "expected ','"},
        InvalidCase{"\"Mark -2\": \"[]\"", 6, "mark ids are non-negative"},
        InvalidCase{"\"Mark 99999999999\": \"[]\"", 6, "integer out of range"},
        InvalidCase{"Sure. Mark 3 at [1,2] should be moved, and their future positions are:\n\"Mark 3\": \"[]\"", 0,
                    "expected 'Mark'"},
        InvalidCase{"Mark 3 at [1,2] will move, and their future positions are:\n\"Mark 3\": \"[]\"", 16,
                    "expected 'should be moved'"},
        InvalidCase{"Mark 3 at [1,2] should be moved, and their future positions are:\n", 65, "no traces"},
        InvalidCase{"<trace_start>\"Mark 3\": \"[]\"", 27, "expected '<trace_end>'"}));

}  // namespace
}  // namespace magma::agent
