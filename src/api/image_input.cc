#include "image_input.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "magma/vision/image.h"

namespace magma::api {
namespace {

uint32_t Be32(const unsigned char* p) { return (uint32_t{p[0]} << 24) | (p[1] << 16) | (p[2] << 8) | p[3]; }
uint16_t Be16(const unsigned char* p) { return static_cast<uint16_t>((p[0] << 8) | p[1]); }
uint32_t Le32(const unsigned char* p) { return p[0] | (p[1] << 8) | (p[2] << 16) | (uint32_t{p[3]} << 24); }
uint16_t Le16(const unsigned char* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
uint32_t Le24(const unsigned char* p) { return p[0] | (p[1] << 8) | (p[2] << 16); }

absl::Status Cut(const char* format) {
  return absl::InvalidArgumentError(absl::StrCat("the ", format, " image header is truncated or malformed"));
}

}  // namespace

absl::StatusOr<std::pair<int, int>> PeekImageSize(const std::string& bytes) {
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  const size_t n = bytes.size();
  if (n >= 24 && std::memcmp(p, "\x89PNG\r\n\x1a\n", 8) == 0) {
    if (std::memcmp(p + 12, "IHDR", 4) != 0) return Cut("PNG");
    return std::make_pair(static_cast<int>(Be32(p + 16)), static_cast<int>(Be32(p + 20)));
  }
  if (n >= 4 && p[0] == 0xFF && p[1] == 0xD8) {
    // Walk the segments to the first start-of-frame marker.
    size_t i = 2;
    while (i + 4 <= n) {
      if (p[i] != 0xFF) return Cut("JPEG");
      const unsigned char marker = p[i + 1];
      if (marker == 0xFF) {
        ++i;
        continue;
      }
      if (marker == 0xD8 || (marker >= 0xD0 && marker <= 0xD7) || marker == 0x01) {
        i += 2;
        continue;
      }
      const uint16_t len = Be16(p + i + 2);
      const bool sof = marker >= 0xC0 && marker <= 0xCF && marker != 0xC4 && marker != 0xC8 && marker != 0xCC;
      if (sof) {
        if (i + 9 > n) return Cut("JPEG");
        return std::make_pair(static_cast<int>(Be16(p + i + 7)), static_cast<int>(Be16(p + i + 5)));
      }
      if (len < 2) return Cut("JPEG");
      i += 2 + len;
    }
    return Cut("JPEG");
  }
  if (n >= 30 && std::memcmp(p, "RIFF", 4) == 0 && std::memcmp(p + 8, "WEBP", 4) == 0) {
    if (std::memcmp(p + 12, "VP8 ", 4) == 0) {
      return std::make_pair(static_cast<int>(p[26] | ((p[27] & 0x3F) << 8)),
                            static_cast<int>(p[28] | ((p[29] & 0x3F) << 8)));
    }
    if (std::memcmp(p + 12, "VP8L", 4) == 0) {
      const uint32_t bits = Le32(p + 21);
      return std::make_pair(static_cast<int>((bits & 0x3FFF) + 1), static_cast<int>(((bits >> 14) & 0x3FFF) + 1));
    }
    if (std::memcmp(p + 12, "VP8X", 4) == 0) {
      return std::make_pair(static_cast<int>(Le24(p + 24) + 1), static_cast<int>(Le24(p + 27) + 1));
    }
    return Cut("WebP");
  }
  if (n >= 26 && p[0] == 'B' && p[1] == 'M') {
    if (Le32(p + 14) == 12) {
      // OS/2 1.x (BITMAPCOREHEADER): unsigned 16-bit width and height.
      return std::make_pair(static_cast<int>(Le16(p + 18)), static_cast<int>(Le16(p + 20)));
    }
    // Windows headers: signed 32-bit; a negative height is a top-down image.
    auto magnitude = [](uint32_t v) {
      const int64_t m = std::abs(int64_t{static_cast<int32_t>(v)});
      return static_cast<int>(std::min<int64_t>(m, std::numeric_limits<int>::max()));
    };
    return std::make_pair(magnitude(Le32(p + 18)), magnitude(Le32(p + 22)));
  }
  return absl::InvalidArgumentError("the image is not PNG, JPEG, WebP or BMP");
}

absl::StatusOr<cv::Mat> DecodeClientImage(const v1::Image& image, const ImageLimits& limits, const std::string& what) {
  switch (image.source_case()) {
    case v1::Image::kEncoded: {
      const std::string& bytes = image.encoded();
      if (static_cast<int64_t>(bytes.size()) > limits.max_bytes) {
        return absl::ResourceExhaustedError(absl::StrCat(what, ": ", bytes.size(), " bytes exceeds the limit of ",
                                                         limits.max_bytes));
      }
      auto size = PeekImageSize(bytes);
      if (!size.ok()) return absl::InvalidArgumentError(absl::StrCat(what, ": ", size.status().message()));
      const int64_t pixels = int64_t{size->first} * size->second;
      if (size->first <= 0 || size->second <= 0) {
        return absl::InvalidArgumentError(absl::StrCat(what, ": the header gives an empty image"));
      }
      if (pixels > limits.max_pixels) {
        return absl::ResourceExhaustedError(absl::StrCat(what, ": ", size->first, "x", size->second,
                                                         " pixels exceeds the limit of ", limits.max_pixels));
      }
      auto rgb = vision::DecodeRgb(bytes);
      if (!rgb.ok()) return absl::InvalidArgumentError(absl::StrCat(what, ": ", rgb.status().message()));
      return *rgb;
    }
    case v1::Image::kRaw: {
      const auto& raw = image.raw();
      if (raw.width() <= 0 || raw.height() <= 0) {
        return absl::InvalidArgumentError(absl::StrCat(what, ": raw width and height must be positive"));
      }
      const int64_t pixels = int64_t{raw.width()} * raw.height();
      if (pixels > limits.max_pixels) {
        return absl::ResourceExhaustedError(absl::StrCat(what, ": ", raw.width(), "x", raw.height(),
                                                         " pixels exceeds the limit of ", limits.max_pixels));
      }
      if (static_cast<int64_t>(raw.rgb().size()) != pixels * 3) {
        return absl::InvalidArgumentError(absl::StrCat(what, ": raw rgb has ", raw.rgb().size(), " bytes, ",
                                                       raw.width(), "x", raw.height(), "x3 needs ", pixels * 3));
      }
      cv::Mat m(raw.height(), raw.width(), CV_8UC3);
      std::memcpy(m.data, raw.rgb().data(), raw.rgb().size());
      return m;
    }
    case v1::Image::SOURCE_NOT_SET:
      break;
  }
  return absl::InvalidArgumentError(absl::StrCat(what, ": no image (set encoded or raw)"));
}

}  // namespace magma::api
