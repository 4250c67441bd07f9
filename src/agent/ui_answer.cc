#include "magma/agent/ui_answer.h"

#include <algorithm>
#include <charconv>
#include <limits>
#include <string>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "scanner.h"

namespace magma::agent {
namespace {

using vision::Mark;
using vision::MilliPoint;
using vision::NormPoint;
using vision::PixelBox;

struct NamedMark {
  int64_t id;       // -1 when the digits overflow
  size_t position;  // of "Mark:"
  size_t end;       // one past the digits
};

// Every "Mark:" followed by optional blanks and digits (the reference's
// r'Mark: (\d+)', blanks relaxed).
std::vector<NamedMark> FindMarks(absl::string_view text) {
  std::vector<NamedMark> out;
  constexpr absl::string_view kKey = "Mark:";
  for (size_t at = text.find(kKey); at != absl::string_view::npos; at = text.find(kKey, at + 1)) {
    size_t i = at + kKey.size();
    while (i < text.size() && (text[i] == ' ' || text[i] == '\t')) ++i;
    if (i >= text.size() || !IsDigit(text[i])) continue;
    int64_t id = 0;
    while (i < text.size() && IsDigit(text[i])) {
      if (id >= 0) id = id * 10 + (text[i] - '0');
      if (id > INT32_MAX) id = -1;
      ++i;
    }
    out.push_back({id, at, i});
  }
  return out;
}

const Mark* FindInTable(const std::vector<Mark>& marks, int64_t id) {
  for (const Mark& m : marks) {
    if (m.id == id) return &m;
  }
  return nullptr;
}

void AttachContainingMark(const std::vector<Mark>& marks, UiAnswer* a) {
  const Mark* best = nullptr;
  for (const Mark& m : marks) {
    if (m.box.Contains(a->click) && (best == nullptr || m.box.area() < best->box.area())) best = &m;
  }
  if (best != nullptr) {
    a->mark = best->id;
    a->element_box = best->box;
  }
}

absl::Status ReadMilli(Scanner* s, const char* name, double* v) {
  const size_t at = s->pos();
  if (auto st = s->ReadNumber(v); !st.ok()) return st;
  if (!(*v >= 0 && *v <= 1000)) return s->ErrorAt(at, absl::StrCat(name, " = ", *v, " is outside 0..1000"));
  return absl::OkStatus();
}

absl::Status ReadMilliPair(Scanner* s, const char* xn, const char* yn, MilliPoint* p) {
  if (auto st = s->Expect("("); !st.ok()) return st;
  s->SkipSpace();
  if (auto st = ReadMilli(s, xn, &p->x); !st.ok()) return st;
  s->SkipSpace();
  if (auto st = s->Expect(","); !st.ok()) return st;
  s->SkipSpace();
  if (auto st = ReadMilli(s, yn, &p->y); !st.ok()) return st;
  s->SkipSpace();
  return s->Expect(")");
}

// <box>(x1,y1),(x2,y2)</box>, blanks allowed between tokens.
absl::StatusOr<UiAnswer> ParseMilliBox(absl::string_view text, size_t at, const vision::ImageFrame& frame) {
  Scanner s(text, "ui answer");
  s.set_pos(at);
  if (auto st = s.Expect("<box>"); !st.ok()) return st;
  s.SkipSpace();
  MilliPoint a, b;
  if (auto st = ReadMilliPair(&s, "x1", "y1", &a); !st.ok()) return st;
  s.SkipSpace();
  if (auto st = s.Expect(","); !st.ok()) return st;
  s.SkipSpace();
  if (auto st = ReadMilliPair(&s, "x2", "y2", &b); !st.ok()) return st;
  s.SkipSpace();
  if (auto st = s.Expect("</box>"); !st.ok()) return st;
  const vision::MilliBox box{std::min(a.x, b.x), std::min(a.y, b.y), std::max(a.x, b.x), std::max(a.y, b.y)};
  UiAnswer out;
  out.rule = UiRule::kMilliBox;
  out.position = at;
  // The reference averages the corners in 0..1000, divides by 1000 and
  // multiplies by the image size.
  out.click = frame.ToPixel(box.centre());
  out.click_norm = vision::ToNorm(box.centre());
  out.answer_box = frame.ToPixel(box);
  return out;
}

struct Number {
  double value;
  size_t position;
};

// Numbers shaped as the reference's r'-?\d+\.?\d*', outside `skip` spans.
std::vector<Number> ScanNumbers(absl::string_view text, const std::vector<NamedMark>& skip, bool* too_many) {
  std::vector<Number> out;
  *too_many = false;
  size_t i = 0;
  size_t next_skip = 0;
  while (i < text.size()) {
    if (next_skip < skip.size() && i >= skip[next_skip].position) {
      i = std::max(i, skip[next_skip].end);
      ++next_skip;
      continue;
    }
    const bool neg = text[i] == '-' && i + 1 < text.size() && IsDigit(text[i + 1]);
    if (!neg && !IsDigit(text[i])) {
      ++i;
      continue;
    }
    const size_t start = i;
    if (neg) ++i;
    const size_t digits = i;
    while (i < text.size() && IsDigit(text[i])) ++i;
    if (i < text.size() && text[i] == '.') {
      ++i;
      while (i < text.size() && IsDigit(text[i])) ++i;
    }
    double v = std::numeric_limits<double>::infinity();  // stays so when out of double range
    const auto r = std::from_chars(text.data() + digits, text.data() + i, v);
    if (r.ec != std::errc()) v = std::numeric_limits<double>::infinity();
    if (neg) v = -v;
    if (out.size() == 5) {
      *too_many = true;
      break;
    }
    out.push_back({v, start});
  }
  return out;
}

}  // namespace

const char* UiRuleName(UiRule rule) {
  switch (rule) {
    case UiRule::kMark:
      return "mark";
    case UiRule::kMilliBox:
      return "milli_box";
    case UiRule::kPoint:
      return "point";
    case UiRule::kNormBox:
      return "norm_box";
  }
  return "unknown";
}

absl::StatusOr<UiAnswer> ParseUiAnswer(absl::string_view text, const std::vector<Mark>& marks,
                                       const vision::ImageFrame& frame) {
  Scanner s(text, "ui answer");
  const std::vector<NamedMark> named = FindMarks(text);
  if (!named.empty()) {
    if (const Mark* m = FindInTable(marks, named[0].id); m != nullptr) {
      UiAnswer out;
      out.rule = UiRule::kMark;
      out.position = named[0].position;
      out.mark = m->id;
      out.element_box = m->box;
      out.click = m->centre;
      out.click_norm = frame.ToNorm(m->centre);
      return out;
    }
  }
  if (const size_t box = text.find("<box>"); box != absl::string_view::npos) {
    auto out = ParseMilliBox(text, box, frame);
    if (out.ok()) AttachContainingMark(marks, &*out);
    return out;
  }
  bool too_many = false;
  const std::vector<Number> numbers = ScanNumbers(text, named, &too_many);
  if (numbers.empty() && !named.empty()) {
    std::string table =
        marks.empty() ? "the mark table is empty" : absl::StrCat("the mark table has ", marks.size(), " marks");
    return s.ErrorAt(named[0].position,
                     absl::StrCat("mark ", named[0].id < 0 ? std::string("(too large)") : absl::StrCat(named[0].id),
                                  " is not in the table (", table, ") and the answer has no coordinates"));
  }
  if (numbers.size() != 2 && numbers.size() != 4) {
    const size_t at = numbers.size() > 4 ? numbers[4].position : text.size();
    return s.ErrorAt(at, absl::StrCat("expected 2 numbers (a point) or 4 (a box) in [0, 1], found ",
                                      too_many ? "more than 5" : absl::StrCat(numbers.size())));
  }
  for (const Number& n : numbers) {
    if (!(n.value >= 0 && n.value <= 1)) {
      return s.ErrorAt(n.position, absl::StrCat("coordinate ", n.value, " is outside [0, 1]"));
    }
  }
  UiAnswer out;
  out.position = numbers[0].position;
  if (numbers.size() == 2) {
    out.rule = UiRule::kPoint;
    out.click_norm = {numbers[0].value, numbers[1].value};
  } else {
    out.rule = UiRule::kNormBox;
    const vision::NormBox box{
        std::min(numbers[0].value, numbers[2].value), std::min(numbers[1].value, numbers[3].value),
        std::max(numbers[0].value, numbers[2].value), std::max(numbers[1].value, numbers[3].value)};
    out.click_norm = box.centre();
    out.answer_box = frame.ToPixel(box);
  }
  out.click = frame.ToPixel(out.click_norm);
  AttachContainingMark(marks, &out);
  return out;
}

}  // namespace magma::agent
