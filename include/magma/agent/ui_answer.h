// UI grounding answers of Magma's UI agent, resolved to a click in
// original-image pixels. The rules, in the reference's order:
//   1. "Mark: N"                    the mark N of the Set-of-Mark table; the
//                                   click is its box centre
//   2. "<box>(x1,y1),(x2,y2)</box>" 0..1000 units; the click is the centre
//   3. bare numbers in [0, 1]       2 = a point, 4 = a box whose centre is
//                                   taken (the text around them is ignored)
// A mark the table does not hold falls through to rules 2 and 3.
#ifndef MAGMA_AGENT_UI_ANSWER_H_
#define MAGMA_AGENT_UI_ANSWER_H_

#include <cstddef>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "magma/vision/geometry.h"
#include "magma/vision/overlay.h"

namespace magma::agent {

enum class UiRule {
  kMark,      // "Mark: N" naming a mark of the table
  kMilliBox,  // <box>(x1,y1),(x2,y2)</box> in 0..1000
  kPoint,     // two numbers in [0, 1]
  kNormBox,   // four numbers in [0, 1]
};

// "mark", "milli_box", "point", "norm_box".
const char* UiRuleName(UiRule rule);

struct UiAnswer {
  UiRule rule = UiRule::kMark;
  // 0-based character position where the matched form starts.
  size_t position = 0;
  // Where to click, original-image pixels and normalized.
  vision::PixelPoint click;
  vision::NormPoint click_norm;
  // The box the answer itself gives (kMilliBox, kNormBox), original pixels.
  std::optional<vision::PixelBox> answer_box;
  // kMark: the named mark. Otherwise the mark whose box contains the click
  // (the smallest such box, the first on ties), if any.
  std::optional<int> mark;
  // The box of `mark`, original-image pixels.
  std::optional<vision::PixelBox> element_box;
};

// Parses `text` and resolves it against `marks` (the table DrawSetOfMarks
// returned for this image; may be empty) and `frame`. INVALID_ARGUMENT with
// the 0-based character position and the reason when no rule matches: a
// malformed <box>, coordinates out of range, a count of numbers other than
// 2 or 4, or a named mark that is not in the table and no coordinates.
absl::StatusOr<UiAnswer> ParseUiAnswer(absl::string_view text, const std::vector<vision::Mark>& marks,
                                       const vision::ImageFrame& frame);

}  // namespace magma::agent

#endif  // MAGMA_AGENT_UI_ANSWER_H_
