// A cursor over model text for the agent parsers: literal and number
// matching with 0-based character positions, and INVALID_ARGUMENT errors
// that say where and why. Private to src/agent.
#ifndef MAGMA_AGENT_SCANNER_H_
#define MAGMA_AGENT_SCANNER_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace magma::agent {

class Scanner {
 public:
  // `what` names the grammar in error messages ("path answer").
  Scanner(absl::string_view text, absl::string_view what) : text_(text), what_(what) {}

  size_t pos() const { return pos_; }
  void set_pos(size_t pos) { pos_ = pos; }
  bool AtEnd() const { return pos_ >= text_.size(); }
  absl::string_view text() const { return text_; }
  char Peek() const { return AtEnd() ? '\0' : text_[pos_]; }

  // Skips ASCII whitespace (space, tab, CR, LF, FF, VT).
  void SkipSpace();
  // Consumes `literal` if the text continues with it.
  bool TryConsume(absl::string_view literal);
  // Consumes `literal` or fails with "expected '<literal>'".
  absl::Status Expect(absl::string_view literal);

  // A decimal literal as Python writes floats: [+-]? (digits [. digits*] |
  // . digits) ([eE] [+-]? digits)?. Fails on anything else or on a value
  // that overflows a double.
  absl::Status ReadNumber(double* value);
  // [+-]? digits fitting in int32.
  absl::Status ReadInt(int* value);

  // "<what>: at position <pos>: <reason>, found <what is there>".
  absl::Status ErrorAt(size_t pos, absl::string_view reason) const;
  absl::Status Error(absl::string_view reason) const { return ErrorAt(pos_, reason); }

  // A short quoted excerpt of the text at `pos` ("end of text" at the end).
  std::string Excerpt(size_t pos) const;

 private:
  absl::string_view text_;
  absl::string_view what_;
  size_t pos_ = 0;
};

// True for the bytes Scanner::SkipSpace skips.
inline bool IsSpace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }
inline bool IsDigit(char c) { return c >= '0' && c <= '9'; }

}  // namespace magma::agent

#endif  // MAGMA_AGENT_SCANNER_H_
