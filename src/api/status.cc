#include "status.h"

#include <string>

#include "absl/strings/str_cat.h"

namespace magma::api {

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  absl::string_view message = status.message();
  std::string text;
  if (message.size() > kMaxStatusMessageBytes) {
    // Cut at a character boundary: a continuation byte is 10xxxxxx.
    size_t cut = kMaxStatusMessageBytes;
    while (cut > 0 && (static_cast<unsigned char>(message[cut]) & 0xC0) == 0x80) --cut;
    text = absl::StrCat(message.substr(0, cut), "... (", message.size() - cut, " more bytes)");
  } else {
    text = std::string(message);
  }
  // absl and gRPC share the canonical code numbering.
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::move(text));
}

}  // namespace magma::api
