#include "magma/vision/overlay.h"

#include <filesystem>
#include <random>
#include <string>

#include <gtest/gtest.h>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

namespace magma::vision {
namespace {

const std::string kGoldenDir = std::string(MAGMA_TEST_DATA_DIR) + "/overlays";

Rgb At(const cv::Mat& rgb, int x, int y) {
  const cv::Vec3b p = rgb.at<cv::Vec3b>(y, x);
  return {p[0], p[1], p[2]};
}

cv::Mat Flat(int w, int h, Rgb c = {255, 255, 255}) { return cv::Mat(h, w, CV_8UC3, cv::Scalar(c.r, c.g, c.b)); }

// A small synthetic screen: flat panels, so golden PNGs stay small.
cv::Mat Screen(int w, int h) {
  cv::Mat m = Flat(w, h, {236, 239, 244});
  cv::rectangle(m, cv::Rect(0, 0, w, h / 8), cv::Scalar(52, 73, 94), cv::FILLED);
  cv::rectangle(m, cv::Rect(w / 10, h / 4, w / 3, h / 2), cv::Scalar(255, 255, 255), cv::FILLED);
  cv::rectangle(m, cv::Rect(w / 2, h / 3, w / 3, h / 6), cv::Scalar(41, 128, 185), cv::FILLED);
  return m;
}

// Goldens were generated once by this code after the hand-computed pixel
// checks below passed (and, for the HAMSTER path and the OmniParser style,
// after comparing them with the reference drawing functions run on the same
// inputs); they are regression goldens. Each run writes its image to
// <build>/overlay_goldens/ for inspection or regeneration.
void ExpectMatchesGolden(const cv::Mat& rgb, const std::string& name) {
  const std::string out_dir = std::string(MAGMA_BINARY_DIR) + "/overlay_goldens";
  std::filesystem::create_directories(out_dir);
  cv::Mat bgr;
  cv::cvtColor(rgb, bgr, cv::COLOR_RGB2BGR);
  ASSERT_TRUE(cv::imwrite(out_dir + "/" + name + ".png", bgr, {cv::IMWRITE_PNG_COMPRESSION, 9}));
  const cv::Mat golden = cv::imread(kGoldenDir + "/" + name + ".png", cv::IMREAD_COLOR);
  ASSERT_FALSE(golden.empty()) << "missing golden " << kGoldenDir << "/" << name << ".png (this run's image is in "
                               << out_dir << ")";
  ASSERT_EQ(golden.size(), bgr.size()) << name;
  cv::Mat diff;
  cv::absdiff(golden, bgr, diff);
  EXPECT_EQ(cv::countNonZero(diff.reshape(1)), 0)
      << name << ": pixel channels differ from the golden (see " << out_dir << ")";
}

// ---------------------------------------------------------------------------
// Colormaps

// Entries worked out by hand from matplotlib's segment data: the table index
// i sits at x = i / 255, and each channel interpolates linearly between the
// stops (x_k * 255, y_k).
TEST(ColormapTest, JetEntriesMatchSegmentFormulas) {
  const auto& jet = ColormapTable(Colormap::kJet);
  // i = 0: blue starts at 0.5.
  EXPECT_EQ(jet[0][0], 0);
  EXPECT_EQ(jet[0][1], 0);
  EXPECT_EQ(jet[0][2], 0.5);
  // i = 64: green between stops 31.875 and 95.625; blue flat at 1.
  EXPECT_NEAR(jet[64][0], 0, 1e-15);
  EXPECT_NEAR(jet[64][1], (64 - 31.875) / 63.75, 1e-12);
  EXPECT_NEAR(jet[64][2], 1, 1e-15);
  // i = 128: red (128 - 89.25) / 79.05 = 25/51; blue falls from 1 at 86.7
  // to 0 at 165.75.
  EXPECT_NEAR(jet[128][0], 25.0 / 51.0, 1e-12);
  EXPECT_NEAR(jet[128][1], 1, 1e-15);
  EXPECT_NEAR(jet[128][2], 1 - (128 - 86.7) / 79.05, 1e-12);
  // i = 255: red ends at 0.5.
  EXPECT_EQ(jet[255][0], 0.5);
  EXPECT_EQ(jet[255][2], 0);
}

TEST(ColormapTest, GistRainbowEntriesMatchSegmentFormulas) {
  const auto& g = ColormapTable(Colormap::kGistRainbow);
  EXPECT_EQ(g[0][0], 1.0);
  EXPECT_EQ(g[0][2], 0.16);
  // i = 30: green rises from 0 at 7.65 to 1 at 54.825.
  EXPECT_NEAR(g[30][1], (30 - 7.65) / (54.825 - 7.65), 1e-12);
  EXPECT_NEAR(g[30][0], 1, 1e-15);
  // i = 102 is the stop x = 0.4 itself: pure green.
  EXPECT_NEAR(g[102][0], 0, 1e-12);
  EXPECT_NEAR(g[102][1], 1, 1e-12);
  EXPECT_EQ(g[255][2], 0.75);
  const auto& cool = ColormapTable(Colormap::kCool);
  EXPECT_NEAR(cool[102][0], 0.4, 1e-12);
  EXPECT_NEAR(cool[102][1], 0.6, 1e-12);
  EXPECT_EQ(cool[102][2], 1.0);
}

// 8-bit colours as the references compute them (value * 255, truncated);
// cross-checked once against matplotlib 3.6 with NumPy 1.24. Jet at 128 is
// 124, not 125: 25/51 * 255 lands just below 125 in floating point.
struct ColourCase {
  Colormap map;
  double x;
  Rgb want;
};

class ColormapRgbTest : public ::testing::TestWithParam<ColourCase> {};

TEST_P(ColormapRgbTest, MatchesReference) {
  const ColourCase& c = GetParam();
  EXPECT_EQ(ColormapRgb(c.map, c.x), c.want) << "x = " << c.x;
}

INSTANTIATE_TEST_SUITE_P(
    Table, ColormapRgbTest,
    ::testing::Values(
        ColourCase{Colormap::kJet, 0.0, {0, 0, 127}}, ColourCase{Colormap::kJet, 64 / 256.0, {0, 128, 255}},
        ColourCase{Colormap::kJet, 0.5, {124, 255, 121}}, ColourCase{Colormap::kJet, 102 / 256.0, {41, 255, 205}},
        ColourCase{Colormap::kJet, 200 / 256.0, {255, 118, 0}}, ColourCase{Colormap::kJet, 1.0, {127, 0, 0}},
        ColourCase{Colormap::kJet, 1 / 99.0, {0, 0, 136}},   // the path's second segment
        ColourCase{Colormap::kJet, 98 / 99.0, {136, 0, 0}},  // and its last
        ColourCase{Colormap::kGistRainbow, 0.0, {255, 0, 40}},
        ColourCase{Colormap::kGistRainbow, 30 / 256.0, {255, 120, 0}},
        ColourCase{Colormap::kGistRainbow, 0.5, {0, 255, 139}},
        ColourCase{Colormap::kGistRainbow, 200 / 256.0, {19, 0, 255}},
        ColourCase{Colormap::kGistRainbow, 1.0, {255, 0, 191}}, ColourCase{Colormap::kCool, 1 / 3.0, {85, 170, 255}},
        ColourCase{Colormap::kCool, 2 / 3.0, {170, 85, 255}}));

TEST(ColormapTest, LookupFollowsMatplotlibIndexing) {
  const auto& jet = ColormapTable(Colormap::kJet);
  EXPECT_EQ(ColormapAt(Colormap::kJet, 1.0), jet[255]);         // x == 1 -> last
  EXPECT_EQ(ColormapAt(Colormap::kJet, 0.999), jet[255]);       // int(255.74)
  EXPECT_EQ(ColormapAt(Colormap::kJet, 0.5 - 1e-9), jet[127]);  // int(127.99...)
  EXPECT_EQ(ColormapAt(Colormap::kJet, -3), jet[0]);            // under -> first
  EXPECT_EQ(ColormapAt(Colormap::kJet, 7), jet[255]);           // over -> last
  EXPECT_EQ(ColormapAt(Colormap::kJet, std::nan("")), jet[0]);
}

// ---------------------------------------------------------------------------
// HAMSTER path

std::vector<PathWaypoint> Path(std::initializer_list<std::tuple<double, double, Gripper>> pts) {
  std::vector<PathWaypoint> out;
  for (const auto& [x, y, g] : pts) out.push_back({{x, y}, g});
  return out;
}

TEST(DrawPathTest, HandComputedPixels) {
  // 512x512: scale 1, radius 7, line and circle thickness 2. Points
  // int(0.1 * 512) = 51 and int(0.9 * 512) = 460 on row 256; 100 samples
  // every 409 / 99 = 4.13 px, so segment 0 spans x 51..55 and segment 98
  // x 455..460.
  cv::Mat img = Flat(512, 512, {0, 0, 0});
  ASSERT_TRUE(DrawPath(Path({{0.1, 0.5, Gripper::kClosed}, {0.9, 0.5, Gripper::kOpen}}), {}, &img).ok());
  EXPECT_EQ(At(img, 53, 256), (Rgb{0, 0, 127}));   // jet(0)
  EXPECT_EQ(At(img, 458, 256), (Rgb{136, 0, 0}));  // jet(98 / 99) -> entry 253
  // Circles (drawn first): closed = (0, 0, 255) at the start, open =
  // (255, 0, 0) where the state changes; their tops lie 7 px above.
  EXPECT_EQ(At(img, 51, 249), (Rgb{0, 0, 255}));
  EXPECT_EQ(At(img, 460, 249), (Rgb{255, 0, 0}));
  // Inside the ring, off the line: untouched.
  EXPECT_EQ(At(img, 51, 252), (Rgb{0, 0, 0}));
  // Nothing past the end point but the ring.
  EXPECT_EQ(At(img, 464, 256), (Rgb{0, 0, 0}));
}

TEST(DrawPathTest, ScalesWithTheShorterSide) {
  // 1100x1040: scale = 1040 / 512 = 2.03 -> radius int(14.2) = 14, rings
  // and lines int(4.06) = 4 px.
  cv::Mat img = Flat(1100, 1040, {0, 0, 0});
  ASSERT_TRUE(DrawPath(Path({{0.5, 0.5, Gripper::kClosed}, {0.5, 0.9, Gripper::kClosed}}), {}, &img).ok());
  // Ring centred on (550, 520): its left edge is about 14 px out.
  EXPECT_EQ(At(img, 550 - 14, 520), (Rgb{0, 0, 255}));
  EXPECT_EQ(At(img, 550 - 10, 520), (Rgb{0, 0, 0}));
  // Points at rows 520 and int(0.9 * 1040) = 936: samples every 416 / 99 =
  // 4.2 px, so row 697 lies in segment 42 (43 starts at 700, its cap at 698), jet entry int(42 / 99 * 256) =
  // 108 = (60, 255, 186). The line is 4 px wide around x = 550.
  EXPECT_EQ(At(img, 550, 697), (Rgb{60, 255, 186}));
  int lit = 0;
  for (int x = 540; x <= 560; ++x) lit += At(img, x, 800) == Rgb{0, 0, 0} ? 0 : 1;
  EXPECT_GE(lit, 4);
  EXPECT_LE(lit, 5);
}

TEST(DrawPathTest, DegeneratePathsDrawWithoutNaNs) {
  // One point: the ring and a dot, no crash.
  cv::Mat one = Flat(64, 64, {0, 0, 0});
  ASSERT_TRUE(DrawPath(Path({{0.5, 0.5, Gripper::kOpen}}), {}, &one).ok());
  EXPECT_EQ(At(one, 32, 25), (Rgb{255, 0, 0}));  // open ring, radius 7
  EXPECT_NE(At(one, 32, 32), (Rgb{0, 0, 0}));    // the path's dot
  // Repeated points: zero-length pieces; the line still reaches the end.
  cv::Mat rep = Flat(64, 64, {0, 0, 0});
  ASSERT_TRUE(DrawPath(Path({{0.25, 0.25, Gripper::kClosed},
                             {0.25, 0.25, Gripper::kClosed},
                             {0.75, 0.25, Gripper::kClosed},
                             {0.75, 0.25, Gripper::kClosed}}),
                       {}, &rep)
                  .ok());
  // x 16 -> 48: blue (jet's start) at the start, red at the end.
  const Rgb start = At(rep, 17, 16), end = At(rep, 47, 16);
  EXPECT_GT(start.b, start.r);
  EXPECT_GT(end.r, end.b);
  // All points equal.
  cv::Mat same = Flat(64, 64, {0, 0, 0});
  ASSERT_TRUE(DrawPath(Path({{0.5, 0.5, Gripper::kClosed}, {0.5, 0.5, Gripper::kOpen}}), {}, &same).ok());
}

TEST(DrawPathTest, RejectsBadInput) {
  cv::Mat img = Flat(32, 32);
  EXPECT_EQ(DrawPath({}, {}, &img).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DrawPath(Path({{std::nan(""), 0.5, Gripper::kClosed}}), {}, &img).code(),
            absl::StatusCode::kInvalidArgument);
  PathOptions one_sample;
  one_sample.num_samples = 1;
  EXPECT_EQ(DrawPath(Path({{0.1, 0.1, Gripper::kClosed}}), one_sample, &img).code(),
            absl::StatusCode::kInvalidArgument);
  cv::Mat grey(8, 8, CV_8UC1);
  EXPECT_EQ(DrawPath(Path({{0.1, 0.1, Gripper::kClosed}}), {}, &grey).code(), absl::StatusCode::kInvalidArgument);
}

TEST(DrawPathTest, Golden) {
  cv::Mat small = Screen(320, 240);
  ASSERT_TRUE(DrawPath(Path({{0.12, 0.8, Gripper::kClosed},
                             {0.3, 0.35, Gripper::kClosed},
                             {0.31, 0.36, Gripper::kOpen},
                             {0.62, 0.2, Gripper::kOpen},
                             {0.85, 0.64, Gripper::kClosed},
                             {0.85, 0.64, Gripper::kClosed},
                             {0.5, 0.9, Gripper::kOpen}}),
                       {}, &small)
                  .ok());
  ExpectMatchesGolden(small, "path_320x240");
  cv::Mat large = Screen(1100, 1040);
  ASSERT_TRUE(DrawPath(Path({{0.2, 0.7, Gripper::kClosed},
                             {0.4, 0.3, Gripper::kOpen},
                             {0.8, 0.4, Gripper::kOpen},
                             {0.7, 0.8, Gripper::kClosed}}),
                       {}, &large)
                  .ok());
  ExpectMatchesGolden(large, "path_1100x1040");
}

// ---------------------------------------------------------------------------
// Set-of-Mark, Magma style

ImageFrame Identity(const cv::Mat& m) { return ImageFrame::Identity({m.cols, m.rows}); }

TEST(MagmaSomTest, OutlineAndLabelPixels) {
  cv::Mat img = Flat(200, 100);
  auto marks = DrawSetOfMarks({PixelBox{50, 40, 100, 70}}, Identity(img), {}, &img);
  ASSERT_TRUE(marks.ok()) << marks.status();
  const Rgb red{255, 0, 0}, white{255, 255, 255};
  // PIL outline of width 2 inside the inclusive rectangle [50, 100] x [40, 70].
  EXPECT_EQ(At(img, 75, 41), red);
  EXPECT_EQ(At(img, 75, 42), white);
  EXPECT_EQ(At(img, 75, 69), red);
  EXPECT_EQ(At(img, 75, 70), red);
  EXPECT_EQ(At(img, 75, 71), white);
  EXPECT_EQ(At(img, 51, 55), red);
  EXPECT_EQ(At(img, 52, 55), white);
  EXPECT_EQ(At(img, 99, 55), red);
  EXPECT_EQ(At(img, 101, 55), white);
  // min(30, 4% of 100) = 4 < 19: the label is 19 px tall, placed top-left
  // (nothing to avoid): rows 21..40 filled.
  const LabelMetrics m = MagmaLabelMetrics({200, 100}, 1);
  EXPECT_EQ(m.height, 19);
  ASSERT_EQ(marks->size(), 1u);
  EXPECT_EQ((*marks)[0].label, (InputBox{50, 21, 50.0 + m.width, 40}));
  EXPECT_EQ(At(img, 50, 21), red);
  EXPECT_EQ(At(img, 50, 20), white);
  EXPECT_EQ(At(img, 50 + m.width, 39), red);
  // White (anti-aliased) text inside the red label.
  int white_in_label = 0;
  for (int y = 22; y < 40; ++y)
    for (int x = 51; x < 50 + m.width; ++x) white_in_label += At(img, x, y).g >= 200 ? 1 : 0;
  EXPECT_GT(white_in_label, 5);
  EXPECT_EQ((*marks)[0].id, 0);
  EXPECT_EQ((*marks)[0].centre, (PixelPoint{75, 55}));
}

TEST(MagmaSomTest, LabelHeightFollowsTheImage) {
  EXPECT_EQ(MagmaLabelMetrics({1920, 1080}, 3).height, 30);  // min(30, 43.2)
  EXPECT_EQ(MagmaLabelMetrics({1000, 600}, 3).height, 24);   // ceil(0.04 * 600)
  EXPECT_EQ(MagmaLabelMetrics({256, 256}, 1).height, 19);    // the 20 pt floor
  EXPECT_LT(MagmaLabelMetrics({1920, 1080}, 1).width, MagmaLabelMetrics({1920, 1080}, 3).width);
}

// Box A with box B right above it: the top places overlap B; of the places
// that do not, the reference's tie-break (-1e-4 * nearest-corner distance)
// prefers the farthest from B's corners: bottom-right and bottom-left are
// both 51 px away, and bottom-right comes first.
TEST(MagmaSomTest, LeastOverlappingPlaceByHand) {
  cv::Mat img = Flat(300, 200);
  auto marks = DrawSetOfMarks({PixelBox{100, 100, 150, 150}, PixelBox{100, 60, 150, 99}}, Identity(img), {}, &img);
  ASSERT_TRUE(marks.ok());
  const LabelMetrics m = MagmaLabelMetrics({300, 200}, 1);
  EXPECT_EQ((*marks)[0].label, (InputBox{150.0 - m.width, 150, 150, 150.0 + m.height}));
}

TEST(MagmaSomTest, MarkBaseAndFrame) {
  // Boxes in original pixels of a 400x200 image, drawn on a 200x100 input.
  cv::Mat img = Flat(200, 100);
  auto frame = ImageFrame::Create({400, 200}, {200, 100});
  ASSERT_TRUE(frame.ok());
  SomOptions options;
  options.mark_base = 1;
  auto marks = DrawSetOfMarks({PixelBox{100, 80, 200, 140}, PixelBox{300, 20, 380, 60}}, *frame, options, &img);
  ASSERT_TRUE(marks.ok());
  ASSERT_EQ(marks->size(), 2u);
  EXPECT_EQ((*marks)[0].id, 1);
  EXPECT_EQ((*marks)[1].id, 2);
  EXPECT_EQ((*marks)[0].box, (PixelBox{100, 80, 200, 140}));
  EXPECT_EQ((*marks)[0].centre, (PixelPoint{150, 110}));
  EXPECT_EQ((*marks)[0].centre_norm, (NormPoint{0.375, 0.55}));
  // Drawn at half size: the outline of box 1 starts at (50, 40).
  EXPECT_EQ(At(img, 60, 40), (Rgb{255, 0, 0}));
  EXPECT_EQ(At(img, 60, 42), (Rgb{255, 255, 255}));
}

TEST(MagmaSomTest, LabelsStayInsideTheImage) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 40; ++trial) {
    const int w = 200 + static_cast<int>(rng() % 800), h = 150 + static_cast<int>(rng() % 600);
    cv::Mat img = Flat(w, h);
    std::vector<PixelBox> boxes;
    const int n = 1 + static_cast<int>(rng() % 40);
    for (int i = 0; i < n; ++i) {
      const double x = rng() % w, y = rng() % h;
      boxes.push_back({x, y, std::min<double>(w, x + 5 + rng() % 200), std::min<double>(h, y + 5 + rng() % 150)});
    }
    auto marks = DrawSetOfMarks(boxes, Identity(img), {}, &img);
    ASSERT_TRUE(marks.ok());
    for (const Mark& m : *marks) {
      EXPECT_GE(m.label.x1, 0);
      EXPECT_GE(m.label.y1, 0);
      EXPECT_LE(m.label.x2, w);
      EXPECT_LE(m.label.y2, h);
    }
  }
}

