#include "magma/vision/overlay.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>

#include <opencv2/imgproc.hpp>

#include "absl/strings/str_cat.h"

namespace magma::vision {
namespace {

// ---------------------------------------------------------------------------
// Colormaps, rebuilt from matplotlib's segment data (matplotlib/_cm.py) the
// way LinearSegmentedColormap builds its lookup table
// (colors._create_lookup_table), in the same float64 operation order, so
// the 8-bit truncations downstream agree with the reference drawings.

struct Segment {
  double x, y0, y1;
};
using Channel = std::vector<Segment>;

constexpr int kLutSize = 256;
using Lut = std::array<std::array<double, 3>, kLutSize>;

std::array<double, kLutSize> MappingArray(const Channel& data) {
  const int n = kLutSize;
  std::vector<double> x(data.size());
  for (size_t i = 0; i < data.size(); ++i) x[i] = data[i].x * (n - 1);
  std::array<double, kLutSize> lut{};
  lut[0] = data.front().y1;
  lut[n - 1] = data.back().y0;
  const double step = 1.0 / (n - 1);  // np.linspace(0, 1, n)
  for (int i = 1; i < n - 1; ++i) {
    const double xind = (n - 1) * (i * step);
    // np.searchsorted(x, xind), side="left".
    const size_t ind = std::lower_bound(x.begin(), x.end(), xind) - x.begin();
    const double distance = (xind - x[ind - 1]) / (x[ind] - x[ind - 1]);
    lut[i] = distance * (data[ind].y0 - data[ind - 1].y1) + data[ind - 1].y1;
  }
  for (double& v : lut) v = std::clamp(v, 0.0, 1.0);
  return lut;
}

Lut BuildLut(const Channel& r, const Channel& g, const Channel& b) {
  const auto lr = MappingArray(r), lg = MappingArray(g), lb = MappingArray(b);
  Lut lut;
  for (int i = 0; i < kLutSize; ++i) lut[i] = {lr[i], lg[i], lb[i]};
  return lut;
}

// LinearSegmentedColormap.from_list: each (x, colour) stop becomes (x, c, c).
Lut BuildLutFromList(const std::vector<std::pair<double, std::array<double, 3>>>& stops) {
  Channel ch[3];
  for (const auto& [x, c] : stops) {
    for (int k = 0; k < 3; ++k) ch[k].push_back({x, c[k], c[k]});
  }
  return BuildLut(ch[0], ch[1], ch[2]);
}

const Lut& JetLut() {
  static const Lut lut = BuildLut({{0.0, 0, 0}, {0.35, 0, 0}, {0.66, 1, 1}, {0.89, 1, 1}, {1.0, 0.5, 0.5}},
                                  {{0.0, 0, 0}, {0.125, 0, 0}, {0.375, 1, 1}, {0.64, 1, 1}, {0.91, 0, 0}, {1.0, 0, 0}},
                                  {{0.0, 0.5, 0.5}, {0.11, 1, 1}, {0.34, 1, 1}, {0.65, 0, 0}, {1.0, 0, 0}});
  return lut;
}

const Lut& GistRainbowLut() {
  static const Lut lut = BuildLutFromList({{0.000, {1.00, 0.00, 0.16}},
                                           {0.030, {1.00, 0.00, 0.00}},
                                           {0.215, {1.00, 1.00, 0.00}},
                                           {0.400, {0.00, 1.00, 0.00}},
                                           {0.586, {0.00, 1.00, 1.00}},
                                           {0.770, {0.00, 0.00, 1.00}},
                                           {0.954, {1.00, 0.00, 1.00}},
                                           {1.000, {1.00, 0.00, 0.75}}});
  return lut;
}

const Lut& CoolLut() {
  static const Lut lut = BuildLut({{0.0, 0, 0}, {1.0, 1, 1}}, {{0.0, 1, 1}, {1.0, 0, 0}}, {{0.0, 1, 1}, {1.0, 1, 1}});
  return lut;
}

cv::Scalar ToScalar(const Rgb& c) { return cv::Scalar(c.r, c.g, c.b); }

absl::Status CheckImage(const cv::Mat* image) {
  if (image == nullptr || image->empty()) return absl::InvalidArgumentError("overlay: image is empty");
  if (image->type() != CV_8UC3) {
    return absl::InvalidArgumentError(
        absl::StrCat("overlay: image must be 8-bit RGB (CV_8UC3), got type ", image->type()));
  }
  return absl::OkStatus();
}

absl::Status CheckImage(const cv::Mat* image, const ImageFrame& frame) {
  if (auto s = CheckImage(image); !s.ok()) return s;
  if (image->cols != frame.input().width || image->rows != frame.input().height) {
    return absl::InvalidArgumentError(absl::StrCat("overlay: image is ", image->cols, "x", image->rows,
                                                   " but the frame's model input is ", frame.input().width, "x",
                                                   frame.input().height));
  }
  return absl::OkStatus();
}

bool Finite(const PixelPoint& p) { return std::isfinite(p.x) && std::isfinite(p.y); }

// Python's int() of a float (truncation toward zero), kept inside int range
// so that far-away points stay far away instead of overflowing.
int TruncToInt(double v) {
  constexpr double kLimit = 1 << 28;
  return static_cast<int>(std::clamp(v, -kLimit, kLimit));
}

// ---------------------------------------------------------------------------
// Set-of-Mark, Magma style (Magma agents/ui_agent/util/som.py).

// A box as the reference's (y, x, h, w) tuple, in integer model-input pixels.
struct YxhwBox {
  int y, x, h, w;
  bool operator==(const YxhwBox& o) const { return y == o.y && x == o.x && h == o.h && w == o.w; }
};

int64_t IntersectionArea(const YxhwBox& a, const YxhwBox& b) {
  const int64_t y_min = std::max(a.y, b.y), x_min = std::max(a.x, b.x);
  const int64_t y_max = std::min<int64_t>(int64_t{a.y} + a.h, int64_t{b.y} + b.h);
  const int64_t x_max = std::min<int64_t>(int64_t{a.x} + a.w, int64_t{b.x} + b.w);
  return std::max<int64_t>(0, y_max - y_min) * std::max<int64_t>(0, x_max - x_min);
}

// Squared distance between the nearest corners of two boxes.
int64_t NearestCornerDistance2(const YxhwBox& a, const YxhwBox& b) {
  const int64_t ay[2] = {a.y, int64_t{a.y} + a.h}, ax[2] = {a.x, int64_t{a.x} + a.w};
  const int64_t by[2] = {b.y, int64_t{b.y} + b.h}, bx[2] = {b.x, int64_t{b.x} + b.w};
  int64_t best = std::numeric_limits<int64_t>::max();
  for (int64_t y1 : ay)
    for (int64_t x1 : ax)
      for (int64_t y2 : by)
        for (int64_t x2 : bx) best = std::min(best, (y1 - y2) * (y1 - y2) + (x1 - x2) * (x1 - x2));
  return best;
}

// Squared distance between two boxes as point sets: a lower bound of the
// nearest-corner distance.
int64_t GapDistance2(const YxhwBox& a, const YxhwBox& b) {
  const int64_t dx = std::max<int64_t>({0, int64_t{b.x} - (int64_t{a.x} + a.w), int64_t{a.x} - (int64_t{b.x} + b.w)});
  const int64_t dy = std::max<int64_t>({0, int64_t{b.y} - (int64_t{a.y} + a.h), int64_t{a.y} - (int64_t{b.y} + b.h)});
  return dx * dx + dy * dy;
}

double CornerPenalty(int64_t distance2) { return 0.0001 * std::sqrt(static_cast<double>(distance2)); }

// A uniform grid over the image holding every box and every label drawn so
// far, so that a label place only looks at its neighbourhood. Rectangles
// reaching past the image are filed in the border cells they clamp to,
// which never makes them look farther than they are.
class PlacementIndex {
 public:
  PlacementIndex(int image_w, int image_h)
      : cols_(std::max(1, (image_w + kCell - 1) / kCell)),
        rows_(std::max(1, (image_h + kCell - 1) / kCell)),
        cells_(static_cast<size_t>(cols_) * rows_) {}

