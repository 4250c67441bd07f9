// HAMSTER 2D path answers:
//   ... <ans>[(0.25, 0.32), (0.32, 0.17), <action>Close Gripper</action>, (0.74, 0.21), ...]</ans> ...
// x then y as floats in [0, 1] of the image the model saw. A gripper tag
// sets the state of the point before it and of every later point; the path
// starts closed. The reference evaluates the list with Python's eval();
// this is a strict parser of the same list syntax.
#ifndef MAGMA_AGENT_PATH_ANSWER_H_
#define MAGMA_AGENT_PATH_ANSWER_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "magma/vision/geometry.h"
#include "magma/vision/overlay.h"

namespace magma::agent {

// Upper bound on points in one answer.
inline constexpr int kMaxPathPoints = 10000;

// Parses the first <ans>...</ans> of `text` (text around it is ignored).
// Inside: '[' items separated by ',' (a trailing comma allowed) ']', an item
// being '(' x ',' y ')' or <action>Close Gripper</action> or
// <action>Open Gripper</action>; whitespace anywhere between tokens.
// INVALID_ARGUMENT, naming the 0-based character position and the reason,
// for a missing tag, bad syntax, a coordinate outside [0, 1], a gripper tag
// with no point before it, no points, or more than kMaxPathPoints points.
absl::StatusOr<std::vector<vision::PathWaypoint>> ParsePathAnswer(absl::string_view text);

// The answer text for `path` (the inverse of ParsePathAnswer: a tag follows
// each point whose state differs from the state in force before it).
std::string FormatPathAnswer(const std::vector<vision::PathWaypoint>& path);

// The path's points in original-image pixels (x * width, y * height).
std::vector<vision::PixelPoint> PathToPixels(const std::vector<vision::PathWaypoint>& path,
                                             const vision::ImageFrame& frame);

}  // namespace magma::agent

#endif  // MAGMA_AGENT_PATH_ANSWER_H_