TEST(MagmaSomTest, NoLabelOverlapWhenSpaceAllows) {
  // A grid of 40x30 boxes 60 px apart: every box has a free place.
  cv::Mat img = Flat(1000, 700);
  std::vector<PixelBox> boxes;
  for (int r = 0; r < 7; ++r)
    for (int c = 0; c < 10; ++c) boxes.push_back({40.0 + c * 95, 40.0 + r * 90, 80.0 + c * 95, 70.0 + r * 90});
  auto marks = DrawSetOfMarks(boxes, Identity(img), {}, &img);
  ASSERT_TRUE(marks.ok());
  auto overlap = [](const InputBox& a, const PixelBox& b) {
    return std::min(a.x2, b.x2) > std::max(a.x1, b.x1) && std::min(a.y2, b.y2) > std::max(a.y1, b.y1);
  };
  for (size_t i = 0; i < marks->size(); ++i) {
    for (size_t j = 0; j < marks->size(); ++j) {
      if (i == j) continue;
      const InputBox& li = (*marks)[i].label;
      const InputBox& lj = (*marks)[j].label;
      EXPECT_FALSE(overlap(li, PixelBox{lj.x1, lj.y1, lj.x2, lj.y2})) << "labels " << i << " and " << j;
      EXPECT_FALSE(overlap(li, boxes[j])) << "label " << i << " and box " << j;
    }
  }
}

