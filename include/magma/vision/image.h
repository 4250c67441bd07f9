// Decoding client images and the Magma any-res preprocessing, with OpenCV
// only (no libtorch): runs on RPC or worker threads, never the model thread.
#ifndef MAGMA_VISION_IMAGE_H_
#define MAGMA_VISION_IMAGE_H_

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include <opencv2/core.hpp>

#include "absl/status/statusor.h"

namespace magma::vision {

// Decodes PNG/JPEG/WebP/BMP bytes into an 8-bit 3-channel RGB image (alpha is
// dropped, grey is expanded; a JPEG's EXIF orientation is not applied, as PIL
// does not). INVALID_ARGUMENT when the bytes are not an image.
absl::StatusOr<cv::Mat> DecodeRgb(const std::string& bytes);

// Reads and decodes a file (NOT_FOUND if unreadable).
absl::StatusOr<cv::Mat> ReadRgb(const std::string& path);

// The any-res crop grid chosen for an image.
struct Grid {
  int rows = 1;  // crops stacked vertically
  int cols = 1;  // crops side by side
};

// Picks the grid the reference picks for a width x height image: among
// (cols*base, rows*base) with cols = 1..max_crops and rows = 1..max_crops/cols,
// the one keeping the most effective pixels after aspect-preserving scaling,
// ties to the least waste, then the first found.
Grid SelectGrid(int width, int height, int base, int max_crops);

struct AnyresOptions {
  std::array<float, 3> mean = {0.48145466f, 0.4578275f, 0.40821073f};  // per RGB channel
  std::array<float, 3> std = {0.26862954f, 0.26130258f, 0.27577711f};
  int base = 512;       // crop side, pixels
  int max_crops = 4;
};

// Crops ready for the vision tower: `pixels` holds rows*cols crops of
// [3, base, base] float32, row-major over the grid (crop = row*cols + col).
struct Crops {
  Grid grid;
  int base = 0;
  std::vector<float> pixels;  // [rows*cols, 3, base, base]
  int num_crops() const { return grid.rows * grid.cols; }
};

// The reference pipeline: RGB/255, normalise with mean/std FIRST, then a
// bilinear resize (half-pixel centres, no antialias, aspect not preserved)
// of the normalised image to (cols*base, rows*base), cut into crops.
// REQUIRES: rgb is CV_8UC3 RGB and non-empty.
Crops PreprocessAnyres(const cv::Mat& rgb, const AnyresOptions& options);

}  // namespace magma::vision

#endif  // MAGMA_VISION_IMAGE_H_
