#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace magma::util {

// A listen address split as gRPC reads one: "host:port", "[v6-host]:port"
// (brackets removed from `host`) or ":port" (empty `host`; the caller picks
// the interfaces).
struct HostPort {
  std::string host;
  int port = 0;
};

// INVALID_ARGUMENT unless `address` ends in ":port" with a port of digits in
// 0..65535 (0 asks for any free port) and an IPv6 host is in brackets.
absl::StatusOr<HostPort> ParseHostPort(absl::string_view address);

}  // namespace magma::util
