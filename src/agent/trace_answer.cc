#include "magma/agent/trace_answer.h"

#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "scanner.h"

namespace magma::agent {
namespace {

using vision::Grid256Point;

constexpr absl::string_view kHeadEnd = "and their future positions are:";

absl::Status ReadGridValue(Scanner* s, const char* axis, int* v) {
  const size_t at = s->pos();
  if (auto st = s->ReadInt(v); !st.ok()) return st;
  if (*v < 0 || *v >= vision::kTraceGridSize) {
    return s->ErrorAt(at, absl::StrCat(axis, " = ", *v, " is outside the grid 0..", vision::kTraceGridSize - 1));
  }
  return absl::OkStatus();
}

// "[x,y]" with optional whitespace.
absl::Status ReadGridPoint(Scanner* s, Grid256Point* p) {
  if (auto st = s->Expect("["); !st.ok()) return st;
  s->SkipSpace();
  if (auto st = ReadGridValue(s, "x", &p->x); !st.ok()) return st;
  s->SkipSpace();
  if (auto st = s->Expect(","); !st.ok()) return st;
  s->SkipSpace();
  if (auto st = ReadGridValue(s, "y", &p->y); !st.ok()) return st;
  s->SkipSpace();
  return s->Expect("]");
}

absl::Status ReadMarkId(Scanner* s, int* id) {
  const size_t at = s->pos();
  if (auto st = s->ReadInt(id); !st.ok()) return st;
  if (*id < 0) return s->ErrorAt(at, "mark ids are non-negative");
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<TraceAnswer> ParseTraceAnswer(absl::string_view text) {
  Scanner s(text, "trace answer");
  TraceAnswer answer;
  std::map<int, size_t> head;  // mark -> index in `starts` of its first head entry
  std::vector<std::pair<int, Grid256Point>> starts;
  const size_t head_end = text.find(kHeadEnd);
  s.SkipSpace();
  if (head_end != absl::string_view::npos) {
    while (true) {
      const size_t at = s.pos();
      if (auto st = s.Expect("Mark"); !st.ok()) return st;
      s.SkipSpace();
      int id = 0;
      if (auto st = ReadMarkId(&s, &id); !st.ok()) return st;
      s.SkipSpace();
      if (auto st = s.Expect("at"); !st.ok()) return st;
      s.SkipSpace();
      Grid256Point p;
      if (auto st = ReadGridPoint(&s, &p); !st.ok()) return st;
      if (starts.size() >= static_cast<size_t>(kMaxTraceMarks)) {
        return s.ErrorAt(at, absl::StrCat("more than ", kMaxTraceMarks, " marks"));
      }
      head.emplace(id, starts.size());  // the first entry counts
      starts.push_back({id, p});
      s.SkipSpace();
      if (s.TryConsume(",")) {
        s.SkipSpace();
        continue;
      }
      if (auto st = s.Expect("should be moved"); !st.ok()) return st;
      s.SkipSpace();
      if (auto st = s.Expect(","); !st.ok()) return st;
      s.SkipSpace();
      if (auto st = s.Expect(kHeadEnd); !st.ok()) return st;
      break;
    }
  }
  s.SkipSpace();
  const bool wrapped = s.TryConsume("<trace_start>");
  std::map<int, size_t> seen;  // mark -> position of its key
  while (true) {
    s.SkipSpace();
    if (s.AtEnd() || (wrapped && text.substr(s.pos()).substr(0, 11) == "<trace_end>")) break;
    const size_t at = s.pos();
    if (auto st = s.Expect("\"Mark"); !st.ok()) return st;
    s.SkipSpace();
    MarkTrace trace;
    if (auto st = ReadMarkId(&s, &trace.mark); !st.ok()) return st;
    if (auto st = s.Expect("\""); !st.ok()) return st;
    if (seen.count(trace.mark) > 0) return s.ErrorAt(at, absl::StrCat("mark ", trace.mark, " has two traces"));
    if (answer.traces.size() >= static_cast<size_t>(kMaxTraceMarks)) {
      return s.ErrorAt(at, absl::StrCat("more than ", kMaxTraceMarks, " marks"));
    }
    seen[trace.mark] = at;
    s.SkipSpace();
    if (auto st = s.Expect(":"); !st.ok()) return st;
    s.SkipSpace();
    if (auto st = s.Expect("\""); !st.ok()) return st;
    s.SkipSpace();
    if (auto st = s.Expect("["); !st.ok()) return st;
    s.SkipSpace();
    if (!s.TryConsume("]")) {
      while (true) {
        Grid256Point p;
        const size_t point_at = s.pos();
        if (auto st = ReadGridPoint(&s, &p); !st.ok()) return st;
        if (trace.future.size() >= static_cast<size_t>(kMaxTracePoints)) {
          return s.ErrorAt(point_at, absl::StrCat("more than ", kMaxTracePoints, " points in one trace"));
        }
        trace.future.push_back(p);
        s.SkipSpace();
        if (s.TryConsume(",")) {
          s.SkipSpace();
          continue;
        }
        if (auto st = s.Expect("]"); !st.ok()) return st;
        break;
      }
    }
    s.SkipSpace();
    if (auto st = s.Expect("\""); !st.ok()) return st;
    answer.traces.push_back(std::move(trace));
    s.SkipSpace();
    s.TryConsume(",");  // the reference joins entries with commas before literal_eval
  }
  if (wrapped) {
    if (auto st = s.Expect("<trace_end>"); !st.ok()) return st;
    s.SkipSpace();
  }
  if (!s.AtEnd()) return s.Error("unexpected text after the traces");
  if (answer.traces.empty()) return s.ErrorAt(s.pos(), "the answer has no traces");
  // The head only says where marks start (the reference reads the traces
  // alone): a trace whose mark it does not name has no start, and a mark it
  // names without a trace is not moved.
  for (MarkTrace& t : answer.traces) {
    const auto it = head.find(t.mark);
    if (it != head.end()) t.start = starts[it->second].second;
  }
  return answer;
}

std::string FormatTraceAnswer(const TraceAnswer& answer) {
  bool all_start = !answer.traces.empty();
  for (const MarkTrace& t : answer.traces) all_start = all_start && t.start.has_value();
  std::string out;
  if (all_start) {
    std::vector<std::string> heads;
    for (const MarkTrace& t : answer.traces) {
      heads.push_back(absl::StrCat("Mark ", t.mark, " at [", t.start->x, ",", t.start->y, "]"));
    }
    absl::StrAppend(&out, absl::StrJoin(heads, ", "), " should be moved, ", kHeadEnd, "\n\n");
  }
  std::vector<std::string> traces;
  for (const MarkTrace& t : answer.traces) {
    std::vector<std::string> points;
    for (const Grid256Point& p : t.future) points.push_back(absl::StrCat("[", p.x, ",", p.y, "]"));
    traces.push_back(absl::StrCat("\"Mark ", t.mark, "\": \"[", absl::StrJoin(points, ","), "]\""));
  }
  // Blank lines between traces; the chat template strips the one the
  // reference's data loader leaves after the last.
  absl::StrAppend(&out, absl::StrJoin(traces, "\n\n"));
  return out;
}

std::vector<PixelTrace> TracesToPixels(const TraceAnswer& answer, const vision::ImageFrame& frame) {
  std::vector<PixelTrace> out;
  out.reserve(answer.traces.size());
  for (const MarkTrace& t : answer.traces) {
    PixelTrace p;
    p.mark = t.mark;
    p.has_start = t.start.has_value();
    if (t.start) p.points.push_back(frame.ToPixel(*t.start));
    for (const Grid256Point& g : t.future) p.points.push_back(frame.ToPixel(g));
    out.push_back(std::move(p));
  }
  return out;
}

}  // namespace magma::agent
