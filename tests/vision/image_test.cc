#include "magma/vision/image.h"

#include <cmath>

#include <gtest/gtest.h>
#include <opencv2/imgcodecs.hpp>

#include "magma/util/npy.h"

namespace magma::vision {
namespace {

const std::string kGolden = std::string(MAGMA_TEST_DATA_DIR) + "/magma-tiny-a";

// Grid choices worked out by hand from the reference rule (base 512, 4 crops),
// as listed in the model notes; (rows, cols).
struct GridCase {
  int width, height, rows, cols;
};

void PrintTo(const GridCase& c, std::ostream* os) { *os << c.width << "x" << c.height; }

class SelectGridTest : public ::testing::TestWithParam<GridCase> {};

TEST_P(SelectGridTest, MatchesReferenceRule) {
  const GridCase& c = GetParam();
  Grid g = SelectGrid(c.width, c.height, 512, 4);
  EXPECT_EQ(g.rows, c.rows) << c.width << "x" << c.height;
  EXPECT_EQ(g.cols, c.cols) << c.width << "x" << c.height;
}

INSTANTIATE_TEST_SUITE_P(Table, SelectGridTest,
                         ::testing::Values(GridCase{256, 256, 1, 1}, GridCase{640, 480, 1, 2},
                                           GridCase{1920, 1080, 2, 2}, GridCase{1080, 2400, 3, 1}));

struct PreprocessCase {
  const char* image;
  const char* pixels;
  const char* grid;
};

void PrintTo(const PreprocessCase& c, std::ostream* os) { *os << c.image; }

class GoldenPreprocessTest : public ::testing::TestWithParam<PreprocessCase> {};

TEST_P(GoldenPreprocessTest, MatchesReferenceWithin1e5) {
  auto rgb = ReadRgb(kGolden + "/" + GetParam().image);
  ASSERT_TRUE(rgb.ok()) << rgb.status();
  AnyresOptions options;
  options.base = 64;
  options.max_crops = 4;
  Crops crops = PreprocessAnyres(*rgb, options);
  auto want = npy::Read(kGolden + "/" + GetParam().pixels);
  ASSERT_TRUE(want.ok()) << want.status();
  auto grid = npy::Read(kGolden + "/" + GetParam().grid);
  ASSERT_TRUE(grid.ok());
  EXPECT_EQ(crops.grid.rows, grid->i64[0]);
  EXPECT_EQ(crops.grid.cols, grid->i64[1]);
  ASSERT_EQ(want->shape, (std::vector<int64_t>{crops.num_crops(), 3, 64, 64}));
  ASSERT_EQ(want->f32.size(), crops.pixels.size());
  double max_err = 0;
  for (size_t i = 0; i < crops.pixels.size(); ++i) {
    max_err = std::max(max_err, static_cast<double>(std::abs(crops.pixels[i] - want->f32[i])));
  }
  EXPECT_LE(max_err, 1e-5);
}

INSTANTIATE_TEST_SUITE_P(
    Golden, GoldenPreprocessTest,
    ::testing::Values(PreprocessCase{"image.png", "pixel_values.npy", "image_sizes.npy"},
                      PreprocessCase{"preprocess_cases/img_40x90.png", "preprocess_cases/img_40x90_pixel_values.npy",
                                     "preprocess_cases/img_40x90_image_sizes.npy"},
                      PreprocessCase{"preprocess_cases/img_200x200.png",
                                     "preprocess_cases/img_200x200_pixel_values.npy",
                                     "preprocess_cases/img_200x200_image_sizes.npy"},
                      PreprocessCase{"preprocess_cases/img_300x70.png", "preprocess_cases/img_300x70_pixel_values.npy",
                                     "preprocess_cases/img_300x70_image_sizes.npy"}));

TEST(DecodeTest, RejectsNonImages) {
  auto r = DecodeRgb("definitely not a png");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(DecodeRgb("").ok());
}

TEST(DecodeTest, KeepsTheStoredFrameOfAJpegWithAnExifOrientation) {
  // A 40x20 JPEG whose EXIF block says "rotate 90 degrees clockwise to
  // display" (orientation 6), as phone cameras write. The reference reads
  // images with PIL, which leaves the pixels as stored; so do we, so that
  // coordinates in original pixels are those of the stored image.
  cv::Mat bgr(20, 40, CV_8UC3, cv::Scalar(0, 0, 255));
  bgr(cv::Rect(0, 0, 20, 20)).setTo(cv::Scalar(255, 0, 0));
  std::vector<uchar> jpeg;
  ASSERT_TRUE(cv::imencode(".jpg", bgr, jpeg));
  const std::vector<uchar> exif = {0xFF, 0xE1, 0x00, 0x22, 'E',  'x',  'i',  'f',  0x00, 0x00, 'M',  'M',
                                   0x00, 0x2A, 0x00, 0x00, 0x00, 0x08, 0x00, 0x01, 0x01, 0x12, 0x00, 0x03,
                                   0x00, 0x00, 0x00, 0x01, 0x00, 0x06, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00};
  jpeg.insert(jpeg.begin() + 2, exif.begin(), exif.end());  // after the start-of-image marker
  auto rgb = DecodeRgb(std::string(jpeg.begin(), jpeg.end()));
  ASSERT_TRUE(rgb.ok()) << rgb.status();
  EXPECT_EQ(rgb->cols, 40);
  EXPECT_EQ(rgb->rows, 20);
  // Blue on the left, red on the right, as stored.
  EXPECT_GT(rgb->at<cv::Vec3b>(10, 5)[2], 200);
  EXPECT_GT(rgb->at<cv::Vec3b>(10, 35)[0], 200);
}

TEST(DecodeTest, ConvertsBgrToRgbAndDropsAlpha) {
  cv::Mat bgra(2, 2, CV_8UC4, cv::Scalar(10, 20, 30, 40));  // B, G, R, A
  std::vector<uchar> png;
  ASSERT_TRUE(cv::imencode(".png", bgra, png));
  auto rgb = DecodeRgb(std::string(png.begin(), png.end()));
  ASSERT_TRUE(rgb.ok());
  EXPECT_EQ(rgb->type(), CV_8UC3);
  const auto px = rgb->at<cv::Vec3b>(0, 0);
  EXPECT_EQ(px[0], 30);
  EXPECT_EQ(px[1], 20);
  EXPECT_EQ(px[2], 10);
}

}  // namespace
}  // namespace magma::vision
