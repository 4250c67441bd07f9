#include "magma/vision/propose.h"

#include <algorithm>
#include <cmath>

#include <opencv2/imgproc.hpp>

#include "absl/strings/str_cat.h"

namespace magma::vision {
namespace {

// Largest derived text gap, pixels: the closing that joins characters costs
// about rows x cols x gap.
constexpr int kMaxTextGap = 64;

struct Candidate {
  cv::Rect rect;
  int priority;  // lower is kept first among duplicates
};

// Largest per-channel 3x3 morphological gradient: edges of any colour
// change, including colour-on-colour of equal brightness.
cv::Mat ColourGradient(const cv::Mat& rgb) {
  cv::Mat grad;
  cv::morphologyEx(rgb, grad, cv::MORPH_GRADIENT, cv::getStructuringElement(cv::MORPH_RECT, {3, 3}));
  std::vector<cv::Mat> planes;
  cv::split(grad, planes);
  cv::Mat out = cv::max(planes[0], cv::max(planes[1], planes[2]));
  return out;
}

bool SizeOk(const cv::Rect& r, const ProposeOptions& o, int width, int height) {
  return r.width >= o.min_side && r.height >= o.min_side && r.width <= o.max_extent * width &&
         r.height <= o.max_extent * height;
}

// Regions whose contour fills its bounding rectangle: bordered fields,
// filled buttons, tabs (outer and inner boundaries of the edge ring).
void RectangularRegions(const cv::Mat& edges, const ProposeOptions& o, std::vector<Candidate>* out) {
  std::vector<std::vector<cv::Point>> contours;
  cv::findContours(edges, contours, cv::RETR_LIST, cv::CHAIN_APPROX_SIMPLE);
  for (const auto& c : contours) {
    const cv::Rect r = cv::boundingRect(c);
    if (!SizeOk(r, o, edges.cols, edges.rows)) continue;
    const double fill = std::abs(cv::contourArea(c)) / (static_cast<double>(r.width) * r.height);
    if (fill >= 0.85) out->push_back({r, 0});
  }
}

// Text lines, words and icons: edge pixels joined across small horizontal
// gaps (the role MSER regions play in scene-text detectors), every nesting
// level kept so that blocks inside panels are found too.
void TextBlocks(const cv::Mat& edges, int gap, const ProposeOptions& o, std::vector<Candidate>* out) {
  cv::Mat joined;
  cv::morphologyEx(edges, joined, cv::MORPH_CLOSE, cv::getStructuringElement(cv::MORPH_RECT, {gap, 3}));
  std::vector<std::vector<cv::Point>> contours;
  std::vector<cv::Vec4i> hierarchy;
  cv::findContours(joined, contours, hierarchy, cv::RETR_CCOMP, cv::CHAIN_APPROX_SIMPLE);
  for (size_t i = 0; i < contours.size(); ++i) {
    if (hierarchy[i][3] >= 0) continue;  // holes: the inside of a ring, found as a region already
    const cv::Rect r = cv::boundingRect(contours[i]);
    if (SizeOk(r, o, edges.cols, edges.rows)) out->push_back({r, 1});
  }
}

double RectIoU(const cv::Rect& a, const cv::Rect& b) {
  const double inter = (a & b).area();
  if (inter <= 0) return 0;
  return inter / (static_cast<double>(a.area()) + b.area() - inter);
}

// `inner` lies within `outer` grown by `slack` pixels.
bool Inside(const cv::Rect& inner, const cv::Rect& outer, int slack) {
  return inner.x >= outer.x - slack && inner.y >= outer.y - slack && inner.br().x <= outer.br().x + slack &&
         inner.br().y <= outer.br().y + slack;
}

cv::Rect Grown(const cv::Rect& r, int by) { return {r.x - by, r.y - by, r.width + 2 * by, r.height + 2 * by}; }

// The rectangles added so far, found by the grid cells they cover: a query
// visits only rectangles that share a cell with it, so de-duplicating N
// candidates costs about N times the few rectangles near each, not N^2.
class RectGrid {
 public:
  RectGrid(cv::Size image, int cell) : cell_(cell), cols_(image.width / cell + 1), rows_(image.height / cell + 1) {
    cells_.resize(static_cast<size_t>(cols_) * rows_);
  }
  void Add(const cv::Rect& r) {
    const int id = static_cast<int>(rects_.size());
    rects_.push_back(r);
    seen_.push_back(0);
    ForCells(r, [&](std::vector<int>& cell) { cell.push_back(id); });
  }
  const cv::Rect& rect(int id) const { return rects_[id]; }
  // Calls `fn(id)` once for each rectangle sharing a cell with `r` (which
  // includes every rectangle that intersects `r`) until `fn` returns true;
  // whether one did.
  template <typename Fn>
  bool AnyNear(const cv::Rect& r, Fn fn) {
    ++query_;
    bool found = false;
    ForCells(r, [&](std::vector<int>& cell) {
      for (int id : cell) {
        if (found || seen_[id] == query_) continue;
        seen_[id] = query_;
        found = fn(id);
      }
    });
    return found;
  }

