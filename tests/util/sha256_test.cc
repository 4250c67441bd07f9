#include "magma/util/sha256.h"

#include <string>

#include <gtest/gtest.h>

namespace magma::util {
namespace {

std::string Digest(const std::string& text) {
  Sha256 h;
  h.Update(text);
  return h.HexDigest();
}

// The test vectors of FIPS 180-2, appendix B.
TEST(Sha256Test, StandardVectors) {
  EXPECT_EQ(Digest(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Digest("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(Digest("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(Digest(std::string(1000000, 'a')), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(Sha256Test, PiecesHashAsTheirConcatenation) {
  Sha256 h;
  h.Update("ab");
  h.Update("");
  h.Update("c", 1);
  EXPECT_EQ(h.HexDigest(), Digest("abc"));
}

}  // namespace
}  // namespace magma::util
