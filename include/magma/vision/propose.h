// Candidate UI elements for a screenshot without an accessibility tree, so a
// UI client that sends no boxes still gets Set-of-Mark marks. Classical
// OpenCV only: colour-gradient edges, rectangular regions (bordered or
// filled widgets) and text-like blocks (characters joined along the line),
// merged and de-duplicated.
//
// Pure function; safe to call concurrently.
#ifndef MAGMA_VISION_PROPOSE_H_
#define MAGMA_VISION_PROPOSE_H_

#include <vector>

#include <opencv2/core.hpp>

#include "absl/status/statusor.h"
#include "magma/vision/geometry.h"

namespace magma::vision {

struct ProposeOptions {
  // Per-channel morphological gradient that counts as an edge (0..255).
  // Default 24.
  int edge_threshold = 24;
  // Smallest element side, pixels. Default 8.
  int min_side = 8;
  // Elements wider than this share of the image width or taller than this
  // share of its height are panels, not targets. Default 0.6.
  double max_extent = 0.6;
  // A candidate overlapping an already kept one by IoU above this is a
  // duplicate. Default 0.6.
  double duplicate_iou = 0.6;
  // Gap, in pixels, across which characters join into one text block.
  // Default 0: derived from the image height (1% of it, at least 4 and at
  // most 64, so that a very tall image costs no more per pixel).
  int text_gap = 0;
  // At most this many boxes are returned (the largest-area ones beyond it
  // are dropped first). Default 400.
  int max_elements = 400;
};

// Candidate clickable elements of an 8-bit RGB screenshot, in its pixels,
// sorted top to bottom then left to right. INVALID_ARGUMENT on an empty or
// non-RGB image or invalid options.
absl::StatusOr<std::vector<PixelBox>> ProposeElements(const cv::Mat& rgb, const ProposeOptions& options = {});

}  // namespace magma::vision

#endif  // MAGMA_VISION_PROPOSE_H_