  int Add(const YxhwBox& r) {
    const int id = static_cast<int>(rects_.size());
    rects_.push_back(r);
    seen_.push_back(0);
    int c0, c1, r0, r1;
    Range(r, &c0, &c1, &r0, &r1);
    for (int y = r0; y <= r1; ++y)
      for (int x = c0; x <= c1; ++x) cells_[static_cast<size_t>(y) * cols_ + x].push_back(id);
    return id;
  }

  // Calls visit(rect) once for every rectangle filed in a cell at Chebyshev
  // ring `ring` around the cells of `r` (ring 0: those cells); returns false
  // when the ring lies wholly outside the grid.
  template <typename Visit>
  bool VisitRing(const YxhwBox& r, int ring, Visit&& visit) {
    int c0, c1, r0, r1;
    Range(r, &c0, &c1, &r0, &r1);
    c0 -= ring, c1 += ring, r0 -= ring, r1 += ring;
    if (c0 < 0 && r0 < 0 && c1 >= cols_ && r1 >= rows_) return false;
    for (int y = std::max(r0, 0); y <= std::min(r1, rows_ - 1); ++y) {
      const bool edge_row = y == r0 || y == r1;
      for (int x = std::max(c0, 0); x <= std::min(c1, cols_ - 1); ++x) {
        if (!edge_row && x != c0 && x != c1) continue;  // interior: an earlier ring
        for (int id : cells_[static_cast<size_t>(y) * cols_ + x]) {
          if (seen_[id] == epoch_) continue;
          seen_[id] = epoch_;
          visit(rects_[id]);
        }
      }
    }
    return true;
  }

  // Starts a new query: every rectangle counts as unvisited again.
  void NewQuery() { ++epoch_; }

  static constexpr int kCell = 64;

 private:
  void Range(const YxhwBox& r, int* c0, int* c1, int* r0, int* r1) const {
    auto cell = [](int64_t v, int n) {
      return static_cast<int>(std::clamp<int64_t>(v < 0 ? -1 : v / kCell, 0, n - 1));
    };
    *c0 = cell(r.x, cols_);
    *c1 = cell(int64_t{r.x} + r.w, cols_);
    *r0 = cell(r.y, rows_);
    *r1 = cell(int64_t{r.y} + r.h, rows_);
  }

