#pragma once

#include <memory>
#include <string>

#include "absl/strings/string_view.h"

namespace magma::util {

// SHA-256 over data given in pieces, for keys that a client must not be able
// to make collide (cached image features are shared between clients).
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void Update(const void* data, size_t size);
  void Update(absl::string_view data) { Update(data.data(), data.size()); }
  // The digest of everything given so far, as 64 lowercase hex digits. Ends
  // the hash: call nothing else afterwards.
  std::string HexDigest();

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace magma::util