TEST(MagmaSomTest, RejectsBadInput) {
  cv::Mat img = Flat(50, 50);
  const ImageFrame f = Identity(img);
  EXPECT_EQ(DrawSetOfMarks({PixelBox{10, 10, 5, 20}}, f, {}, &img).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DrawSetOfMarks({PixelBox{0, 0, std::nan(""), 20}}, f, {}, &img).status().code(),
            absl::StatusCode::kInvalidArgument);
  std::vector<PixelBox> too_many(kMaxSomBoxes + 1, PixelBox{0, 0, 1, 1});
  EXPECT_EQ(DrawSetOfMarks(too_many, f, {}, &img).status().code(), absl::StatusCode::kInvalidArgument);
  cv::Mat wrong_size = Flat(60, 50);
  auto s = DrawSetOfMarks({PixelBox{1, 1, 5, 5}}, f, {}, &wrong_size);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.status().message().find("60x50"), std::string::npos) << s.status();
  SomOptions negative;
  negative.mark_base = -1;
  EXPECT_FALSE(DrawSetOfMarks({PixelBox{1, 1, 5, 5}}, f, negative, &img).ok());
}

std::vector<PixelBox> GoldenBoxes(double sx, double sy) {
  const double b[][4] = {{20, 40, 90, 70},   {100, 40, 150, 70},   {24, 90, 140, 150}, {60, 100, 80, 120},
                         {170, 20, 236, 60}, {180, 120, 235, 155}, {2, 2, 30, 16},     {200, 70, 239, 110}};
  std::vector<PixelBox> out;
  for (const auto& r : b) out.push_back({r[0] * sx, r[1] * sy, r[2] * sx, r[3] * sy});
  return out;
}

