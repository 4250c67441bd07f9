// Logging for magma-serve: a thin layer over spdlog so that components log
// through one set of macros and the process sets the level in one place.
#ifndef MAGMA_UTIL_LOGGING_H_
#define MAGMA_UTIL_LOGGING_H_

#include "absl/strings/string_view.h"

#include <spdlog/spdlog.h>

#include "absl/status/status.h"

namespace magma::log {

// Sets the process-wide level from its name: trace, debug, info, warn, error,
// critical or off. Returns INVALID_ARGUMENT naming the accepted values otherwise.
absl::Status SetLevel(absl::string_view level);

// True when `level` names a level SetLevel accepts.
bool IsValidLevel(absl::string_view level);

}  // namespace magma::log

#define MAGMA_LOG_TRACE(...) ::spdlog::trace(__VA_ARGS__)
#define MAGMA_LOG_DEBUG(...) ::spdlog::debug(__VA_ARGS__)
#define MAGMA_LOG_INFO(...) ::spdlog::info(__VA_ARGS__)
#define MAGMA_LOG_WARN(...) ::spdlog::warn(__VA_ARGS__)
#define MAGMA_LOG_ERROR(...) ::spdlog::error(__VA_ARGS__)

#endif  // MAGMA_UTIL_LOGGING_H_