  int cols_, rows_;
  std::vector<std::vector<int>> cells_;
  std::vector<YxhwBox> rects_;
  std::vector<uint32_t> seen_;
  uint32_t epoch_ = 0;
};

// The reference's _find_least_overlapping_corner: of 8 label places that fit
// in the image, the one whose worst "intersection area - 1e-4 * nearest
// corner distance" against every other box and every label drawn so far is
// smallest; ties keep the earlier place. Boxes equal to `box` are skipped,
// as np.array_equal skips them there. Returns false when no place fits (the
// reference then falls back to the first, which may leave the image).
//
// Same result as the reference's scan over all rectangles, found through
// the index: the worst value is the larger of (a) the worst over
// rectangles the place overlaps, all of which share a cell with it, and
// (b) -1e-4 * the smallest nearest-corner distance, found by widening rings
// of cells until no farther cell can hold anything nearer. Part (b) can only
// matter when (a) is negative.
bool LeastOverlappingPlace(const YxhwBox& box, int label_h, int label_w, int image_h, int image_w,
                           PlacementIndex* index, YxhwBox* out) {
  const int y = box.y, x = box.x, h = box.h, w = box.w;
  const int places[8][2] = {
      {y - label_h, x},                // top-left
      {y - label_h, x + w - label_w},  // top-right
      {y, x + w},                      // right-top
      {y + h - label_h, x + w},        // right-bottom
      {y + h, x + w - label_w},        // bottom-right
      {y + h, x},                      // bottom-left
      {y + h - label_h, x - label_w},  // left-bottom
      {y, x - label_w},                // left-top
  };
  bool found = false;
  double best = std::numeric_limits<double>::infinity();
  for (const auto& place : places) {
    const YxhwBox cand{place[0], place[1], label_h, label_w};
    if (cand.y < 0 || cand.x < 0 || cand.y + label_h > image_h || cand.x + label_w > image_w) continue;
    double worst = -static_cast<double>(image_w + image_h);
    index->NewQuery();
    index->VisitRing(cand, 0, [&](const YxhwBox& other) {
      if (other == box) return;
      const int64_t area = IntersectionArea(cand, other);
      if (area > 0)
        worst = std::max(worst, static_cast<double>(area) - CornerPenalty(NearestCornerDistance2(cand, other)));
    });
    if (worst >= best) continue;
    if (worst < 0) {
      // (b): nearest corners over all rectangles (overlapping ones too:
      // for them -penalty is below the value already counted).
      int64_t nearest = std::numeric_limits<int64_t>::max();
      index->NewQuery();
      for (int ring = 0;; ++ring) {
        const bool inside = index->VisitRing(cand, ring, [&](const YxhwBox& other) {
          if (other == box) return;
          if (GapDistance2(cand, other) >= nearest) return;
          nearest = std::min(nearest, NearestCornerDistance2(cand, other));
        });
        const int64_t reach = int64_t{ring} * PlacementIndex::kCell;
        if (!inside || (nearest != std::numeric_limits<int64_t>::max() && reach * reach >= nearest)) break;
        if (nearest != std::numeric_limits<int64_t>::max() && -CornerPenalty(nearest) >= best) break;
      }
      if (nearest != std::numeric_limits<int64_t>::max()) worst = std::max(worst, -CornerPenalty(nearest));
    }
    if (worst < best) {
      best = worst;
      *out = cand;
      found = true;
    }
  }
  return found;
}

// PIL's ImageDraw.rectangle(outline, width) (ImagingDrawRectangle): for
// i < width, rows y0 + i and y1 - i across [x0, x1], and columns x0 + i and
// x1 - i between rows y0 + width and y1 - width, all inclusive and in either
// order (so boxes thinner than the outline spill as they do in PIL).
void PilOutline(cv::Mat* image, int x0, int y0, int x1, int y1, int width, const cv::Scalar& colour) {
  const cv::Rect bounds(0, 0, image->cols, image->rows);
  auto fill = [&](int ax, int ay, int bx, int by) {  // inclusive corners, any order
    const cv::Rect r =
        cv::Rect(cv::Point(std::min(ax, bx), std::min(ay, by)), cv::Point(std::max(ax, bx) + 1, std::max(ay, by) + 1)) &
        bounds;
    if (r.area() > 0) (*image)(r).setTo(colour);
  };
  for (int i = 0; i < width; ++i) {
    fill(x0, y0 + i, x1, y0 + i);
    fill(x0, y1 - i, x1, y1 - i);
    fill(x1 - i, y0 + width, x1 - i, y1 - width);
    fill(x0 + i, y0 + width, x0 + i, y1 - width);
  }
}

constexpr int kMagmaOutlineWidth = 2;
constexpr int kMagmaMinLabelHeight = 19;  // Arial 20's "555" box, the reference's starting font
const cv::Scalar kRed(255, 0, 0);
const cv::Scalar kWhite(255, 255, 255);

std::string Fives(int n) { return std::string(static_cast<size_t>(std::max(n, 1)), '5'); }

// White anti-aliased digits rendered once per label size and blended into
// each label: thick anti-aliased Hershey strokes cost tens of microseconds
// per label, a blend about one.
class DigitSprites {
 public:
  DigitSprites(double scale, int thickness) : scale_(scale), thickness_(thickness) {
    int baseline = 0;
    const cv::Size one = cv::getTextSize("0", cv::FONT_HERSHEY_SIMPLEX, scale, thickness, &baseline);
    const cv::Size two = cv::getTextSize("00", cv::FONT_HERSHEY_SIMPLEX, scale, thickness, &baseline);
    advance_ = two.width - one.width;
    margin_ = thickness + 2;
    ascent_ = one.height;
    for (int d = 0; d < 10; ++d) {
      sprites_[d] = cv::Mat::zeros(ascent_ + baseline + 2 * margin_, one.width + 2 * margin_, CV_8UC1);
      cv::putText(sprites_[d], std::string(1, static_cast<char>('0' + d)), cv::Point(margin_, margin_ + ascent_),
                  cv::FONT_HERSHEY_SIMPLEX, scale, cv::Scalar(255), thickness, cv::LINE_AA);
    }
  }

