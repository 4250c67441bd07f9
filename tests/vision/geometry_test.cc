#include "magma/vision/geometry.h"

#include <gtest/gtest.h>

namespace magma::vision {
namespace {

ImageFrame Frame(int ow, int oh, int iw, int ih) {
  auto f = ImageFrame::Create({ow, oh}, {iw, ih});
  EXPECT_TRUE(f.ok()) << f.status();
  return *f;
}

TEST(ImageFrameTest, RejectsNonPositiveSizes) {
  for (auto [ow, oh, iw, ih] :
       std::vector<std::array<int, 4>>{{0, 10, 10, 10}, {10, -1, 10, 10}, {10, 10, 0, 10}, {10, 10, 10, 0}}) {
    auto f = ImageFrame::Create({ow, oh}, {iw, ih});
    ASSERT_FALSE(f.ok());
    EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument);
  }
}

// Hand-computed conversions on a 1920x1080 screenshot seen by the model as
// 1024x576.
TEST(ImageFrameTest, HandComputedConversions) {
  const ImageFrame f = Frame(1920, 1080, 1024, 576);
  EXPECT_EQ(f.ToPixel(NormPoint{0.25, 0.5}), (PixelPoint{480, 540}));
  EXPECT_EQ(f.ToNorm(PixelPoint{960, 270}), (NormPoint{0.5, 0.25}));
  // <box>(100,200),(300,400)</box>: centre (200, 300) / 1000 * size.
  EXPECT_EQ(f.ToPixel(MilliBox{100, 200, 300, 400}.centre()), (PixelPoint{384, 324}));
  EXPECT_EQ(f.ToMilli(PixelPoint{192, 108}), (MilliPoint{100, 100}));
  // Model input -> original: x * 1920 / 1024 = x * 1.875.
  EXPECT_EQ(f.ToPixel(InputPoint{512, 288}), (PixelPoint{960, 540}));
  EXPECT_EQ(f.ToInput(PixelBox{0, 0, 1920, 1080}), (InputBox{0, 0, 1024, 576}));
  // Grid cell 128 is the middle: 128 / 256 * 1920.
  EXPECT_EQ(f.ToPixel(Grid256Point{128, 64}), (PixelPoint{960, 270}));
  EXPECT_EQ(f.ToGrid256(PixelPoint{959.9, 270}), (Grid256Point{127, 64}));
  EXPECT_EQ(f.ToGrid256(PixelPoint{1919.9, 1079.9}), (Grid256Point{255, 255}));
  EXPECT_EQ(f.ToGrid256(PixelPoint{-5, 5000}), (Grid256Point{0, 255}));  // clamped
  EXPECT_EQ(ToNorm(Grid256Point{64, 192}), (NormPoint{0.25, 0.75}));
  EXPECT_EQ(ToMilli(NormPoint{0.5, 0.125}), (MilliPoint{500, 125}));
  EXPECT_EQ(ToNorm(MilliPoint{250, 1000}), (NormPoint{0.25, 1.0}));
}

struct FrameCase {
  int ow, oh, iw, ih;
};

class RoundTripTest : public ::testing::TestWithParam<FrameCase> {};

TEST_P(RoundTripTest, PointsSurviveEveryFrame) {
  const FrameCase& c = GetParam();
  const ImageFrame f = Frame(c.ow, c.oh, c.iw, c.ih);
  for (double x : {0.0, 1.0, 17.5, c.ow / 3.0, c.ow - 0.25, static_cast<double>(c.ow)}) {
    for (double y : {0.0, 2.25, c.oh / 7.0, static_cast<double>(c.oh)}) {
      const PixelPoint p{x, y};
      const PixelPoint via_norm = f.ToPixel(f.ToNorm(p));
      const PixelPoint via_milli = f.ToPixel(f.ToMilli(p));
      const PixelPoint via_input = f.ToPixel(f.ToInput(p));
      EXPECT_NEAR(via_norm.x, x, 1e-9 * c.ow);
      EXPECT_NEAR(via_norm.y, y, 1e-9 * c.oh);
      EXPECT_NEAR(via_milli.x, x, 1e-9 * c.ow);
      EXPECT_NEAR(via_milli.y, y, 1e-9 * c.oh);
      EXPECT_NEAR(via_input.x, x, 1e-9 * c.ow);
      EXPECT_NEAR(via_input.y, y, 1e-9 * c.oh);
    }
  }
}

TEST_P(RoundTripTest, GridCellsAreExact) {
  const FrameCase& c = GetParam();
  const ImageFrame f = Frame(c.ow, c.oh, c.iw, c.ih);
  for (int g = 0; g < kTraceGridSize; ++g) {
    const Grid256Point p{g, kTraceGridSize - 1 - g};
    EXPECT_EQ(f.ToGrid256(f.ToPixel(p)), p) << c.ow << "x" << c.oh << " cell " << g;
  }
}

TEST_P(RoundTripTest, BoxesKeepTheirCorners) {
  const FrameCase& c = GetParam();
  const ImageFrame f = Frame(c.ow, c.oh, c.iw, c.ih);
  const PixelBox b{c.ow * 0.1, c.oh * 0.2, c.ow * 0.7, c.oh * 0.9};
  const PixelBox back = f.ToPixel(f.ToInput(b));
  EXPECT_NEAR(back.x1, b.x1, 1e-9 * c.ow);
  EXPECT_NEAR(back.y2, b.y2, 1e-9 * c.oh);
  const PixelBox via_milli = f.ToPixel(f.ToMilli(b));
  EXPECT_NEAR(via_milli.x2, b.x2, 1e-9 * c.ow);
  EXPECT_NEAR(via_milli.y1, b.y1, 1e-9 * c.oh);
  const PixelBox via_norm = f.ToPixel(f.ToNorm(b));
  EXPECT_NEAR(via_norm.x1, b.x1, 1e-9 * c.ow);
  EXPECT_NEAR(via_norm.y2, b.y2, 1e-9 * c.oh);
}

INSTANTIATE_TEST_SUITE_P(Frames, RoundTripTest,
                         ::testing::Values(FrameCase{1920, 1080, 1024, 576}, FrameCase{640, 480, 256, 256},
                                           FrameCase{1080, 2400, 512, 1536}, FrameCase{333, 777, 333, 777},
                                           FrameCase{1, 1, 512, 512}));

TEST(BoxTest, AreaCentreContainsAndIoU) {
  const PixelBox a{0, 0, 10, 10}, b{5, 5, 15, 15};
  EXPECT_EQ(a.area(), 100);
  EXPECT_EQ(a.centre(), (PixelPoint{5, 5}));
  EXPECT_TRUE(a.Contains({10, 10}));
  EXPECT_FALSE(a.Contains({10.01, 3}));
  EXPECT_DOUBLE_EQ(IoU(a, b), 25.0 / 175.0);
  EXPECT_EQ(IoU(a, PixelBox{20, 20, 30, 30}), 0);
  EXPECT_EQ(IoU(a, PixelBox{3, 3, 3, 9}), 0);  // empty box
  EXPECT_TRUE(IsWellFormed(a));
  EXPECT_FALSE(IsWellFormed(PixelBox{5, 0, 4, 1}));
  EXPECT_FALSE(IsWellFormed(PixelBox{0, 0, std::nan(""), 1}));
}

}  // namespace
}  // namespace magma::vision