TEST(MagmaSomTest, Golden) {
  cv::Mat img = Screen(240, 160);
  ASSERT_TRUE(DrawSetOfMarks(GoldenBoxes(1, 1), Identity(img), {}, &img).ok());
  ExpectMatchesGolden(img, "som_magma_240x160");
}

// ---------------------------------------------------------------------------
// Set-of-Mark, OmniParser style

TEST(OmniParserSomTest, PaletteTextColourAndPlacement) {
  // 1600x1000: ratio 0.5 -> box and text thickness 1, padding 1, scale 0.4.
  cv::Mat img = Flat(1600, 1000);
  SomOptions o;
  o.style = SomStyle::kOmniParser;
  const std::vector<PixelBox> boxes = {{100, 200, 300, 260}, {500, 0, 600, 40}, {700, 300, 800, 400}};
  auto marks = DrawSetOfMarks(boxes, Identity(img), o, &img);
  ASSERT_TRUE(marks.ok());
  // Palette 0 is #A351FB; it reaches the RGB array as B, G, R.
  EXPECT_EQ(At(img, 200, 260), (Rgb{0xFB, 0x51, 0xA3}));
  // Palette 2 is #FFA1A0 (luminance 189 > 160: black text); palette 0 has
  // luminance 125 (white text).
  auto dark_pixels = [&](const InputBox& l) {
    int n = 0;
    for (int y = static_cast<int>(l.y1); y <= l.y2; ++y)
      for (int x = static_cast<int>(l.x1); x <= l.x2; ++x) {
        const Rgb c = At(img, x, y);
        n += c.r + c.g + c.b < 150 ? 1 : 0;
      }
    return n;
  };
  EXPECT_GT(dark_pixels((*marks)[2].label), 0);
  EXPECT_EQ(dark_pixels((*marks)[0].label), 0);
  // Text "0" at scale 0.4, thickness 1: label above the box at top-left,
  // 2 * padding + text height tall.
  int baseline = 0;
  const cv::Size t0 = cv::getTextSize("0", cv::FONT_HERSHEY_SIMPLEX, 0.4, 1, &baseline);
  EXPECT_EQ((*marks)[0].label, (InputBox{100, 200.0 - 2 - t0.height, 100.0 + 2 + t0.width, 200}));
  // Box 1 touches the top edge: top-left leaves the image, so outer-left.
  const cv::Size t1 = cv::getTextSize("1", cv::FONT_HERSHEY_SIMPLEX, 0.4, 1, &baseline);
  EXPECT_EQ((*marks)[1].label, (InputBox{500.0 - 2 - t1.width, 0, 500, 2.0 + t1.height}));
}