  // Draws `digits` centred in the label whose top-left is (x, y) and whose
  // inclusive extent is (width + 1) x (height + 1) pixels.
  void DrawCentred(const std::string& digits, int x, int y, int width, int height, cv::Mat* image) const {
    const cv::Size size = cv::getTextSize(digits, cv::FONT_HERSHEY_SIMPLEX, scale_, thickness_, nullptr);
    int ox = x + (width + 1 - size.width) / 2;
    const int oy = y + (height + 1 + size.height) / 2;
    for (char c : digits) {
      if (c >= '0' && c <= '9') Blend(sprites_[c - '0'], ox - margin_, oy - ascent_ - margin_, image);
      ox += advance_;
    }
  }

 private:
  static void Blend(const cv::Mat& alpha, int left, int top, cv::Mat* image) {
    const cv::Rect dst = cv::Rect(left, top, alpha.cols, alpha.rows) & cv::Rect(0, 0, image->cols, image->rows);
    for (int y = dst.y; y < dst.y + dst.height; ++y) {
      const uint8_t* a = alpha.ptr<uint8_t>(y - top) + (dst.x - left);
      cv::Vec3b* p = image->ptr<cv::Vec3b>(y) + dst.x;
      for (int x = 0; x < dst.width; ++x) {
        if (a[x] == 0) continue;
        for (int k = 0; k < 3; ++k) p[x][k] = static_cast<uint8_t>(p[x][k] + ((255 - p[x][k]) * a[x] + 127) / 255);
      }
    }
  }

