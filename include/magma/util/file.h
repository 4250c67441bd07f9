#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace magma::util {

// The whole of the file at `path` (a pipe such as /dev/stdin too). `what`
// names it in the messages ("config file": "cannot read config file 'x'").
// NOT_FOUND when it cannot be opened, INVALID_ARGUMENT for a directory
// (which opens on Linux, then fails to read), DATA_LOSS when a read fails.
absl::StatusOr<std::string> ReadFile(const std::string& path, absl::string_view what);

}  // namespace magma::util
