#include "magma/agent/path_answer.h"

#include <charconv>

#include "absl/strings/str_cat.h"
#include "scanner.h"

namespace magma::agent {
namespace {

using vision::Gripper;
using vision::PathWaypoint;

constexpr absl::string_view kOpenTag = "<ans>";
constexpr absl::string_view kCloseTag = "</ans>";
constexpr absl::string_view kCloseGripper = "<action>Close Gripper</action>";
constexpr absl::string_view kOpenGripper = "<action>Open Gripper</action>";

absl::Status ReadCoordinate(Scanner* s, const char* axis, double* v) {
  const size_t at = s->pos();
  if (auto st = s->ReadNumber(v); !st.ok()) return st;
  if (!(*v >= 0.0 && *v <= 1.0)) {
    return s->ErrorAt(at, absl::StrCat(axis, " = ", *v, " is outside [0, 1]"));
  }
  return absl::OkStatus();
}

// Shortest text that reads back as the same double.
std::string Shortest(double v) {
  char buf[32];
  const auto r = std::to_chars(buf, buf + sizeof(buf), v);
  return std::string(buf, r.ptr);
}

}  // namespace

absl::StatusOr<std::vector<PathWaypoint>> ParsePathAnswer(absl::string_view text) {
  Scanner s(text, "path answer");
  const size_t open = text.find(kOpenTag);
  if (open == absl::string_view::npos) return s.ErrorAt(0, "no <ans> tag");
  const size_t body = open + kOpenTag.size();
  const size_t close = text.find(kCloseTag, body);
  if (close == absl::string_view::npos) return s.ErrorAt(text.size(), "<ans> is not closed by </ans>");
  s.set_pos(body);
  s.SkipSpace();
  if (auto st = s.Expect("["); !st.ok()) return st;
  std::vector<PathWaypoint> path;
  Gripper state = Gripper::kClosed;  // the reference's initial action_flag
  bool need_item = true;             // after '[' or ','
  while (true) {
    s.SkipSpace();
    if (s.pos() >= close) return s.ErrorAt(s.pos(), "the list is not closed by ']' before </ans>");
    if (s.Peek() == ']') {
      s.set_pos(s.pos() + 1);
      break;
    }
    if (!need_item) return s.Error("expected ',' or ']' after an item");
    const size_t item = s.pos();
    if (s.TryConsume(kCloseGripper) || s.TryConsume(kOpenGripper)) {
      if (path.empty()) return s.ErrorAt(item, "gripper action before the first point");
      state = text.substr(item, kCloseGripper.size()) == kCloseGripper ? Gripper::kClosed : Gripper::kOpen;
      path.back().gripper = state;
    } else if (s.TryConsume("(")) {
      PathWaypoint w;
      w.gripper = state;
      s.SkipSpace();
      if (auto st = ReadCoordinate(&s, "x", &w.point.x); !st.ok()) return st;
      s.SkipSpace();
      if (auto st = s.Expect(","); !st.ok()) return st;
      s.SkipSpace();
      if (auto st = ReadCoordinate(&s, "y", &w.point.y); !st.ok()) return st;
      s.SkipSpace();
      if (auto st = s.Expect(")"); !st.ok()) return st;
      if (path.size() >= static_cast<size_t>(kMaxPathPoints)) {
        return s.ErrorAt(item, absl::StrCat("more than ", kMaxPathPoints, " points"));
      }
      path.push_back(w);
    } else if (s.TryConsume("<action>")) {
      return s.ErrorAt(item, "unknown gripper action (expected Close Gripper or Open Gripper)");
    } else {
      return s.Error("expected '(' or a gripper <action>");
    }
    s.SkipSpace();
    need_item = s.TryConsume(",");
  }
  s.SkipSpace();
  if (s.pos() != close) return s.Error("expected </ans> after the list");
  if (path.empty()) return s.ErrorAt(body, "the path has no points");
  return path;
}

std::string FormatPathAnswer(const std::vector<PathWaypoint>& path) {
  std::string out = "<ans>[";
  Gripper state = Gripper::kClosed;
  for (size_t i = 0; i < path.size(); ++i) {
    if (i > 0) out += ", ";
    absl::StrAppend(&out, "(", Shortest(path[i].point.x), ", ", Shortest(path[i].point.y), ")");
    if (path[i].gripper != state) {
      state = path[i].gripper;
      absl::StrAppend(&out, ", ", state == Gripper::kClosed ? kCloseGripper : kOpenGripper);
    }
  }
  return out + "]</ans>";
}

std::vector<vision::PixelPoint> PathToPixels(const std::vector<PathWaypoint>& path, const vision::ImageFrame& frame) {
  std::vector<vision::PixelPoint> out;
  out.reserve(path.size());
  for (const PathWaypoint& w : path) out.push_back(frame.ToPixel(w.point));
  return out;
}

}  // namespace magma::agent
