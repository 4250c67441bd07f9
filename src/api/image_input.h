// Client images: size limits checked from the encoded header BEFORE any
// decoding, then decoding to RGB (private to the api component).
#ifndef MAGMA_SRC_API_IMAGE_INPUT_H_
#define MAGMA_SRC_API_IMAGE_INPUT_H_

#include <cstdint>
#include <string>

#include <opencv2/core.hpp>

#include "absl/status/statusor.h"
#include "magma/v1/agent.pb.h"

namespace magma::api {

struct ImageLimits {
  int64_t max_bytes = 16 << 20;        // encoded size
  int64_t max_pixels = 4096 * 4096;    // width * height
};

// Width and height from a PNG, JPEG, WebP or BMP header, without decoding.
// INVALID_ARGUMENT when the format is not recognised or the header is cut.
absl::StatusOr<std::pair<int, int>> PeekImageSize(const std::string& bytes);

// Checks limits (RESOURCE_EXHAUSTED naming the limit) and decodes
// (INVALID_ARGUMENT when undecodable). `what` names the field in messages,
// e.g. "screenshot".
absl::StatusOr<cv::Mat> DecodeClientImage(const v1::Image& image, const ImageLimits& limits, const std::string& what);

}  // namespace magma::api

#endif  // MAGMA_SRC_API_IMAGE_INPUT_H_
