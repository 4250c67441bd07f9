#include "magma/util/logging.h"

#include <array>
#include <string>

#include "absl/strings/str_cat.h"

namespace magma::log {
namespace {

struct NamedLevel {
  absl::string_view name;
  spdlog::level::level_enum level;
};

constexpr std::array<NamedLevel, 7> kLevels = {{
    {"trace", spdlog::level::trace},
    {"debug", spdlog::level::debug},
    {"info", spdlog::level::info},
    {"warn", spdlog::level::warn},
    {"error", spdlog::level::err},
    {"critical", spdlog::level::critical},
    {"off", spdlog::level::off},
}};

}  // namespace

bool IsValidLevel(absl::string_view level) {
  for (const auto& l : kLevels) {
    if (l.name == level) return true;
  }
  return false;
}

absl::Status SetLevel(absl::string_view level) {
  for (const auto& l : kLevels) {
    if (l.name == level) {
      spdlog::set_level(l.level);
      return absl::OkStatus();
    }
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown log level '", std::string(level),
                   "': expected trace, debug, info, warn, error, critical or off"));
}

}  // namespace magma::log
