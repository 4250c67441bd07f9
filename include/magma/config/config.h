// Loading and validating the server configuration (magma.config.ServerConfig,
// proto/magma/config/config.proto). The process loads one config at start-up,
// validates it, and converts it into the options structs of each component.
#ifndef MAGMA_CONFIG_CONFIG_H_
#define MAGMA_CONFIG_CONFIG_H_

#include <string>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "magma/config/config.pb.h"

namespace magma::config {

// A config with every field at its documented default.
ServerConfig DefaultConfig();

// Parses textproto `text` over the defaults. `source` names the text in
// errors (usually the file path). Unknown fields and malformed values give
// INVALID_ARGUMENT with "source:line:column" and the parser's message, which
// names the field. The result is NOT validated; call Validate().
absl::StatusOr<ServerConfig> ParseText(absl::string_view text, absl::string_view source);

// Reads and parses a textproto file. NOT_FOUND if it cannot be read.
absl::StatusOr<ServerConfig> LoadFile(const std::string& path);

// Checks value ranges and enumerations. The error names the field by its
// full path, e.g. "invalid config: grpc.max_receive_message_bytes must be in
// 1..2147483647 (got -1)".
absl::Status Validate(const ServerConfig& config);

}  // namespace magma::config

#endif  // MAGMA_CONFIG_CONFIG_H_