TEST(OmniParserSomTest, Golden) {
  cv::Mat img = Screen(960, 640);
  SomOptions o;
  o.style = SomStyle::kOmniParser;
  ASSERT_TRUE(DrawSetOfMarks(GoldenBoxes(4, 4), Identity(img), o, &img).ok());
  ExpectMatchesGolden(img, "som_omniparser_960x640");
}

// ---------------------------------------------------------------------------
// Trace-of-Mark marks and traces

TEST(PointMarksTest, RedDiscWithCentredWhiteId) {
  cv::Mat img = Flat(400, 300, {0, 0, 0});
  ASSERT_TRUE(DrawPointMarks({{7, {200, 150}}}, Identity(img), &img).ok());
  // The font: the smallest 0.05 step whose "55" is 3% of 400 = 12 px tall.
  double scale = 0;
  for (int step = 2;; ++step) {
    scale = 0.05 * step;
    const int t = std::max(1, static_cast<int>(std::lround(scale)));
    const cv::Size s = cv::getTextSize("55", cv::FONT_HERSHEY_SIMPLEX, scale, t, nullptr);
    if (std::min(s.width, s.height) >= 12) break;
  }
  const int t = std::max(1, static_cast<int>(std::lround(scale)));
  const cv::Size s = cv::getTextSize("7", cv::FONT_HERSHEY_SIMPLEX, scale, t, nullptr);
  const int radius = std::max(s.width, s.height) / 2 + 1;
  // A red disc of that radius (anti-aliased rim) with white text; nothing
  // red beyond it (the text box's corners may poke out, as in the reference).
  int red = 0, white = 0, outside = 0;
  for (int y = 150 - radius - 3; y <= 150 + radius + 3; ++y) {
    for (int x = 200 - radius - 3; x <= 200 + radius + 3; ++x) {
      const Rgb c = At(img, x, y);
      const double d = std::hypot(x - 200, y - 150);
      if (d > radius + 1.5 && c.r > 32 && c.g < c.r / 2) ++outside;  // beyond the rim's faint blend
      red += c == Rgb{255, 0, 0} ? 1 : 0;
      white += c.r == 255 && c.g >= 200 && c.b >= 200 ? 1 : 0;
    }
  }
  EXPECT_EQ(outside, 0);
  EXPECT_GT(red, 0.4 * M_PI * radius * radius);
  EXPECT_GT(white, 3);
  EXPECT_EQ(At(img, 200, 150 + radius), (Rgb{255, 0, 0}));
  EXPECT_EQ(At(img, 200 - radius, 150), (Rgb{255, 0, 0}));
}