 private:
  template <typename Fn>
  void ForCells(const cv::Rect& r, Fn fn) {
    const int x0 = std::clamp(r.x / cell_, 0, cols_ - 1), x1 = std::clamp((r.br().x - 1) / cell_, 0, cols_ - 1);
    const int y0 = std::clamp(r.y / cell_, 0, rows_ - 1), y1 = std::clamp((r.br().y - 1) / cell_, 0, rows_ - 1);
    for (int y = y0; y <= y1; ++y) {
      for (int x = x0; x <= x1; ++x) fn(cells_[static_cast<size_t>(y) * cols_ + x]);
    }
  }
  int cell_, cols_, rows_;
  std::vector<std::vector<int>> cells_;
  std::vector<cv::Rect> rects_;
  std::vector<uint32_t> seen_;  // the last query that visited each rectangle
  uint32_t query_ = 0;
};

}  // namespace

absl::StatusOr<std::vector<PixelBox>> ProposeElements(const cv::Mat& rgb, const ProposeOptions& options) {
  if (rgb.empty() || rgb.type() != CV_8UC3) {
    return absl::InvalidArgumentError("propose: image must be a non-empty 8-bit RGB (CV_8UC3) image");
  }
  if (options.edge_threshold < 1 || options.edge_threshold > 255 || options.min_side < 1 ||
      !(options.max_extent > 0 && options.max_extent <= 1) ||
      !(options.duplicate_iou > 0 && options.duplicate_iou <= 1) || options.text_gap < 0 || options.max_elements < 1) {
    return absl::InvalidArgumentError(absl::StrCat("propose: invalid options (edge_threshold ", options.edge_threshold,
                                                   ", min_side ", options.min_side, ", max_extent ", options.max_extent,
                                                   ", duplicate_iou ", options.duplicate_iou, ", text_gap ",
                                                   options.text_gap, ", max_elements ", options.max_elements, ")"));
  }
  std::vector<Candidate> candidates;
  try {
    const cv::Mat grad = ColourGradient(rgb);
    cv::Mat edges;
    cv::threshold(grad, edges, options.edge_threshold - 1, 255, cv::THRESH_BINARY);
    const int gap =
        options.text_gap > 0 ? options.text_gap : std::clamp(static_cast<int>(rgb.rows * 0.01 + 0.5), 4, kMaxTextGap);
    RectangularRegions(edges, options, &candidates);
    TextBlocks(edges, gap, options, &candidates);
  } catch (const cv::Exception& e) {
    return absl::InternalError(absl::StrCat("propose: OpenCV: ", e.what()));
  }

  // De-duplicate: regions before text blocks, then smaller before larger,
  // so a widget's tight box wins over its looser doubles.
  std::stable_sort(candidates.begin(), candidates.end(), [](const Candidate& a, const Candidate& b) {
    if (a.priority != b.priority) return a.priority < b.priority;
    return a.rect.area() < b.rect.area();
  });
  // Both tests below hold only between rectangles that share a grid cell
  // (a duplicate intersects the candidate; a covering region intersects the
  // block grown by 1).
  const int cell = std::max(32, std::max(rgb.cols, rgb.rows) / 64);
  RectGrid kept(rgb.size(), cell);
  std::vector<int> kept_priority;
  for (const Candidate& c : candidates) {
    // Also a duplicate: a block that only pads a kept box by its edge ring.
    const bool duplicate = kept.AnyNear(c.rect, [&](int id) {
      const cv::Rect& k = kept.rect(id);
      return RectIoU(c.rect, k) > options.duplicate_iou || (Inside(k, c.rect, 0) && Inside(c.rect, k, 3));
    });
    if (!duplicate) {
      kept.Add(c.rect);
      kept_priority.push_back(c.priority);
    }
  }
  // Text inside a one-line widget (a button, a field) is the widget: drop
  // blocks that sit in a rectangular region at most 3 times their height.
  std::vector<cv::Rect> merged;
  for (int i = 0; i < static_cast<int>(kept_priority.size()); ++i) {
    const cv::Rect& r = kept.rect(i);
    const bool covered = kept.AnyNear(Grown(r, 1), [&](int j) {
      const cv::Rect& k = kept.rect(j);
      return j != i && kept_priority[j] == 0 && k.area() > r.area() && k.height <= 3 * r.height && Inside(r, k, 1);
    });
    if (!covered) merged.push_back(r);
  }
  if (merged.size() > static_cast<size_t>(options.max_elements)) {
    std::stable_sort(merged.begin(), merged.end(),
                     [](const cv::Rect& a, const cv::Rect& b) { return a.area() < b.area(); });
    merged.resize(options.max_elements);
  }
  std::sort(merged.begin(), merged.end(),
            [](const cv::Rect& a, const cv::Rect& b) { return a.y != b.y ? a.y < b.y : a.x < b.x; });
  std::vector<PixelBox> out;
  out.reserve(merged.size());
  for (const cv::Rect& r : merged) {
    out.push_back({static_cast<double>(r.x), static_cast<double>(r.y), static_cast<double>(r.x + r.width),
                   static_cast<double>(r.y + r.height)});
  }
  return out;
}

}  // namespace magma::vision
