// The one place where absl::Status becomes grpc::Status (private to api).
#ifndef MAGMA_SRC_API_STATUS_H_
#define MAGMA_SRC_API_STATUS_H_

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace magma::api {

grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace magma::api

#endif  // MAGMA_SRC_API_STATUS_H_
