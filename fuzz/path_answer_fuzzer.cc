// Fuzzes ParsePathAnswer: no crash, errors name a position in the text, and
// every accepted path holds coordinates in [0, 1] and survives a
// format / parse round trip unchanged.
#include <cstddef>
#include <cstdint>
#include <string>

#include "fuzz_check.h"
#include "magma/agent/path_answer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto path = magma::agent::ParsePathAnswer(text);
  if (!path.ok()) {
    magma::fuzz::CheckParseError(path.status(), text.size());
    return 0;
  }
  FUZZ_CHECK(!path->empty());
  for (const auto& w : *path) {
    FUZZ_CHECK(w.point.x >= 0 && w.point.x <= 1 && w.point.y >= 0 && w.point.y <= 1);
  }
  auto again = magma::agent::ParsePathAnswer(magma::agent::FormatPathAnswer(*path));
  FUZZ_CHECK(again.ok() && again->size() == path->size());
  for (size_t i = 0; i < path->size(); ++i) {
    FUZZ_CHECK((*again)[i].point == (*path)[i].point && (*again)[i].gripper == (*path)[i].gripper);
  }
  return 0;
}
