#include "magma/vision/geometry.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace magma::vision {

absl::StatusOr<ImageFrame> ImageFrame::Create(ImageSize original, ImageSize input) {
  if (original.width <= 0 || original.height <= 0 || input.width <= 0 || input.height <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("image frame sizes must be positive: original ", original.width, "x",
                                                   original.height, ", input ", input.width, "x", input.height));
  }
  return ImageFrame(original, input);
}

ImageFrame ImageFrame::Identity(ImageSize size) { return ImageFrame(size, size); }

PixelPoint ImageFrame::ToPixel(const NormPoint& p) const { return {p.x * original_.width, p.y * original_.height}; }

PixelBox ImageFrame::ToPixel(const NormBox& b) const {
  return {b.x1 * original_.width, b.y1 * original_.height, b.x2 * original_.width, b.y2 * original_.height};
}

NormPoint ImageFrame::ToNorm(const PixelPoint& p) const { return {p.x / original_.width, p.y / original_.height}; }

NormBox ImageFrame::ToNorm(const PixelBox& b) const {
  return {b.x1 / original_.width, b.y1 / original_.height, b.x2 / original_.width, b.y2 / original_.height};
}

PixelPoint ImageFrame::ToPixel(const MilliPoint& p) const {
  return {p.x / 1000.0 * original_.width, p.y / 1000.0 * original_.height};
}

PixelBox ImageFrame::ToPixel(const MilliBox& b) const {
  const PixelPoint a = ToPixel(MilliPoint{b.x1, b.y1});
  const PixelPoint c = ToPixel(MilliPoint{b.x2, b.y2});
  return {a.x, a.y, c.x, c.y};
}

MilliPoint ImageFrame::ToMilli(const PixelPoint& p) const {
  return {p.x * 1000.0 / original_.width, p.y * 1000.0 / original_.height};
}

MilliBox ImageFrame::ToMilli(const PixelBox& b) const {
  const MilliPoint a = ToMilli(PixelPoint{b.x1, b.y1});
  const MilliPoint c = ToMilli(PixelPoint{b.x2, b.y2});
  return {a.x, a.y, c.x, c.y};
}

PixelPoint ImageFrame::ToPixel(const InputPoint& p) const {
  return {p.x * original_.width / input_.width, p.y * original_.height / input_.height};
}

PixelBox ImageFrame::ToPixel(const InputBox& b) const {
  const PixelPoint a = ToPixel(InputPoint{b.x1, b.y1});
  const PixelPoint c = ToPixel(InputPoint{b.x2, b.y2});
  return {a.x, a.y, c.x, c.y};
}

InputPoint ImageFrame::ToInput(const PixelPoint& p) const {
  return {p.x * input_.width / original_.width, p.y * input_.height / original_.height};
}

InputBox ImageFrame::ToInput(const PixelBox& b) const {
  const InputPoint a = ToInput(PixelPoint{b.x1, b.y1});
  const InputPoint c = ToInput(PixelPoint{b.x2, b.y2});
  return {a.x, a.y, c.x, c.y};
}

PixelPoint ImageFrame::ToPixel(const Grid256Point& g) const {
  // g * width / 256 is exact in binary floating point, so ToGrid256 recovers g.
  return {static_cast<double>(g.x) * original_.width / kTraceGridSize,
          static_cast<double>(g.y) * original_.height / kTraceGridSize};
}

Grid256Point ImageFrame::ToGrid256(const PixelPoint& p) const {
  auto cell = [](double v, int size) {
    const double g = kTraceGridSize * v / size;
    if (!(g >= 0)) return 0;  // negative or NaN
    return static_cast<int>(std::min<double>(g, kTraceGridSize - 1));
  };
  return {cell(p.x, original_.width), cell(p.y, original_.height)};
}

MilliPoint ToMilli(const NormPoint& p) { return {p.x * 1000.0, p.y * 1000.0}; }

NormPoint ToNorm(const MilliPoint& p) { return {p.x / 1000.0, p.y / 1000.0}; }

NormPoint ToNorm(const Grid256Point& g) {
  return {static_cast<double>(g.x) / kTraceGridSize, static_cast<double>(g.y) / kTraceGridSize};
}

}  // namespace magma::vision
