// Fuzzes DatasetStatistics::FromJson (client- or checkpoint-supplied JSON):
// no crash or uncaught exception, and every accepted entry is valid and
// unnormalises without error.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "fuzz_check.h"
#include "magma/agent/action_codec.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto stats = magma::agent::DatasetStatistics::FromJson(text, "fuzz.json");
  if (!stats.ok()) {
    FUZZ_CHECK(stats.status().code() == absl::StatusCode::kInvalidArgument);
    return 0;
  }
  for (const std::string& key : stats->keys()) {
    auto s = stats->Find(key);
    FUZZ_CHECK(s.ok() && s->Validate().ok());
    const std::vector<double> zeros(s->q01.size(), 0.0);
    FUZZ_CHECK(magma::agent::Unnormalize(zeros, *s).ok());
  }
  FUZZ_CHECK(!stats->Find("\x01 no such key").ok());
  return 0;
}
