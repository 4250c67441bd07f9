// Shared checks for the fuzz targets: a failed invariant aborts, which
// libFuzzer reports as a crash with the input that caused it.
#ifndef MAGMA_FUZZ_FUZZ_CHECK_H_
#define MAGMA_FUZZ_FUZZ_CHECK_H_

#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/status/status.h"

#define FUZZ_CHECK(cond)                                                            \
  do {                                                                              \
    if (!(cond)) {                                                                  \
      std::fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                 \
    }                                                                               \
  } while (0)

namespace magma::fuzz {

// Parser errors are INVALID_ARGUMENT and name a position inside the text
// (or its end).
inline void CheckParseError(const absl::Status& s, size_t text_size) {
  FUZZ_CHECK(s.code() == absl::StatusCode::kInvalidArgument);
  const std::string msg(s.message());
  const size_t at = msg.find("at position ");
  FUZZ_CHECK(at != std::string::npos);
  const size_t pos = std::strtoull(msg.c_str() + at + 12, nullptr, 10);
  FUZZ_CHECK(pos <= text_size);
}

}  // namespace magma::fuzz

#endif  // MAGMA_FUZZ_FUZZ_CHECK_H_
