// PCRE2 with UTF and Unicode properties, as the Hugging Face pre-tokenizer
// regexes need (private to the component).
#ifndef MAGMA_SRC_TOKENIZER_REGEX_H_
#define MAGMA_SRC_TOKENIZER_REGEX_H_

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace magma::tokenizer {

// A compiled PCRE2 pattern with JIT; match data is per call.
class Regex {
 public:
  static absl::StatusOr<std::unique_ptr<Regex>> Compile(const std::string& pattern) {
    int error = 0;
    PCRE2_SIZE offset = 0;
    pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                     PCRE2_UTF | PCRE2_UCP, &error, &offset, nullptr);
    if (code == nullptr) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(error, msg, sizeof(msg));
      return absl::InvalidArgumentError(absl::StrCat("pre-tokenizer regex does not compile at offset ", offset, ": ",
                                                     reinterpret_cast<const char*>(msg)));
    }
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // falls back to the interpreter if JIT is unavailable
    return std::unique_ptr<Regex>(new Regex(code));
  }
  ~Regex() { pcre2_code_free(code_); }

  // Calls fn(begin, end) for each match, in order. REQUIRES: valid UTF-8.
  // A match that PCRE2 gives up on (its backtracking, depth, heap or JIT
  // stack limits) is RESOURCE_EXHAUSTED: the text cannot be split as the
  // reference splits it.
  template <typename Fn>
  absl::Status ForEachMatch(absl::string_view text, Fn&& fn) const {
    std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> md(
        pcre2_match_data_create_from_pattern(code_, nullptr), &pcre2_match_data_free);
    if (md == nullptr) return absl::ResourceExhaustedError("out of memory for a pre-tokenizer match");
    PCRE2_SIZE start = 0;
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    while (start < text.size()) {
      // The text was validated as UTF-8 up front.
      const int rc = pcre2_match(code_, subject, text.size(), start, PCRE2_NO_UTF_CHECK, md.get(), nullptr);
      if (rc == PCRE2_ERROR_NOMATCH) break;
      if (rc < 0) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(rc, msg, sizeof(msg));
        return absl::ResourceExhaustedError(absl::StrCat("the pre-tokenizer regex failed at byte ", start, " of a ",
                                                         text.size(),
                                                         "-byte text: ", reinterpret_cast<const char*>(msg)));
      }
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.get());
      size_t b = ov[0], e = ov[1];
      if (e == b) {  // an empty match: step over one character
        e = b + 1;
        while (e < text.size() && (static_cast<unsigned char>(text[e]) & 0xC0) == 0x80) ++e;
        start = e;
        continue;
      }
      fn(b, e);
      start = e;
    }
    return absl::OkStatus();
  }

 private:
  explicit Regex(pcre2_code* code) : code_(code) {}
  pcre2_code* code_;
};

// Llama-3's pre-tokenizer split.
constexpr char kLlama3Pattern[] =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

}  // namespace magma::tokenizer

#endif  // MAGMA_SRC_TOKENIZER_REGEX_H_