TEST(TracesTest, ColoursByTimeAndByStartRow) {
  // By time, cool at s / T with T = 3 points: segments (0, 255, 255) and
  // (85, 170, 255); thickness 2 anti-aliased, so the centre row of a
  // horizontal segment carries the full colour.
  cv::Mat img = Flat(100, 100, {0, 0, 0});
  TraceOptions by_time;
  by_time.coloring = TraceColoring::kByTime;
  ASSERT_TRUE(DrawTraces({{{10, 20}, {40, 20}, {80, 20}}}, Identity(img), by_time, &img).ok());
  EXPECT_EQ(At(img, 25, 20), (Rgb{0, 255, 255}));
  EXPECT_EQ(At(img, 60, 20), (Rgb{85, 170, 255}));
  EXPECT_EQ(At(img, 60, 30), (Rgb{0, 0, 0}));
  // By start row: rows 10 and 90 are the ends of gist_rainbow, row 50 its
  // middle (entry 128).
  cv::Mat rows = Flat(100, 100, {0, 0, 0});
  ASSERT_TRUE(
      DrawTraces({{{10, 10}, {90, 10}}, {{10, 90}, {90, 90}}, {{10, 50}, {90, 50}}}, Identity(rows), {}, &rows).ok());
  EXPECT_EQ(At(rows, 50, 10), (Rgb{255, 0, 40}));
  EXPECT_EQ(At(rows, 50, 90), (Rgb{255, 0, 191}));
  EXPECT_EQ(At(rows, 50, 50), (Rgb{0, 255, 139}));
  // A single trace: equal limits normalise to 0.
  cv::Mat one = Flat(100, 100, {0, 0, 0});
  ASSERT_TRUE(DrawTraces({{{10, 60}, {90, 60}}}, Identity(one), {}, &one).ok());
  EXPECT_EQ(At(one, 50, 60), (Rgb{255, 0, 40}));
}

