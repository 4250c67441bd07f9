#include "magma/vision/image.h"

#include <algorithm>
#include <fstream>
#include <iterator>
#include <limits>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "absl/strings/str_cat.h"
#include "magma/util/file.h"

namespace magma::vision {

absl::StatusOr<cv::Mat> DecodeRgb(const std::string& bytes) {
  if (bytes.empty()) return absl::InvalidArgumentError("image is empty");
  cv::Mat decoded;
  try {
    const cv::Mat buf(1, static_cast<int>(bytes.size()), CV_8UC1, const_cast<char*>(bytes.data()));
    // Pixels as stored, whatever a JPEG's EXIF orientation says, as the
    // reference's PIL reads them.
    decoded = cv::imdecode(buf, cv::IMREAD_COLOR | cv::IMREAD_IGNORE_ORIENTATION);
  } catch (const cv::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("cannot decode image: ", e.what()));
  }
  if (decoded.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot decode image (", bytes.size(), " bytes): not a PNG, JPEG, WebP or BMP"));
  }
  cv::Mat rgb;
  cv::cvtColor(decoded, rgb, cv::COLOR_BGR2RGB);
  return rgb;
}

absl::StatusOr<cv::Mat> ReadRgb(const std::string& path) {
  auto bytes = util::ReadFile(path, "image file");
  if (!bytes.ok()) return bytes.status();
  auto rgb = DecodeRgb(*bytes);
  if (!rgb.ok()) return absl::InvalidArgumentError(absl::StrCat(path, ": ", rgb.status().message()));
  return rgb;
}

Grid SelectGrid(int width, int height, int base, int max_crops) {
  Grid best;
  int64_t best_effective = -1;
  int64_t best_waste = std::numeric_limits<int64_t>::max();
  for (int i = 1; i <= max_crops; ++i) {
    for (int j = 1; j <= max_crops / i; ++j) {
      const int cw = i * base, ch = j * base;
      // Same arithmetic as the reference: float scale, truncating products.
      const double scale = std::min(static_cast<double>(cw) / width, static_cast<double>(ch) / height);
      const int64_t dw = static_cast<int64_t>(width * scale);
      const int64_t dh = static_cast<int64_t>(height * scale);
      const int64_t effective = std::min<int64_t>(dw * dh, static_cast<int64_t>(width) * height);
      const int64_t waste = static_cast<int64_t>(cw) * ch - effective;
      if (effective > best_effective || (effective == best_effective && waste < best_waste)) {
        best_effective = effective;
        best_waste = waste;
        best.cols = i;
        best.rows = j;
      }
    }
  }
  return best;
}

Crops PreprocessAnyres(const cv::Mat& rgb, const AnyresOptions& options) {
  Crops out;
  out.base = options.base;
  out.grid = SelectGrid(rgb.cols, rgb.rows, options.base, options.max_crops);
  // Normalise first, in float32, as the reference's ToTensor + Normalize.
  cv::Mat normalised;
  rgb.convertTo(normalised, CV_32FC3);
  std::vector<cv::Mat> planes;
  cv::split(normalised, planes);
  for (int c = 0; c < 3; ++c) {
    planes[c] = planes[c] / 255.0f;
    planes[c] = (planes[c] - options.mean[c]) / options.std[c];
  }
  const int out_w = out.grid.cols * options.base;
  const int out_h = out.grid.rows * options.base;
  const int s = options.base;
  out.pixels.resize(static_cast<size_t>(out.num_crops()) * 3 * s * s);
  for (int c = 0; c < 3; ++c) {
    cv::Mat resized;
    cv::resize(planes[c], resized, cv::Size(out_w, out_h), 0, 0, cv::INTER_LINEAR);
    for (int r = 0; r < out.grid.rows; ++r) {
      for (int q = 0; q < out.grid.cols; ++q) {
        float* dst = out.pixels.data() + ((static_cast<size_t>(r) * out.grid.cols + q) * 3 + c) * s * s;
        for (int y = 0; y < s; ++y) {
          const float* src = resized.ptr<float>(r * s + y) + q * s;
          std::copy(src, src + s, dst + static_cast<size_t>(y) * s);
        }
      }
    }
  }
  return out;
}

}  // namespace magma::vision
