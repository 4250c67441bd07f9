// Trace-of-Mark answers (Magma robot / video traces), integers on the
// 256 x 256 grid of the image the model saw:
//   Mark 3 at [120,88], Mark 7 at [40,200] should be moved, and their future positions are:
//
//   "Mark 3": "[[121,90],[125,97]]"
//
//   "Mark 7": "[[41,198]]"
// The head (up to "are:") is optional and only says where marks start; the
// traces may be wrapped in <trace_start> ... <trace_end>. The reference
// reads the traces with ast.literal_eval; this is a strict parser of the
// same text.
#ifndef MAGMA_AGENT_TRACE_ANSWER_H_
#define MAGMA_AGENT_TRACE_ANSWER_H_

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "magma/vision/geometry.h"

namespace magma::agent {

// Upper bounds on one answer.
inline constexpr int kMaxTraceMarks = 1000;
inline constexpr int kMaxTracePoints = 10000;  // per mark

struct MarkTrace {
  int mark = 0;
  // Where the head says the mark is ("Mark N at [x,y]"); absent without a head.
  std::optional<vision::Grid256Point> start;
  // Future positions, in order (the start is not repeated; may be empty).
  std::vector<vision::Grid256Point> future;
};

struct TraceAnswer {
  std::vector<MarkTrace> traces;  // in the order the answer lists them
};

// Parses `text`. Surrounding whitespace is ignored; anything else outside the
// grammar is an error. Coordinates are integers in 0..255; mark ids are
// non-negative; a mark has at most one trace. A trace takes its start from
// the head's first entry for its mark (none without one); head entries
// without a trace move nothing.
// INVALID_ARGUMENT with the 0-based character position and the reason.
absl::StatusOr<TraceAnswer> ParseTraceAnswer(absl::string_view text);

// The answer in Magma's training format (head included when every trace has
// a start), traces separated by blank lines.
std::string FormatTraceAnswer(const TraceAnswer& answer);

// A trace in original-image pixels: the start (when known) then the future
// positions, each grid cell g mapped to g / 256 * size.
struct PixelTrace {
  int mark = 0;
  bool has_start = false;  // points[0] is the start
  std::vector<vision::PixelPoint> points;
};
std::vector<PixelTrace> TracesToPixels(const TraceAnswer& answer, const vision::ImageFrame& frame);

}  // namespace magma::agent

#endif  // MAGMA_AGENT_TRACE_ANSWER_H_
