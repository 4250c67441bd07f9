// Overlays drawn on the image the model sees: Set-of-Mark boxes for UI
// agents, numbered point marks and traces for Trace-of-Mark, and HAMSTER's 2D
// gripper path. Text uses OpenCV's Hershey fonts (no font files).
//
// Images are 8-bit, 3-channel RGB (as vision::DecodeRgb returns them) and are
// modified in place; colours below are RGB. Functions are pure apart from the
// image they draw on and are safe to call concurrently on different images.
#ifndef MAGMA_VISION_OVERLAY_H_
#define MAGMA_VISION_OVERLAY_H_

#include <array>
#include <cstdint>
#include <ostream>
#include <vector>

#include <opencv2/core.hpp>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "magma/vision/geometry.h"

namespace magma::vision {

struct Rgb {
  uint8_t r = 0;
  uint8_t g = 0;
  uint8_t b = 0;
};

inline bool operator==(const Rgb& a, const Rgb& b) { return a.r == b.r && a.g == b.g && a.b == b.b; }
inline bool operator!=(const Rgb& a, const Rgb& b) { return !(a == b); }
inline std::ostream& operator<<(std::ostream& os, const Rgb& c) {
  return os << "(" << int{c.r} << ", " << int{c.g} << ", " << int{c.b} << ")";
}

// ---------------------------------------------------------------------------
// Colormaps

enum class Colormap {
  kJet,          // HAMSTER's path colours (matplotlib "jet", not OpenCV's COLORMAP_JET)
  kGistRainbow,  // traces coloured by starting row (matplotlib "gist_rainbow")
  kCool,         // traces coloured by time (matplotlib "cool")
};

// The 256-entry lookup table matplotlib builds for `map` from its segment
// data (LinearSegmentedColormap, N = 256); channels in [0, 1], RGB order.
const std::array<std::array<double, 3>, 256>& ColormapTable(Colormap map);

// matplotlib's Colormap.__call__ for one float: entry int(x * 256), x == 1
// giving the last entry, x < 0 the first and x > 1 the last. NaN maps to the
// first entry.
std::array<double, 3> ColormapAt(Colormap map, double x);

// The 8-bit colour the reference drawings use: each channel * 255, truncated.
Rgb ColormapRgb(Colormap map, double x);

// ---------------------------------------------------------------------------
// Set-of-Mark for UI agents

enum class SomStyle {
  // Magma's UI agent: red box outlines 2 px wide drawn inside the box edge,
  // white ids on red labels at the least-overlapping of 8 places around
  // the box.
  kMagma,
  // OmniParser's box annotator: one palette colour per box, black or white
  // text by luminance, labels at top-left, outer-left, outer-right or
  // top-right.
  kOmniParser,
};

struct SomOptions {
  // Drawing style. Default kMagma.
  SomStyle style = SomStyle::kMagma;
  // Id of the first box; ids count up in box order. Default 0 (Magma's UI
  // demo numbers marks from 0, its Trace-of-Mark code from 1).
  int mark_base = 0;
};

// Upper bound on boxes per overlay (placement is quadratic in the count).
inline constexpr int kMaxSomBoxes = 2000;

// One row of the mark table a SoM overlay returns.
struct Mark {
  int id = 0;
  PixelBox box;       // the element, original-image pixels (as given)
  PixelPoint centre;  // box centre, original-image pixels: the click point
  NormPoint centre_norm;
  InputBox label;  // where its label was drawn, model-input pixels
};

// Draws `boxes` (original-image pixels) and their ids on `image`, the model
// input of `frame` (its size must equal frame.input()). Returns the mark
// table in box order. INVALID_ARGUMENT when the image is not 8-bit RGB of
// the frame's input size, a box is not finite or has x1 > x2 or y1 > y2, or
// there are more than kMaxSomBoxes boxes. Boxes may extend past the image.
absl::StatusOr<std::vector<Mark>> DrawSetOfMarks(const std::vector<PixelBox>& boxes, const ImageFrame& frame,
                                                 const SomOptions& options, cv::Mat* image);

// The label the kMagma style draws for `text` on an image of `input` size,
// in model-input pixels: text height is fitted so that the label of "555"
// reaches min(30, 4% of the shorter side), and is at least 19 px tall (the
// reference starts from a 20 pt font).
struct LabelMetrics {
  int width = 0;          // label box width, pixels
  int height = 0;         // label box height, pixels
  double font_scale = 0;  // Hershey simplex scale of the text inside
  int thickness = 1;      // text stroke
};
LabelMetrics MagmaLabelMetrics(ImageSize input, int num_digits);

// ---------------------------------------------------------------------------
// Trace-of-Mark

// A numbered point mark (robot / video Trace-of-Mark).
struct PointMark {
  int id = 0;
  PixelPoint point;  // original-image pixels
};

// Draws each mark as a red filled circle (diameter = the id's text box + 2)
// with its id in white, centred; the font is the smallest whose "55" is at
// least 3% of the image width tall. INVALID_ARGUMENT on a wrong image or a
// non-finite point.
absl::Status DrawPointMarks(const std::vector<PointMark>& marks, const ImageFrame& frame, cv::Mat* image);

enum class TraceColoring {
  kByStartRow,  // one colour per trace from its first point's y (the reference's "rainbow" mode)
  kByTime,      // segment s of T points coloured at s / T (the reference's time mode)
};

struct TraceOptions {
  // Default kByStartRow.
  TraceColoring coloring = TraceColoring::kByStartRow;
  // Colormap for kByStartRow. Default gist_rainbow.
  Colormap row_colormap = Colormap::kGistRainbow;
  // Colormap for kByTime. Default cool (what the reference's time mode uses).
  Colormap time_colormap = Colormap::kCool;
  // Line width in model-input pixels. Default 2.
  int thickness = 2;
};

// Draws one anti-aliased polyline per trace (points in original-image pixels,
// drawn in model-input pixels). Start-row colours normalise each trace's
// first y between the smallest and largest first y (all equal -> the
// colormap's start). Traces with fewer than 2 points draw nothing.
// INVALID_ARGUMENT on a wrong image, a non-finite point or thickness < 1.
absl::Status DrawTraces(const std::vector<std::vector<PixelPoint>>& traces, const ImageFrame& frame,
                        const TraceOptions& options, cv::Mat* image);

// ---------------------------------------------------------------------------
// HAMSTER 2D path

enum class Gripper {
  kClosed = 0,  // the reference's GRIPPER_CLOSE and the initial state
  kOpen = 1,
};

struct PathWaypoint {
  NormPoint point;  // [0, 1] of the image the path was predicted on
  Gripper gripper = Gripper::kClosed;
};

struct PathOptions {
  // Points the path is resampled to, equally spaced by arc length. Default
  // 100 (the reference's num_subdivisions). At least 2.
  int num_samples = 100;
  // Circle the first point and every point where the gripper state changes.
  // Default true (the reference demo's draw_action).
  bool mark_gripper_changes = true;
};

// Draws the path exactly as HAMSTER's demo does on an RGB array: scale =
// max(min(W, H) / 512, 1); pixel = int(x * W), int(y * H); resampled points
// truncated to integers; segment k coloured by jet at k / (num_samples - 1)
// (blue first, red last); circles of radius int(7 * scale), blue where the
// gripper closes and red where it opens, drawn before the lines. A single
// point or zero-length pieces are drawn without NaNs (the reference fails on
// them). INVALID_ARGUMENT on a wrong image, an empty path, a non-finite
// point or num_samples < 2.
absl::Status DrawPath(const std::vector<PathWaypoint>& path, const PathOptions& options, cv::Mat* image);

}  // namespace magma::vision

#endif  // MAGMA_VISION_OVERLAY_H_
