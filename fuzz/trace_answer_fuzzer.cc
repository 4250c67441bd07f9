// Fuzzes ParseTraceAnswer: no crash, errors name a position in the text,
// accepted answers hold grid cells in 0..255 and survive a format / parse
// round trip unchanged.
#include <cstddef>
#include <cstdint>
#include <string>

#include "fuzz_check.h"
#include "magma/agent/trace_answer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto answer = magma::agent::ParseTraceAnswer(text);
  if (!answer.ok()) {
    magma::fuzz::CheckParseError(answer.status(), text.size());
    return 0;
  }
  FUZZ_CHECK(!answer->traces.empty());
  for (const auto& t : answer->traces) {
    FUZZ_CHECK(t.mark >= 0);
    for (const auto& p : t.future) FUZZ_CHECK(p.x >= 0 && p.x < 256 && p.y >= 0 && p.y < 256);
  }
  auto again = magma::agent::ParseTraceAnswer(magma::agent::FormatTraceAnswer(*answer));
  FUZZ_CHECK(again.ok() && again->traces.size() == answer->traces.size());
  for (size_t i = 0; i < answer->traces.size(); ++i) {
    const auto& a = answer->traces[i];
    const auto& b = again->traces[i];
    FUZZ_CHECK(a.mark == b.mark && a.future == b.future && a.start.has_value() == b.start.has_value());
    if (a.start) FUZZ_CHECK(*a.start == *b.start);
  }
  return 0;
}
