// Coordinate frames of agent inputs and outputs, and every conversion between
// them. Each point or box type names its frame; nothing else in the server
// converts coordinates by hand.
//
// Frames (origin at the top-left corner, x to the right, y down):
//   original pixels  the image the client sent (what every result is given in)
//   input pixels     the resized image the model sees (overlays are drawn here)
//   normalized       [0, 1] of the image width / height (frame-independent,
//                    because the model input is a stretch of the original)
//   milli            0..1000 of width / height (Magma's <box> answers)
//   grid 256         integer cells 0..255 of a 256 x 256 grid (Trace-of-Mark)
//
// All types are plain values; functions are pure and thread-safe.
#ifndef MAGMA_VISION_GEOMETRY_H_
#define MAGMA_VISION_GEOMETRY_H_

#include <cmath>
#include <ostream>

#include "absl/status/statusor.h"

namespace magma::vision {

// Frame tags for Point and Box.
struct OriginalPixels {};
struct InputPixels {};
struct Normalized {};
struct Milli {};

template <typename Frame>
struct Point {
  double x = 0;
  double y = 0;
};

// An axis-aligned box from its top-left (x1, y1) to its bottom-right (x2, y2)
// corner, continuous coordinates of its frame.
template <typename Frame>
struct Box {
  double x1 = 0;
  double y1 = 0;
  double x2 = 0;
  double y2 = 0;

  double width() const { return x2 - x1; }
  double height() const { return y2 - y1; }
  double area() const { return width() * height(); }
  Point<Frame> centre() const { return {(x1 + x2) / 2, (y1 + y2) / 2}; }
  bool Contains(const Point<Frame>& p) const { return p.x >= x1 && p.x <= x2 && p.y >= y1 && p.y <= y2; }
};

using PixelPoint = Point<OriginalPixels>;
using PixelBox = Box<OriginalPixels>;
using InputPoint = Point<InputPixels>;
using InputBox = Box<InputPixels>;
using NormPoint = Point<Normalized>;
using NormBox = Box<Normalized>;
using MilliPoint = Point<Milli>;
using MilliBox = Box<Milli>;

// Side of the Trace-of-Mark grid.
inline constexpr int kTraceGridSize = 256;

// A cell of the 256 x 256 trace grid; x and y in 0..255.
struct Grid256Point {
  int x = 0;
  int y = 0;
};

template <typename F>
bool operator==(const Point<F>& a, const Point<F>& b) {
  return a.x == b.x && a.y == b.y;
}
template <typename F>
bool operator==(const Box<F>& a, const Box<F>& b) {
  return a.x1 == b.x1 && a.y1 == b.y1 && a.x2 == b.x2 && a.y2 == b.y2;
}
inline bool operator==(const Grid256Point& a, const Grid256Point& b) { return a.x == b.x && a.y == b.y; }

template <typename F>
std::ostream& operator<<(std::ostream& os, const Point<F>& p) {
  return os << "(" << p.x << ", " << p.y << ")";
}
template <typename F>
std::ostream& operator<<(std::ostream& os, const Box<F>& b) {
  return os << "[" << b.x1 << ", " << b.y1 << ", " << b.x2 << ", " << b.y2 << "]";
}
inline std::ostream& operator<<(std::ostream& os, const Grid256Point& p) {
  return os << "[" << p.x << "," << p.y << "]";
}

// Intersection over union of two boxes of one frame; 0 when either is empty.
template <typename F>
double IoU(const Box<F>& a, const Box<F>& b) {
  const double iw = (a.x2 < b.x2 ? a.x2 : b.x2) - (a.x1 > b.x1 ? a.x1 : b.x1);
  const double ih = (a.y2 < b.y2 ? a.y2 : b.y2) - (a.y1 > b.y1 ? a.y1 : b.y1);
  if (iw <= 0 || ih <= 0 || a.area() <= 0 || b.area() <= 0) return 0;
  const double inter = iw * ih;
  return inter / (a.area() + b.area() - inter);
}

struct ImageSize {
  int width = 0;
  int height = 0;
};

inline bool operator==(const ImageSize& a, const ImageSize& b) { return a.width == b.width && a.height == b.height; }

// Relates the client's image (original) to the image the model sees (input).
// Both sizes are positive. The input is a stretch of the original (no
// padding, no crop), so normalized coordinates are the same in both.
class ImageFrame {
 public:
  // INVALID_ARGUMENT unless both sizes are positive.
  static absl::StatusOr<ImageFrame> Create(ImageSize original, ImageSize input);
  // A frame whose model input is the original image itself.
  // REQUIRES: size is positive.
  static ImageFrame Identity(ImageSize size);

  ImageSize original() const { return original_; }
  ImageSize input() const { return input_; }

  // normalized <-> original pixels: x * width.
  PixelPoint ToPixel(const NormPoint& p) const;
  PixelBox ToPixel(const NormBox& b) const;
  NormPoint ToNorm(const PixelPoint& p) const;
  NormBox ToNorm(const PixelBox& b) const;

  // milli <-> original pixels: x / 1000 * width (the Magma UI demo's order).
  PixelPoint ToPixel(const MilliPoint& p) const;
  PixelBox ToPixel(const MilliBox& b) const;
  MilliPoint ToMilli(const PixelPoint& p) const;
  MilliBox ToMilli(const PixelBox& b) const;

  // model input pixels <-> original pixels: scaled by the size ratio.
  PixelPoint ToPixel(const InputPoint& p) const;
  PixelBox ToPixel(const InputBox& b) const;
  InputPoint ToInput(const PixelPoint& p) const;
  InputBox ToInput(const PixelBox& b) const;

  // Trace grid -> original pixels: g / 256 * width, the cell's top-left
  // corner (what Magma's trace demo draws).
  PixelPoint ToPixel(const Grid256Point& g) const;
  // Original pixels -> trace grid: int(256 * x / width), clamped to 0..255,
  // the truncation Magma's training data applies. Exact inverse of ToPixel on
  // grid points.
  Grid256Point ToGrid256(const PixelPoint& p) const;

 private:
  ImageFrame(ImageSize original, ImageSize input) : original_(original), input_(input) {}
  ImageSize original_;
  ImageSize input_;
};

// Frame-independent conversions.
MilliPoint ToMilli(const NormPoint& p);
NormPoint ToNorm(const MilliPoint& p);
NormPoint ToNorm(const Grid256Point& g);

// True when every coordinate of the box is finite and x1 <= x2, y1 <= y2.
template <typename F>
bool IsWellFormed(const Box<F>& b) {
  return std::isfinite(b.x1) && std::isfinite(b.y1) && std::isfinite(b.x2) && std::isfinite(b.y2) && b.x1 <= b.x2 &&
         b.y1 <= b.y2;
}

}  // namespace magma::vision

#endif  // MAGMA_VISION_GEOMETRY_H_
