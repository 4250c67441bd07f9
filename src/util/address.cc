#include "magma/util/address.h"

#include <algorithm>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace magma::util {

absl::StatusOr<HostPort> ParseHostPort(absl::string_view address) {
  const size_t colon = address.rfind(':');
  HostPort parsed;
  const absl::string_view port = colon == absl::string_view::npos ? "" : address.substr(colon + 1);
  const bool digits = !port.empty() && port.size() <= 5 &&
                      std::all_of(port.begin(), port.end(), [](char c) { return c >= '0' && c <= '9'; });
  if (!digits || !absl::SimpleAtoi(port, &parsed.port) || parsed.port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("'", address, "' is not host:port with a port in 0..65535"));
  }
  absl::string_view host = address.substr(0, colon);
  if (!host.empty() && host.front() == '[') {
    // As gRPC: brackets hold an IPv6 address, nothing else.
    const absl::string_view inside = host.size() >= 2 && host.back() == ']' ? host.substr(1, host.size() - 2) : "";
    if (inside.find(':') == absl::string_view::npos || inside.find_first_of("[]") != absl::string_view::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("'", address, "' is not host:port: brackets hold an IPv6 address"));
    }
    host = inside;
  } else if (host.find_first_of(":[]") != absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", address, "' is not host:port: write an IPv6 host in brackets, as [::1]:9464"));
  }
  parsed.host = std::string(host);
  return parsed;
}

}  // namespace magma::util
