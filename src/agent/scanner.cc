#include "scanner.h"

#include <charconv>
#include <cmath>
#include <system_error>

#include "absl/strings/str_cat.h"

namespace magma::agent {

void Scanner::SkipSpace() {
  while (!AtEnd() && IsSpace(text_[pos_])) ++pos_;
}

bool Scanner::TryConsume(absl::string_view literal) {
  if (text_.substr(pos_, literal.size()) != literal) return false;
  pos_ += literal.size();
  return true;
}

absl::Status Scanner::Expect(absl::string_view literal) {
  if (TryConsume(literal)) return absl::OkStatus();
  return Error(absl::StrCat("expected '", literal, "'"));
}

absl::Status Scanner::ReadNumber(double* value) {
  const size_t start = pos_;
  size_t i = pos_;
  if (i < text_.size() && (text_[i] == '+' || text_[i] == '-')) ++i;
  const size_t mantissa = i;
  size_t int_digits = 0, frac_digits = 0;
  while (i < text_.size() && IsDigit(text_[i])) ++i, ++int_digits;
  if (i < text_.size() && text_[i] == '.') {
    ++i;
    while (i < text_.size() && IsDigit(text_[i])) ++i, ++frac_digits;
  }
  if (int_digits + frac_digits == 0) return ErrorAt(start, "expected a number");
  if (i < text_.size() && (text_[i] == 'e' || text_[i] == 'E')) {
    size_t j = i + 1;
    if (j < text_.size() && (text_[j] == '+' || text_[j] == '-')) ++j;
    if (j >= text_.size() || !IsDigit(text_[j])) return ErrorAt(j, "expected exponent digits");
    while (j < text_.size() && IsDigit(text_[j])) ++j;
    i = j;
  }
  double v = 0;
  const char* first = text_.data() + mantissa;
  const char* last = text_.data() + i;
  const auto [end, ec] = std::from_chars(first, last, v);
  if (ec == std::errc::result_out_of_range || (ec == std::errc() && !std::isfinite(v))) {
    return ErrorAt(start, "number out of range");
  }
  if (ec != std::errc() || end != last) return ErrorAt(start, "malformed number");
  *value = text_[start] == '-' ? -v : v;
  pos_ = i;
  return absl::OkStatus();
}

absl::Status Scanner::ReadInt(int* value) {
  const size_t start = pos_;
  size_t i = pos_;
  bool negative = false;
  if (i < text_.size() && (text_[i] == '+' || text_[i] == '-')) negative = text_[i++] == '-';
  if (i >= text_.size() || !IsDigit(text_[i])) return ErrorAt(start, "expected an integer");
  int64_t v = 0;
  while (i < text_.size() && IsDigit(text_[i])) {
    v = v * 10 + (text_[i] - '0');
    if (v > int64_t{1} << 31) return ErrorAt(start, "integer out of range");
    ++i;
  }
  if (negative) v = -v;
  if (v > INT32_MAX || v < INT32_MIN) return ErrorAt(start, "integer out of range");
  *value = static_cast<int>(v);
  pos_ = i;
  return absl::OkStatus();
}

std::string Scanner::Excerpt(size_t pos) const {
  if (pos >= text_.size()) return "end of text";
  constexpr size_t kMax = 16;
  std::string out = "'";
  for (size_t i = pos; i < text_.size() && i < pos + kMax; ++i) {
    const unsigned char c = static_cast<unsigned char>(text_[i]);
    if (c == '\n') {
      out += "\\n";
    } else if (c < 0x20 || c >= 0x7f) {
      out += absl::StrCat("\\x", absl::Hex(c, absl::kZeroPad2));
    } else {
      out += static_cast<char>(c);
    }
  }
  if (pos + kMax < text_.size()) out += "...";
  return out + "'";
}

absl::Status Scanner::ErrorAt(size_t pos, absl::string_view reason) const {
  return absl::InvalidArgumentError(absl::StrCat(what_, ": at position ", pos, ": ", reason, ", found ", Excerpt(pos)));
}

}  // namespace magma::agent