  double scale_;
  int thickness_;
  int advance_ = 0, margin_ = 0, ascent_ = 0;
  cv::Mat sprites_[10];
};

std::vector<InputBox> DrawMagmaSom(const std::vector<InputBox>& boxes, int mark_base, cv::Mat* image) {
  const int image_w = image->cols, image_h = image->rows;
  std::vector<YxhwBox> yxhw;
  yxhw.reserve(boxes.size());
  for (const InputBox& b : boxes) {
    // PIL casts rectangle coordinates to int (truncation).
    const int x1 = TruncToInt(b.x1), y1 = TruncToInt(b.y1), x2 = TruncToInt(b.x2), y2 = TruncToInt(b.y2);
    yxhw.push_back({y1, x1, y2 - y1, x2 - x1});
    PilOutline(image, x1, y1, x2, y2, kMagmaOutlineWidth, kRed);
  }
  PlacementIndex index(image_w, image_h);
  for (const YxhwBox& b : yxhw) index.Add(b);
  std::vector<InputBox> placed;
  placed.reserve(boxes.size());
  std::vector<LabelMetrics> metrics_by_digits;
  std::vector<std::unique_ptr<DigitSprites>> sprites_by_digits;
  for (size_t i = 0; i < yxhw.size(); ++i) {
    const std::string text = std::to_string(mark_base + static_cast<int64_t>(i));
    const int digits = static_cast<int>(text.size());
    if (metrics_by_digits.size() <= static_cast<size_t>(digits)) {
      metrics_by_digits.resize(digits + 1);
      sprites_by_digits.resize(digits + 1);
    }
    // Sized by the id's own digit count; the reference reuses the 3-digit
    // size for longer ids, which would let their text overflow the label.
    LabelMetrics& m = metrics_by_digits[digits];
    if (m.height == 0) {
      m = MagmaLabelMetrics({image_w, image_h}, digits);
      sprites_by_digits[digits] = std::make_unique<DigitSprites>(m.font_scale, m.thickness);
    }
    YxhwBox label;
    if (!LeastOverlappingPlace(yxhw[i], m.height, m.width, image_h, image_w, &index, &label)) {
      // No place fits: keep the reference's first place (top-left) but
      // inside the image.
      label = {std::clamp(yxhw[i].y - m.height, 0, std::max(0, image_h - m.height)),
               std::clamp(yxhw[i].x, 0, std::max(0, image_w - m.width)), m.height, m.width};
    }
    // PIL fills the inclusive rectangle [x, x + w] x [y, y + h].
    const cv::Rect fill = cv::Rect(label.x, label.y, label.w + 1, label.h + 1) & cv::Rect(0, 0, image_w, image_h);
    if (fill.area() > 0) (*image)(fill).setTo(kRed);
    sprites_by_digits[digits]->DrawCentred(text, label.x, label.y, label.w, label.h, image);
    index.Add(label);
    placed.push_back({static_cast<double>(label.x), static_cast<double>(label.y),
                      static_cast<double>(label.x + label.w), static_cast<double>(label.y + label.h)});
  }
  return placed;
}

// ---------------------------------------------------------------------------
// Set-of-Mark, OmniParser style (OmniParser util/box_annotator.py with the
// supervision 0.18 default palette).

constexpr uint32_t kOmniPalette[] = {0xA351FB, 0xFF4040, 0xFFA1A0, 0xFF7633, 0xFFB633, 0xD1D435, 0x4CFB12,
                                     0x94CF1A, 0x40DE8A, 0x1B9640, 0x00D6C1, 0x2E9CAA, 0x00C4FF, 0x364797,
                                     0x6675FF, 0x0019EF, 0x863AFF, 0x530087, 0xCD3AFF, 0xFF97CA, 0xFF39C9};

struct IntBox {
  int x1, y1, x2, y2;
};

int64_t Area(const IntBox& b) { return int64_t{b.x2 - b.x1} * (b.y2 - b.y1); }

// box_annotator.IoU(return_max=True): the largest of IoU and the
// intersection's share of either box.
double OmniOverlap(const IntBox& a, const IntBox& b) {
  const int64_t iw = std::max(0, std::min(a.x2, b.x2) - std::max(a.x1, b.x1));
  const int64_t ih = std::max(0, std::min(a.y2, b.y2) - std::max(a.y1, b.y1));
  const int64_t inter = iw * ih;
  const int64_t area_a = Area(a), area_b = Area(b);
  const int64_t uni = area_a + area_b - inter;
  double ratio_a = 0, ratio_b = 0;
  if (area_a > 0 && area_b > 0) {
    ratio_a = static_cast<double>(inter) / area_a;
    ratio_b = static_cast<double>(inter) / area_b;
  }
  const double iou = uni != 0 ? static_cast<double>(inter) / uni : 0.0;
  return std::max({iou, ratio_a, ratio_b});
}

struct OmniLabel {
  cv::Point text;
  IntBox background;
};

// get_optimal_label_pos: the first of top-left, outer-left, outer-right,
// top-right whose background overlaps no box by more than 0.3 and stays in
// the image; top-right when none does.
OmniLabel OmniLabelPlace(int pad, int tw, int th, const IntBox& b, const std::vector<IntBox>& all, int image_w,
                         int image_h) {
  const OmniLabel candidates[4] = {
      {{b.x1 + pad, b.y1 - pad}, {b.x1, b.y1 - 2 * pad - th, b.x1 + 2 * pad + tw, b.y1}},
      {{b.x1 - pad - tw, b.y1 + pad + th}, {b.x1 - 2 * pad - tw, b.y1, b.x1, b.y1 + 2 * pad + th}},
      {{b.x2 + pad, b.y1 + pad + th}, {b.x2, b.y1, b.x2 + 2 * pad + tw, b.y1 + 2 * pad + th}},
      {{b.x2 - pad - tw, b.y1 - pad}, {b.x2 - 2 * pad - tw, b.y1 - 2 * pad - th, b.x2, b.y1}},
  };
  for (int i = 0; i < 3; ++i) {
    const IntBox& bg = candidates[i].background;
    bool overlap = bg.x1 < 0 || bg.x2 > image_w || bg.y1 < 0 || bg.y2 > image_h;
    for (size_t j = 0; !overlap && j < all.size(); ++j) overlap = OmniOverlap(bg, all[j]) > 0.3;
    if (!overlap) return candidates[i];
  }
  return candidates[3];
}

std::vector<InputBox> DrawOmniParserSom(const std::vector<InputBox>& boxes, int mark_base, cv::Mat* image) {
  const int image_w = image->cols, image_h = image->rows;
  // OmniParser's draw_bbox_config, scaled by the longer side over 3200.
  const double ratio = std::max(image_w, image_h) / 3200.0;
  const double text_scale = 0.8 * ratio;
  const int text_thickness = std::max(static_cast<int>(2 * ratio), 1);
  const int text_padding = std::max(static_cast<int>(3 * ratio), 1);
  const int thickness = std::max(static_cast<int>(3 * ratio), 1);
  std::vector<IntBox> ints;
  ints.reserve(boxes.size());
  for (const InputBox& b : boxes) {  // detections.xyxy.astype(int)
    ints.push_back({TruncToInt(b.x1), TruncToInt(b.y1), TruncToInt(b.x2), TruncToInt(b.y2)});
  }
  std::vector<InputBox> placed;
  placed.reserve(boxes.size());
  for (size_t i = 0; i < ints.size(); ++i) {
    const uint32_t hex = kOmniPalette[i % (sizeof(kOmniPalette) / sizeof(kOmniPalette[0]))];
    const int r = (hex >> 16) & 0xFF, g = (hex >> 8) & 0xFF, b = hex & 0xFF;
    // The annotator passes color.as_bgr() to OpenCV while the array it
    // draws on is RGB, so box and label colours land channel-swapped; we
    // write the same bytes.
    const cv::Scalar swapped(b, g, r);
    const IntBox& box = ints[i];
    cv::rectangle(*image, cv::Point(box.x1, box.y1), cv::Point(box.x2, box.y2), swapped, thickness);
    const std::string text = std::to_string(mark_base + static_cast<int64_t>(i));
    const cv::Size ts = cv::getTextSize(text, cv::FONT_HERSHEY_SIMPLEX, text_scale, text_thickness, nullptr);
    const OmniLabel label = OmniLabelPlace(text_padding, ts.width, ts.height, box, ints, image_w, image_h);
    cv::rectangle(*image, cv::Point(label.background.x1, label.background.y1),
                  cv::Point(label.background.x2, label.background.y2), swapped, cv::FILLED);
    const double luminance = 0.299 * r + 0.587 * g + 0.114 * b;
    const cv::Scalar text_colour = luminance > 160 ? cv::Scalar(0, 0, 0) : cv::Scalar(255, 255, 255);
    cv::putText(*image, text, label.text, cv::FONT_HERSHEY_SIMPLEX, text_scale, text_colour, text_thickness,
                cv::LINE_AA);
    placed.push_back({static_cast<double>(label.background.x1), static_cast<double>(label.background.y1),
                      static_cast<double>(label.background.x2), static_cast<double>(label.background.y2)});
  }
  return placed;
}

// ---------------------------------------------------------------------------
// Trace-of-Mark point marks (Magma data/utils/som_tom.py).

struct MarkFont {
  double scale = 0;
  int thickness = 1;
};

// The smallest scale (0.05 steps) whose "55" is at least 3% of the width in
// both dimensions, as the reference grows its font one point at a time.
MarkFont PointMarkFont(int image_w) {
  const double target = 0.03 * image_w;
  MarkFont f;
  for (int step = 2; step <= 400; ++step) {
    f.scale = 0.05 * step;
    f.thickness = std::max(1, static_cast<int>(std::lround(f.scale)));
    const cv::Size s = cv::getTextSize("55", cv::FONT_HERSHEY_SIMPLEX, f.scale, f.thickness, nullptr);
    if (std::min(s.width, s.height) >= target) break;
  }
  return f;
}

// ---------------------------------------------------------------------------
// HAMSTER path (HAMSTER_beta gradio_server_example.py draw_lines_on_image_cv).
//
// The arithmetic follows the reference under NumPy 1.x, which it ran with
// (matplotlib.cm.get_cmap, removed in matplotlib 3.9, predates NumPy 2
// support): points are float32; segment lengths are float32 norms summed
// into float64; the interpolation (1 - t) * p0 + t * p1 runs in float32
// because a float64 scalar times a float32 array stays float32 there.

std::vector<cv::Point> ResampleByArcLength(const std::vector<cv::Point>& pixels, int num_samples) {
  const size_t n = pixels.size();
  std::vector<float> px(n), py(n);
  for (size_t i = 0; i < n; ++i) {
    px[i] = static_cast<float>(pixels[i].x);
    py[i] = static_cast<float>(pixels[i].y);
  }
  std::vector<double> cumulative(n, 0.0);
  for (size_t i = 1; i < n; ++i) {
    const float dx = px[i] - px[i - 1], dy = py[i] - py[i - 1];
    const float norm = std::sqrt(dx * dx + dy * dy);  // np.linalg.norm of a float32 pair
    cumulative[i] = cumulative[i - 1] + static_cast<double>(norm);
  }
  const double total = cumulative.back();
  const double step = total / (num_samples - 1);  // np.linspace(0, total, num_samples)
  std::vector<cv::Point> out;
  out.reserve(num_samples);
  size_t idx = 0;
  for (int k = 0; k < num_samples; ++k) {
    const double sd = k == num_samples - 1 ? total : k * step;
    if (n == 1) {
      out.push_back(pixels[0]);
      continue;
    }
    while (sd > cumulative[idx + 1] && idx < n - 2) ++idx;
    const double length = cumulative[idx + 1] - cumulative[idx];
    // The reference divides by zero here on repeated points; such a piece
    // contributes its start point instead.
    const double t = length > 0 ? (sd - cumulative[idx]) / length : 0.0;
    const float a = static_cast<float>(1.0 - t), b = static_cast<float>(t);
    const float x = a * px[idx] + b * px[idx + 1];
    const float y = a * py[idx] + b * py[idx + 1];
    out.push_back(cv::Point(static_cast<int>(x), static_cast<int>(y)));  // astype(np.int32)
  }
  return out;
}

}  // namespace

const std::array<std::array<double, 3>, 256>& ColormapTable(Colormap map) {
  switch (map) {
    case Colormap::kJet:
      return JetLut();
    case Colormap::kGistRainbow:
      return GistRainbowLut();
    case Colormap::kCool:
      return CoolLut();
  }
  return JetLut();
}

std::array<double, 3> ColormapAt(Colormap map, double x) {
  const auto& lut = ColormapTable(map);
  if (!(x > 0)) return lut[0];  // negative, zero or NaN
  double xa = x * kLutSize;
  if (xa >= kLutSize) return lut[kLutSize - 1];
  return lut[static_cast<int>(xa)];
}

Rgb ColormapRgb(Colormap map, double x) {
  const auto c = ColormapAt(map, x);
  return {static_cast<uint8_t>(c[0] * 255), static_cast<uint8_t>(c[1] * 255), static_cast<uint8_t>(c[2] * 255)};
}

LabelMetrics MagmaLabelMetrics(ImageSize input, int num_digits) {
  const double target = std::min(30.0, 0.04 * std::min(input.width, input.height));
  LabelMetrics m;
  m.height = std::max(kMagmaMinLabelHeight, static_cast<int>(std::ceil(target)));
  // Hershey digits are about 22 px tall per unit of scale; fill about 70%
  // of the label, as Arial digits fill the reference's labels.
  m.font_scale = 0.7 * m.height / 22.0;
  m.thickness = m.font_scale >= 0.75 ? 2 : 1;
  const cv::Size text =
      cv::getTextSize(Fives(num_digits), cv::FONT_HERSHEY_SIMPLEX, m.font_scale, m.thickness, nullptr);
  m.width = text.width + 2 * std::max(2, m.height / 8);
  return m;
}

absl::StatusOr<std::vector<Mark>> DrawSetOfMarks(const std::vector<PixelBox>& boxes, const ImageFrame& frame,
                                                 const SomOptions& options, cv::Mat* image) {
  if (auto s = CheckImage(image, frame); !s.ok()) return s;
  if (boxes.size() > static_cast<size_t>(kMaxSomBoxes)) {
    return absl::InvalidArgumentError(
        absl::StrCat("set-of-mark: ", boxes.size(), " boxes, at most ", kMaxSomBoxes, " are allowed"));
  }
  const int64_t last_id = int64_t{options.mark_base} + static_cast<int64_t>(boxes.size());
  if (options.mark_base < 0 || last_id > std::numeric_limits<int>::max()) {
    return absl::InvalidArgumentError(absl::StrCat("set-of-mark: mark base ", options.mark_base, " is out of range"));
  }
  std::vector<InputBox> input_boxes;
  input_boxes.reserve(boxes.size());
  for (size_t i = 0; i < boxes.size(); ++i) {
    if (!IsWellFormed(boxes[i])) {
      return absl::InvalidArgumentError(absl::StrCat("set-of-mark: box ", i, " ", boxes[i].x1, ",", boxes[i].y1, ",",
                                                     boxes[i].x2, ",", boxes[i].y2,
                                                     " is not finite with x1 <= x2 and y1 <= y2"));
    }
    input_boxes.push_back(frame.ToInput(boxes[i]));
  }
  std::vector<InputBox> labels;
  try {
    labels = options.style == SomStyle::kOmniParser ? DrawOmniParserSom(input_boxes, options.mark_base, image)
                                                    : DrawMagmaSom(input_boxes, options.mark_base, image);
  } catch (const cv::Exception& e) {
    return absl::InternalError(absl::StrCat("set-of-mark: OpenCV: ", e.what()));
  }
  std::vector<Mark> marks;
  marks.reserve(boxes.size());
  for (size_t i = 0; i < boxes.size(); ++i) {
    Mark m;
    m.id = options.mark_base + static_cast<int>(i);
    m.box = boxes[i];
    m.centre = boxes[i].centre();
    m.centre_norm = frame.ToNorm(m.centre);
    m.label = labels[i];
    marks.push_back(m);
  }
  return marks;
}

absl::Status DrawPointMarks(const std::vector<PointMark>& marks, const ImageFrame& frame, cv::Mat* image) {
  if (auto s = CheckImage(image, frame); !s.ok()) return s;
  for (size_t i = 0; i < marks.size(); ++i) {
    if (!Finite(marks[i].point)) return absl::InvalidArgumentError(absl::StrCat("point mark ", i, " is not finite"));
  }
  const MarkFont font = PointMarkFont(image->cols);
  try {
    for (const PointMark& mark : marks) {
      const InputPoint p = frame.ToInput(mark.point);
      const cv::Point centre(TruncToInt(p.x), TruncToInt(p.y));
      const std::string text = std::to_string(mark.id);
      int baseline = 0;
      const cv::Size size = cv::getTextSize(text, cv::FONT_HERSHEY_SIMPLEX, font.scale, font.thickness, &baseline);
      // The reference's ellipse spans max(text size) // 2 + 1 around the point.
      const int radius = std::max(size.width, size.height) / 2 + 1;
      cv::circle(*image, centre, radius, kRed, cv::FILLED, cv::LINE_AA);
      cv::putText(*image, text, cv::Point(centre.x - size.width / 2, centre.y + size.height / 2),
                  cv::FONT_HERSHEY_SIMPLEX, font.scale, kWhite, font.thickness, cv::LINE_AA);
    }
  } catch (const cv::Exception& e) {
    return absl::InternalError(absl::StrCat("point marks: OpenCV: ", e.what()));
  }
  return absl::OkStatus();
}

namespace {

// cv::line of the part of a-b that can touch the image. OpenCV fills a thick
// line's outline row by row from its lowest row, inside the image or not,
// so a point 10^8 rows above the image would cost 10^8 steps. Segments
// within reach of the image are drawn unchanged.
void DrawLineNearImage(cv::Mat* image, cv::Point a, cv::Point b, const cv::Scalar& colour, int thickness,
                       int line_type) {
  const int reach = thickness + 2;
  if (!cv::clipLine(cv::Rect(-reach, -reach, image->cols + 2 * reach, image->rows + 2 * reach), a, b)) return;
  cv::line(*image, a, b, colour, thickness, line_type);
}

}  // namespace

absl::Status DrawTraces(const std::vector<std::vector<PixelPoint>>& traces, const ImageFrame& frame,
                        const TraceOptions& options, cv::Mat* image) {
  if (auto s = CheckImage(image, frame); !s.ok()) return s;
  if (options.thickness < 1 || options.thickness > 255) {
    return absl::InvalidArgumentError(absl::StrCat("traces: thickness ", options.thickness, " is not in 1..255"));
  }
  std::vector<std::vector<cv::Point>> pts(traces.size());
  for (size_t i = 0; i < traces.size(); ++i) {
    for (size_t k = 0; k < traces[i].size(); ++k) {
      if (!Finite(traces[i][k])) {
        return absl::InvalidArgumentError(absl::StrCat("traces: point ", k, " of trace ", i, " is not finite"));
      }
      const InputPoint p = frame.ToInput(traces[i][k]);
      pts[i].push_back(cv::Point(TruncToInt(p.x), TruncToInt(p.y)));  // the reference's int()
    }
  }
  // plt.Normalize over the first points' rows; equal limits map to 0.
  double y_min = std::numeric_limits<double>::infinity(), y_max = -y_min;
  for (const auto& t : pts) {
    if (t.empty()) continue;
    y_min = std::min<double>(y_min, t[0].y);
    y_max = std::max<double>(y_max, t[0].y);
  }
  try {
    for (const auto& t : pts) {
      if (t.size() < 2) continue;
      Rgb row_colour;
      if (options.coloring == TraceColoring::kByStartRow) {
        const double v = y_max > y_min ? (t[0].y - y_min) / (y_max - y_min) : 0.0;
        row_colour = ColormapRgb(options.row_colormap, v);
      }
      const double steps = static_cast<double>(t.size());
      for (size_t s = 0; s + 1 < t.size(); ++s) {
        const Rgb c =
            options.coloring == TraceColoring::kByStartRow ? row_colour : ColormapRgb(options.time_colormap, s / steps);
        DrawLineNearImage(image, t[s], t[s + 1], ToScalar(c), options.thickness, cv::LINE_AA);
      }
    }
  } catch (const cv::Exception& e) {
    return absl::InternalError(absl::StrCat("traces: OpenCV: ", e.what()));
  }
  return absl::OkStatus();
}

absl::Status DrawPath(const std::vector<PathWaypoint>& path, const PathOptions& options, cv::Mat* image) {
  if (auto s = CheckImage(image); !s.ok()) return s;
  if (path.empty()) return absl::InvalidArgumentError("path: no points");
  if (options.num_samples < 2 || options.num_samples > 100000) {
    return absl::InvalidArgumentError(absl::StrCat("path: num_samples ", options.num_samples, " is not in 2..100000"));
  }
  for (size_t i = 0; i < path.size(); ++i) {
    if (!std::isfinite(path[i].point.x) || !std::isfinite(path[i].point.y)) {
      return absl::InvalidArgumentError(absl::StrCat("path: point ", i, " is not finite"));
    }
  }
  const int width = image->cols, height = image->rows;
  const double scale = std::max(std::min(width, height) / 512.0, 1.0);
  const int circle_radius = static_cast<int>(7 * scale);
  const int circle_thickness = std::max(1, static_cast<int>(2 * scale));
  const int line_thickness = std::max(1, static_cast<int>(2 * scale));
  std::vector<cv::Point> pixels;
  pixels.reserve(path.size());
  for (const PathWaypoint& w : path) pixels.push_back({TruncToInt(w.point.x * width), TruncToInt(w.point.y * height)});
  try {
    if (options.mark_gripper_changes) {
      for (size_t i = 0; i < path.size(); ++i) {
        if (i == 0 || path[i].gripper != path[i - 1].gripper) {
          // Tuples (0, 0, 255) and (255, 0, 0) written to an RGB array.
          const cv::Scalar colour = path[i].gripper == Gripper::kClosed ? cv::Scalar(0, 0, 255) : kRed;
          cv::circle(*image, pixels[i], circle_radius, colour, circle_thickness);
        }
      }
    }
    const std::vector<cv::Point> samples = ResampleByArcLength(pixels, options.num_samples);
    const double colour_step = 1.0 / (options.num_samples - 1);  // np.linspace(0, 1, num_samples)
    for (int k = 0; k + 1 < options.num_samples; ++k) {
      const Rgb c = ColormapRgb(Colormap::kJet, k * colour_step);
      DrawLineNearImage(image, samples[k], samples[k + 1], ToScalar(c), line_thickness, cv::LINE_8);
    }
  } catch (const cv::Exception& e) {
    return absl::InternalError(absl::StrCat("path: OpenCV: ", e.what()));
  }
  return absl::OkStatus();
}

}  // namespace magma::vision
