// The one place where absl::Status becomes grpc::Status (private to api).
#ifndef MAGMA_SRC_API_STATUS_H_
#define MAGMA_SRC_API_STATUS_H_

#include <grpcpp/support/status.h>

#include <cstddef>

#include "absl/status/status.h"

namespace magma::api {

// Messages may quote what a client sent (an unknown role, a key): longer than
// this many bytes they are cut, so that the status still fits the trailing
// metadata a client accepts (8 KiB by default, after percent-encoding).
inline constexpr size_t kMaxStatusMessageBytes = 1024;

grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace magma::api

#endif  // MAGMA_SRC_API_STATUS_H_