TEST(TracesTest, PointsFarOutsideTheImageDrawOnlyWhatReachesIt) {
  // Vertical segments between a point 10^9 rows above the image and (50, 50):
  // OpenCV alone would walk every one of those rows for each segment.
  cv::Mat img = Flat(100, 100, {0, 0, 0});
  std::vector<PixelPoint> trace;
  for (int i = 0; i < 1000; ++i) trace.push_back(i % 2 == 0 ? PixelPoint{50, -1e9} : PixelPoint{50, 50});
  TraceOptions options;
  options.thickness = 3;
  ASSERT_TRUE(DrawTraces({trace}, Identity(img), options, &img).ok());
  EXPECT_NE(At(img, 50, 0), (Rgb{0, 0, 0}));
  EXPECT_NE(At(img, 50, 49), (Rgb{0, 0, 0}));
  EXPECT_EQ(At(img, 50, 60), (Rgb{0, 0, 0}));
  EXPECT_EQ(At(img, 70, 20), (Rgb{0, 0, 0}));
  // A path through a point far below and to the right.
  cv::Mat path_img = Flat(100, 100, {0, 0, 0});
  ASSERT_TRUE(DrawPath(Path({{0.5, 0.5, Gripper::kOpen}, {1e7, 1e7, Gripper::kOpen}}), {}, &path_img).ok());
  EXPECT_NE(At(path_img, 75, 75), (Rgb{0, 0, 0}));
  EXPECT_EQ(At(path_img, 25, 75), (Rgb{0, 0, 0}));
}

