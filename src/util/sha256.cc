#include "magma/util/sha256.h"

#include <openssl/evp.h>

#include <cstdlib>

#include "spdlog/spdlog.h"

namespace magma::util {

struct Sha256::State {
  EVP_MD_CTX* ctx = nullptr;
  ~State() { EVP_MD_CTX_free(ctx); }
};

namespace {

// OpenSSL fails here only without memory or without its default provider:
// nothing a caller could recover from.
void Check(int ok, const char* what) {
  if (ok != 1) {
    spdlog::critical("SHA-256: {} failed", what);
    std::abort();
  }
}

}  // namespace

Sha256::Sha256() : state_(std::make_unique<State>()) {
  state_->ctx = EVP_MD_CTX_new();
  Check(state_->ctx != nullptr ? 1 : 0, "EVP_MD_CTX_new");
  Check(EVP_DigestInit_ex(state_->ctx, EVP_sha256(), nullptr), "EVP_DigestInit_ex");
}

Sha256::~Sha256() = default;

void Sha256::Update(const void* data, size_t size) {
  Check(EVP_DigestUpdate(state_->ctx, data, size), "EVP_DigestUpdate");
}

std::string Sha256::HexDigest() {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int size = 0;
  Check(EVP_DigestFinal_ex(state_->ctx, digest, &size), "EVP_DigestFinal_ex");
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(2 * size);
  for (unsigned int i = 0; i < size; ++i) {
    out.push_back(kHex[digest[i] >> 4]);
    out.push_back(kHex[digest[i] & 15]);
  }
  return out;
}

}  // namespace magma::util