TEST(TracesTest, RejectsBadInput) {
  cv::Mat img = Flat(20, 20);
  EXPECT_FALSE(DrawTraces({{{1, 1}, {std::nan(""), 2}}}, Identity(img), {}, &img).ok());
  TraceOptions zero;
  zero.thickness = 0;
  EXPECT_FALSE(DrawTraces({{{1, 1}, {2, 2}}}, Identity(img), zero, &img).ok());
  EXPECT_FALSE(DrawPointMarks({{1, {std::nan(""), 1}}}, Identity(img), &img).ok());
  // Too short to draw: fine, nothing drawn.
  EXPECT_TRUE(DrawTraces({{}, {{5, 5}}}, Identity(img), {}, &img).ok());
}

TEST(TraceOfMarkTest, Golden) {
  cv::Mat img = Screen(256, 256);
  const std::vector<std::vector<PixelPoint>> traces = {{{40, 200}, {60, 170}, {90, 150}, {120, 140}},
                                                       {{200, 60}, {180, 90}, {150, 110}},
                                                       {{128, 128}, {140, 100}, {170, 90}, {200, 100}, {220, 130}}};
  ASSERT_TRUE(DrawTraces(traces, Identity(img), {}, &img).ok());
  ASSERT_TRUE(DrawPointMarks({{1, {40, 200}}, {2, {200, 60}}, {3, {128, 128}}}, Identity(img), &img).ok());
  ExpectMatchesGolden(img, "tom_256x256");
  cv::Mat timed = Screen(256, 256);
  TraceOptions by_time;
  by_time.coloring = TraceColoring::kByTime;
  ASSERT_TRUE(DrawTraces(traces, Identity(timed), by_time, &timed).ok());
  ExpectMatchesGolden(timed, "tom_by_time_256x256");
}

}  // namespace
}  // namespace magma::vision
